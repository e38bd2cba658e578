"""The results tables (trials.csv, epochs.csv, best.yaml), written as trials report and again at the end.

One function builds a trial's row, one writes the tables, so the live files and the final ones agree.
Each file is written to a temporary name and moved into place: a reader never sees half a file.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from ray.tune import Callback

from tuner.metrics import rank_key

EPOCH_COLUMNS = ["trial_id", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time_s"]
RUNNING_FILE = "running.json"


MEASURED = ["num_params", "latency_ms", "latency_ms_b64", "train_time_s"]  # once per trial, not per epoch


def trial_row(exp, trial_id: str, config: dict, df: pd.DataFrame | None, error) -> tuple[dict, pd.DataFrame | None]:
    """A trial's trials.csv row (plus the private `_metric`, `_config` used to pick the best) and its epochs.

    A trial's objectives are read at its best epoch by the first metric. A trial outside `constraints` is
    marked infeasible and is never the best; a conditional branch's parameters a trial did not draw stay empty.
    """
    from tuner.search.searchers import constraint_values

    primary, mode = exp.metrics[0], exp.modes[0]
    extra = [m for m in exp.metrics + list(exp.constraints) if m not in ("val_accuracy", "val_loss") + tuple(MEASURED)]
    searched, constants = exp.param_names, exp.constants
    row = {"trial_id": trial_id, "status": "ERROR" if error else "TERMINATED",
           "error": _one_line(error) if error else ""}
    for k in searched + [k for k in constants if k not in searched]:
        v = config.get(k, constants.get(k))
        row[k] = v if not isinstance(v, (list, dict)) else yaml.safe_dump(v, default_flow_style=True).strip()
    if df is None or not len(df) or primary not in df:
        row.update(epochs=0, val_accuracy=np.nan, val_loss=np.nan, best_epoch=np.nan, time_s=np.nan)
        row.update({m: np.nan for m in MEASURED + extra})
        if exp.constraints:
            row["feasible"] = False
        return row, None
    df = df.copy()
    df["trial_id"] = trial_id
    if "epoch" not in df:
        df["epoch"] = df["training_iteration"]
    df["time_s"] = df.get("time_this_iter_s", np.nan)
    for col in EPOCH_COLUMNS:
        if col not in df:
            df[col] = np.nan
    # the trial's score is its best epoch's metric (what its checkpoint at that epoch would give)
    i = df[primary].idxmax() if mode == "max" else df[primary].idxmin()
    row.update(epochs=int(df["epoch"].max()), val_accuracy=float(df.loc[i, "val_accuracy"]),
               val_loss=float(df.loc[i, "val_loss"]), best_epoch=int(df.loc[i, "epoch"]),
               time_s=float(df["time_total_s"].max()) if "time_total_s" in df else np.nan)
    for m in MEASURED + extra:
        row[m] = float(df.loc[i, m]) if m in df and pd.notna(df.loc[i, m]) else np.nan
    if exp.constraints:
        row["feasible"] = all(c <= 0 for c in constraint_values(row, exp.constraints))
    # a failed trial is never the best: its retrain would fail the same way; nor is an infeasible one
    if not error and row.get("feasible", True) and pd.notna(df.loc[i, primary]):
        row["_metric"] = float(df.loc[i, primary])
        row["_config"] = config
    return row, df[EPOCH_COLUMNS]


def write_tables(exp, rows: list[tuple[dict, pd.DataFrame | None]], exp_dir: Path,
                 running: list[pd.DataFrame] = ()) -> dict | None:
    """trials.csv, epochs.csv, best.yaml (and pareto.csv for several objectives) from finished trials'
    `trial_row`s and the epochs so far of `running` ones; returns best.yaml's content, None while no trial
    has finished with the metric."""
    from tuner.search.searchers import pareto_front

    table = pd.DataFrame([r for r, _ in rows])
    public = table.drop(columns=[c for c in table.columns if c.startswith("_")])
    epochs = [e for _, e in rows if e is not None] + list(running)
    if rows:
        _replace(exp_dir / "trials.csv", public.to_csv(index=False))
    _replace(exp_dir / "epochs.csv", (pd.concat(epochs, ignore_index=True) if epochs
                                      else pd.DataFrame(columns=EPOCH_COLUMNS)).to_csv(index=False))
    ok = table[table["_metric"].notna()] if "_metric" in table else table.iloc[0:0]
    if exp.multi:
        # the non-dominated feasible trials; the retrain takes the one best on the first objective
        ok = pareto_front(ok, exp.metrics, exp.modes)
        _replace(exp_dir / "pareto.csv", public.loc[ok.index].to_csv(index=False))
    if ok.empty:
        return None
    best_row = ok.loc[min(ok.index, key=lambda i: rank_key(exp.modes[0], ok.loc[i, "_metric"], ok.loc[i, "val_loss"],
                                                          str(ok.loc[i, "trial_id"])))]
    best = best_entry(exp, best_row, {k: _plain(v) for k, v in best_row["_config"].items()})
    _replace(exp_dir / "best.yaml", yaml.safe_dump(best, sort_keys=False))
    return best


def best_entry(exp, row, config: dict) -> dict:
    """best.yaml's content for one trials.csv row and its config."""
    metrics = {"epoch": int(row["best_epoch"]), "val_accuracy": float(row["val_accuracy"]),
               "val_loss": float(row["val_loss"])}
    for m in exp.metrics + MEASURED:
        if m in row and pd.notna(row[m]):
            metrics[m] = _plain(float(row[m]))
    return {"experiment": exp.name, "family": exp.family, "trial_id": str(row["trial_id"]),
            "metric": exp.metric, "mode": exp.mode, "config": config, "metrics": metrics,
            "epochs_run": int(row["epochs"])}


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _one_line(error) -> str:
    text = str(error).strip().splitlines()
    # Ray wraps the trial's exception in its own traceback: keep the line that says what went wrong
    line = next((l.strip() for l in reversed(text) if l.strip() and not l.startswith((" ", "Traceback"))),
                text[-1].strip() if text else repr(error))
    # "tuner.errors.TrialFailed: why" -> "why"; "torch.OutOfMemoryError: ..." -> "OutOfMemoryError: ..."
    kind, sep, why = line.partition(": ")
    if sep and " " not in kind:
        kind = kind.rsplit(".", 1)[-1]
        line = why if kind == "TrialFailed" else f"{kind}: {why}"
    return line[:500]


# --------------------------------------------------------------------------- is a search running?
def _start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot): a pid reused by another process has another."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def mark_running(exp_dir: Path) -> None:
    _replace(exp_dir / RUNNING_FILE, json.dumps({"pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
                                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))


def clear_running(exp_dir: Path) -> None:
    (exp_dir / RUNNING_FILE).unlink(missing_ok=True)


def running(exp_dir: Path) -> dict | None:
    """The marker of the search writing `exp_dir` now, or None; a marker whose process is gone means none."""
    try:
        info = json.loads((exp_dir / RUNNING_FILE).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ticks = _start_ticks(int(info["pid"]))
    if info.get("start_ticks") and ticks and ticks != info["start_ticks"]:
        return None
    return info


def running_note(exp_dir: Path) -> str:
    """'' or one line for `tuner list` / `tuner best` saying the search is still running."""
    info = running(exp_dir)
    return f"search running (pid {info['pid']}, started {info['started']}): results so far" if info else ""


# --------------------------------------------------------------------------- the callback
class LiveResults(Callback):
    """Rewrites the tables as trials report (at most every `every_s` seconds) and whenever a trial ends."""

    def __init__(self, exp, exp_dir: Path, every_s: float = 2.0):
        self.exp, self.exp_dir, self.every_s = exp, Path(exp_dir), every_s
        self.results: dict[str, list[dict]] = {}
        self.done: dict[str, tuple[dict, pd.DataFrame | None]] = {}
        self.config: dict[str, dict] = {}
        self.last_write = 0.0

    def setup(self, **info):
        mark_running(self.exp_dir)
        # a new search starts in an emptied folder; on --resume, trials finished before the interruption
        # send no more events: keep their rows
        trials, epochs = self.exp_dir / "trials.csv", self.exp_dir / "epochs.csv"
        if not trials.is_file():
            return
        old = pd.read_csv(trials, dtype={"trial_id": str}, keep_default_na=False)
        ep = pd.read_csv(epochs, dtype={"trial_id": str}) if epochs.is_file() else pd.DataFrame(columns=EPOCH_COLUMNS)
        for _, r in old.iterrows():
            tid = r["trial_id"]
            e = ep[ep["trial_id"] == tid].rename(columns={"time_s": "time_this_iter_s"})
            cfg = {k: r[k] for k in self.exp.param_names if k in r and r[k] != ""}
            self.done[tid] = trial_row(self.exp, tid, {**self.exp.constants, **cfg}, e if len(e) else None,
                                       r["error"] or None)

    def on_experiment_end(self, trials, **info):
        self.write()
        clear_running(self.exp_dir)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.setdefault(trial.trial_id, []).append(result)
        self.config[trial.trial_id] = trial.config
        if time.monotonic() - self.last_write >= self.every_s:
            self.write()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, trial.get_error() or "trial failed")

    def _finish(self, trial, error) -> None:
        tid = trial.trial_id
        df = pd.DataFrame(self.results.get(tid, [])) if self.results.get(tid) else None
        self.done[tid] = trial_row(self.exp, tid, trial.config, df, error)
        self.write()

    def write(self) -> None:
        running = [trial_row(self.exp, tid, self.config[tid], pd.DataFrame(res), None)[1]
                   for tid, res in self.results.items() if tid not in self.done]
        write_tables(self.exp, list(self.done.values()), self.exp_dir, [e for e in running if e is not None])
        self.last_write = time.monotonic()
