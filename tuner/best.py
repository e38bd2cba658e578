"""`tuner best`: the best trial's entry, the retrained model's test metrics, --pareto's front, and --trial /
--export / --format onnx, which retrain a config into best/ and copy it out. Every results file is read and
every option checked before anything is printed or retrained."""
from __future__ import annotations

from pathlib import Path

import yaml

from tuner.errors import UserError
from tuner.progress import say
from tuner.rundir import RunDir, find_experiment


def _read_results(d: Path, run: RunDir) -> dict:
    """best.yaml's entry, once every results file has been read: an unreadable file is exit 2 and one `error:`
    line before anything is printed, never half an answer (the messages are `list`'s warnings)."""
    if not run.best_yaml.is_file():
        if info := run.running_search():
            raise UserError(f"{d}: search running (pid {info['pid']}, started {info['started']}), no trial has "
                            f"finished yet; try again shortly")
        raise UserError(f"{d}: the search has no finished trial yet; run or --resume it first")
    run.read_space()
    if run.trials.exists():
        run.read_trials()
    return run.read_best()


def _print_pareto(d: Path, run: RunDir) -> int:
    from tuner.rundir import read_trials

    if not run.pareto.is_file():
        raise UserError(f"{d}: no pareto.csv; --pareto is for a search with several objectives "
                        f"(metric: [val_accuracy, latency_ms])")
    front = read_trials(run.pareto)
    # the front holds no failed trial: its empty error column would print as NaN
    empty = ["error"] if "error" in front and front["error"].isna().all() else []
    say(front.drop(columns=empty).to_string(index=False))
    return 0


def _export_destination(args, d: Path, run: RunDir, info: dict) -> tuple[Path | None, bool]:
    """(where --export writes, None without it; ONNX or not), every option checked before a retrain, which can
    take hours. --format onnx implies --export."""
    from tuner import predict

    onnx = getattr(args, "format", "bundle") == "onnx"
    if onnx:
        from tuner import onnx_export

        onnx_export.check_family(info.get("family", ""))
        onnx_export.require_onnx()
        args.export = "" if args.export is None else args.export
    dest = None
    if args.export is not None:
        dest = Path(args.export) if args.export else run.export
        predict.check_destination(d, dest)
    return dest, onnx


def best(args) -> int:
    from tuner.bundle import bundle_config

    d = find_experiment(Path(args.results), args.experiment)
    run = RunDir(d)
    # every results file is read, and every option checked, before anything is printed
    info = _read_results(d, run)
    if args.pareto:
        return _print_pareto(d, run)
    chosen = _trial_entry(d, args.trial) if args.trial else None
    dest, onnx = _export_destination(args, d, run, info)
    metrics = run.read_metrics() if run.metrics.is_file() else None
    if run.running_note():  # the search is still going: best.yaml is the best of the trials finished so far
        say(run.running_note())
    if chosen is not None and dest is None:
        # only a look: best.yaml and best/ stay as they are (changing one alone made them disagree)
        say(yaml.safe_dump(chosen, sort_keys=False).rstrip())
        say(f"(not written anywhere: `tuner best --trial {args.trial} --export` retrains and exports it)")
        return 0
    entry = chosen or info
    say(yaml.safe_dump(entry, sort_keys=False).rstrip())
    retrained = bundle_config(run.model)  # the config best/ holds a model of, None if none
    if metrics is not None and retrained == entry["config"]:
        say(test_metrics_line(run))  # only under the entry whose model they are (not a --trial's, before it is)
    elif metrics is not None and chosen is None:
        say(f"{run.best} holds the retrain of another config than best.yaml's; --export retrains best.yaml's")
    if dest is not None:
        _retrain_and_export(d, entry, chosen is not None, retrained, dest, onnx)
        if retrained != entry["config"] and run.metrics.is_file():  # retrained just now
            say(test_metrics_line(run))
    if dest is not None or not run.report.is_file():  # the report names the bundle, and the page is cheap
        from tuner.report.webpage import write_report

        say(f"report: {write_report(d)}")
    return 0


def test_metrics_line(run: RunDir) -> str:
    """`tuner best`'s line of the retrained model's test metrics, read from best/metrics.json."""
    from tuner.report.webpage import number

    m = run.read_metrics()
    keys = ("accuracy", "balanced_accuracy", "f1_macro", "loss", "auc_ovr", "num_test")  # the file has them all
    shown = ", ".join(f"{k} {number(m[k])}" for k in keys if isinstance(m.get(k), (int, float)))
    return f"test metrics: {shown} ({run.metrics})"


def _retrain_and_export(d: Path, entry: dict, chosen: bool, retrained: dict | None, dest: Path, onnx: bool) -> None:
    """best/ retrained from `entry` unless it already holds that config's model, then copied to `dest`.
    A --trial's entry becomes best.yaml once its model is in best/: the two never name different trials."""
    from tuner import predict
    from tuner.retrain import retrain_best

    run = RunDir(d)
    if retrained != entry["config"]:
        say(f"retraining trial {entry['trial_id']}'s config first" if chosen else
             "no retrained model of best.yaml's config yet: retraining it first")
        retrain_best(d, say=say, entry=entry)
    if chosen:
        run.write_best(entry)
    predict.export(d, dest)
    say(f"exported to {dest} (load it with tuner.load({str(dest)!r}))")
    if onnx:
        from tuner import onnx_export

        say(f"ONNX model: {onnx_export.export_onnx(dest)} (input and preprocessing: {dest / 'preprocessing.json'})")


def _trial_entry(d: Path, trial_id: str) -> dict:
    """`--trial ID`: best.yaml's entry for that trial (its config rebuilt from trials.csv), for the retrain and
    the export to take instead of the search's own pick; a UserError if trials.csv has no finished trial ID.
    Writes nothing: with --export, best.yaml becomes it once best/ holds its retrained model."""
    import pandas as pd

    from tuner.tables import best_entry, row_config

    run = RunDir(d)
    exp = run.experiment()
    trials = run.read_trials()
    rows = trials[trials["trial_id"] == trial_id]
    if rows.empty:
        raise UserError(f"--trial {trial_id}: no such trial in {run.trials}; it has "
                        f"{', '.join(trials['trial_id'].head(10))}{', ...' if len(trials) > 10 else ''}")
    row = rows.iloc[0]
    if row.get("status") == "ERROR" or pd.isna(row.get("val_accuracy")):
        raise UserError(f"--trial {trial_id}: that trial did not finish; pick one with metrics in trials.csv")
    return best_entry(exp, row, row_config(exp, row)) | {"chosen": f"--trial {trial_id}"}
