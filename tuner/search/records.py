"""What a search leaves once Tune's run returns: trials.csv, epochs.csv and best.yaml from Ray's results and
what the trials reported live, run.json's seconds, and the failed trials said once. Read by `driver.run`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from tuner.rundir import CorruptResult, RunDir, read_result
from tuner.spaces import Experiment


def record_run(run_dir: RunDir, trials: int, fit_s: float, before_fit_s: float, data) -> None:
    """run.json: how long the search itself took, apart from data preparation and Ray start-up (read by
    benchmarks/), over every run of it: an interrupted one and each --resume add theirs."""
    before = _search_s_so_far(run_dir)
    run_dir.write_json(run_dir.run_json, {"trials": trials, "search_s": round(before["search_s"] + fit_s, 3),
                                          "prepare_and_start_s": round(before_fit_s, 3), "runs": before["runs"] + 1,
                                          "smoke": before["smoke"], "prepare_s": round(data.stats.seconds, 3),
                                          "decode_s": round(data.stats.decode_s, 3), "decoded": data.stats.decoded,
                                          "images_bytes": data.stats.nbytes})


def tables(exp: Experiment, grid, exp_dir: Path, live_results) -> tuple[int, dict | None]:
    """trials.csv, epochs.csv and best.yaml; the number of trials. With search.fuse the members' rows, as the
    live tables hold them (Ray's grid holds the groups)."""
    if exp.search.fuse:
        from tuner.search import fused
        from tuner.tables import write_tables

        fused.add_ended_before(exp, grid, live_results)
        return len(live_results.done), write_tables(exp, list(live_results.done.values()), exp_dir)
    return len(grid), write_results(exp, grid, exp_dir, live_results.results)


def failures(run_dir: RunDir, trials: int, say: Callable[[str], None]) -> pd.DataFrame:
    failed = pd.read_csv(run_dir.trials, dtype={"trial_id": str}, keep_default_na=False)
    failed = failed[failed["status"] == "ERROR"]
    if len(failed):
        say(f"{len(failed)} of {trials} trials failed:")
        for _, row in failed.iterrows():
            say(f"  {row['trial_id']}: {row['error']}")
    return failed


def _search_s_so_far(run_dir: RunDir) -> dict:
    try:
        saved = read_result(run_dir.run_json) if run_dir.run_json.is_file() else {}
    except CorruptResult:  # a broken run.json only loses the earlier runs' seconds
        saved = {}
    return {"search_s": float(saved.get("search_s", 0.0)), "runs": int(saved.get("runs", 1 if saved else 0)),
            "smoke": saved.get("smoke") is True}


def write_results(exp: Experiment, grid, exp_dir: Path, reported: dict[str, list[dict]] | None = None) -> dict | None:
    """trials.csv, epochs.csv and best.yaml from Ray's ResultGrid and `reported`, every result each trial sent
    during this run (the live callback's record).

    Both are needed. Ray's record of a trial restored from a checkpoint (PBT's exploit, a retry) keeps only
    the results up to that checkpoint and those after, so epochs it did run vanish; after a PBT exploit its
    last metrics even carry the trial_id of the trial it copied. The callback sees every result, but after
    --resume only those since. A trial's id is its folder's name, which tuner sets (_trial_dirname).
    """
    from tuner.tables import trial_row, write_tables

    rows = []
    for result in grid:
        name = Path(result.path).name
        # (a folder from before trials were named trial_<id>: the id Ray reported, else the folder's name)
        trial_id = (name.removeprefix("trial_") if name.startswith("trial_")
                    else str((result.metrics or {}).get("trial_id", name)))
        history = trial_history(result.metrics_dataframe, (reported or {}).get(trial_id))
        rows.append(trial_row(exp, trial_id, result.config or {}, history, result.error))
    return write_tables(exp, rows, exp_dir)


def trial_history(saved: pd.DataFrame | None, reported: list[dict] | None) -> pd.DataFrame | None:
    """A trial's epochs, one row each: what it reported in this run wins over Ray's file (a retried epoch's
    second result is the one its checkpoint holds; a restored last epoch reported again, trainable._train,
    numbers one more), and the epochs a restored trial's checkpoint held (metrics.HISTORY; Ray numbered
    none) fill holes only."""
    frames = [f for f in (saved, pd.DataFrame(reported) if reported else None) if f is not None and len(f)]
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    if "training_iteration" not in df:
        return df
    held = df[df["training_iteration"].isna()]
    df = df[df["training_iteration"].notna()].drop_duplicates("training_iteration", keep="last")
    if "epoch" not in df:
        return df.sort_values("training_iteration", ignore_index=True)
    return pd.concat([held, df]).drop_duplicates("epoch", keep="last").sort_values("epoch", ignore_index=True)
