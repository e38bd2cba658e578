"""What each sub-command does, given parsed arguments. Kept apart from argument parsing and from the driver."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import yaml

from tuner import builtin_spaces, spaces
from tuner.errors import UserError
from tuner.rundir import RunDir


def _say(msg: str) -> None:
    # one write, line and newline together: print() writes them apart, and a Ctrl-C or SIGTERM handled
    # between the two put tuner's last line at the end of this one ("testing on 300 imagesstopped by SIGTERM")
    sys.stdout.write(f"{msg}\n")
    sys.stdout.flush()


def check_results_dir(results: Path) -> Path:
    """The results folder is a folder we can write, or will be one (its nearest existing parent is), or a
    UserError naming it. Called before Ray starts and before anything is created, so a typo in --results
    costs a second and leaves nothing behind."""
    results = Path(results)
    if results.exists() and not results.is_dir():
        raise UserError(f"--results {results}: is a file, not a folder; give a folder (it is created if missing)")
    there = results.absolute()
    while not there.exists():
        there = there.parent
    if not there.is_dir():
        raise UserError(f"--results {results}: {there} is a file, so the folder cannot be made; give another path")
    if not os.access(there, os.W_OK | os.X_OK):  # also false on a read-only mount and an immutable folder
        raise UserError(f"--results {results}: cannot write in {there} (read-only or no permission); "
                        f"give a folder you can write to")
    return results


def check_can_start(exp: spaces.Experiment, results: Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """What a search checks before it touches its folder, for every member of a suite before the first runs:
    a new search never replaces a finished or interrupted one unasked, nor warm-starts from the folder it is
    about to empty. Returns the experiment's folder."""
    from tuner.families import get_family
    from tuner.rundir import check_replaceable, experiment_dir

    # what `validate` leaves to the machine that runs: are the weights files and bundles here? (before the
    # results folder is made)
    get_family(exp.family).preflight(exp.constants, exp.searched, str(exp.path or exp.name))
    if exp.tracking is not None:  # its packages, before anything is created or started
        from tuner import tracking as tracking_config

        tracking_config.require(exp.tracking)
    exp_dir = experiment_dir(results, exp.name)
    run = RunDir(exp_dir)
    if resume and not run.space.is_file():
        raise UserError(f"--resume: nothing to resume in {exp_dir}; run without --resume to start "
                        f"experiment {exp.name!r}")
    if resume:
        return exp_dir
    ws = exp.search.warm_start
    if isinstance(ws, str) and Path(ws).resolve() == exp_dir.resolve():
        raise UserError(f"search.warm_start: {ws} is this experiment's own folder, which a new search empties "
                        f"first; warm-start from a copy of it, or search under another --name")
    check_replaceable(exp_dir, overwrite)
    return exp_dir


def run_search(exp: spaces.Experiment, results: Path, *, address: str | None = None, resume: bool = False,
               retrain: bool = True, dashboard: bool = True, storage: str | None = None,
               say: Callable[[str], None] = print, retry_failed: bool = False, verbose: bool = False,
               overwrite: bool = False, smoke: bool = False) -> Path:
    """One experiment end to end: checks -> search (tuner.search.driver) -> plots -> retrain -> comparison.
    Returns the experiment's results folder. `overwrite`: replace a search of the same name; `smoke`: record
    that this run is a --smoke one, which a later search may replace unasked."""
    from tuner.rundir import remove_if_empty

    exp_dir = check_can_start(exp, results, resume=resume, overwrite=overwrite)
    created = not exp_dir.exists()
    try:
        _search_locked(exp, results, exp_dir, address=address, resume=resume, retrain=retrain,
                       dashboard=dashboard, storage=storage, say=say, retry_failed=retry_failed,
                       verbose=verbose, smoke=smoke)
    finally:
        if created:  # refused before anything was written (missing data, say): leave no stub behind
            remove_if_empty(exp_dir)
    say(f"results: {exp_dir}")
    return exp_dir


def _search_locked(exp, results: Path, exp_dir: Path, *, resume: bool, retrain: bool, say, **run) -> None:
    from tuner.report.compare import write_comparison
    from tuner.report.experiment import experiment_plots
    from tuner.report.webpage import write_report
    from tuner.retrain import retrain_best
    from tuner.rundir import search_lock
    from tuner.search import driver, tracking
    from tuner.search.cluster import storage_lock

    run_dir = RunDir(exp_dir)
    # the locks are taken before anything is removed: a second search of the same name must not delete the
    # first's, in the results folder or on a shared storage folder
    with search_lock(exp_dir), storage_lock(driver.resolve_storage(exp, exp_dir, run["storage"], resume), exp.name), \
            tracking.session(exp, exp_dir, resume, say) as tracked:
        data, best, failed = driver.run(exp, results, exp_dir, resume=resume, say=say, callbacks=tracked.callbacks(),
                                        **run)
        metrics = None
        try:
            if best is None:
                # nothing to retrain: say so with the exit status too, not only in the log
                raise UserError(_nothing_finished(exp, run_dir, failed))
            say(f"best trial {best['trial_id']}: " + ", ".join(f"{m} = {best['metrics'][m]:.4g}" for m in exp.metrics))
            if exp.multi:
                import pandas as pd

                say(f"Pareto front: {len(pd.read_csv(run_dir.pareto))} trials -> {run_dir.pareto}")
            if retrain:
                metrics = retrain_best(exp_dir, data=data, say=say)
                say(f"retrained best config: test accuracy {metrics['accuracy']:.4f} -> {run_dir.best}")
                write_comparison(results)
        finally:
            # after the retrain, which goes straight on from the search: the GPU waited for the search's
            # plots before (11 s for 2 trials, measured while the 2-core machine was shared)
            experiment_plots(exp_dir)
        say(f"report: {write_report(exp_dir)}")
        tracked.finish(exp_dir, best, metrics)


def _nothing_finished(exp: spaces.Experiment, run: RunDir, failed) -> str:
    """Why a search ended without a best trial, and what to change: the first error when trials failed, the
    time budget when it ended the search before any trial reported (slow epochs, not a bad space)."""
    head = f"{run.trials}: no {'feasible ' if exp.constraints else ''}trial finished with {exp.metrics[0]}"
    if len(failed):
        return (f"{head} (first error: {failed['error'].iloc[0]}); "
                f"fix the space (a narrower lr range, a smaller batch_size, ...) and search again")
    budget = exp.search.time_budget
    from tuner.rundir import CorruptResult, read_result

    try:
        searched = float(read_result(run.run_json).get("search_s", 0.0)) if run.run_json.is_file() else 0.0
    except (CorruptResult, TypeError, ValueError):
        searched = 0.0
    if budget and searched >= 0.9 * budget:
        return (f"{head} within search.time_budget ({budget:g} s; the search ran {searched:.0f} s): raise "
                f"search.time_budget, or make an epoch cheaper (a smaller dataset.image_size, dataset.limit, "
                f"a smaller model) and search again")
    return f"{head}; fix the space (a narrower lr range, a smaller batch_size, ...) and search again"


def search(args) -> int:
    check_results_dir(Path(args.results))
    from tuner.report.compare import write_comparison

    if getattr(args, "retry_failed", False) and not args.resume:
        raise UserError("--retry-failed reruns the failed trials of an earlier search: give --resume too")
    if args.name is not None:
        spaces.check_name(args.name, "--name")
    loaded = spaces.load(builtin_spaces.resolve(args.space), args.set)
    results = Path(args.results)
    members = loaded.members if isinstance(loaded, spaces.Suite) else [None]
    # every member (and the ensemble) is checked before the first one runs
    exps = [loaded if member is None else spaces.load(member, args.set) for member in members]
    suite = loaded if isinstance(loaded, spaces.Suite) else None
    if suite and suite.ensemble:
        from tuner import ensemble

        done = {p.name for p in results.iterdir() if RunDir(p).model.is_file()} if results.is_dir() else set()
        ensemble.check_names(suite.ensemble, {e.name for e in exps} | done, f"{suite.path}: ensemble")
    for i, exp in enumerate(exps):
        if args.name and suite is None:
            exp.name = args.name
        if args.smoke:
            exps[i] = spaces.smoke(exp)
    overwrite = getattr(args, "overwrite", False)
    for exp in exps:  # no member replaces a search unasked: all are checked before the first runs
        check_can_start(exp, results, resume=args.resume, overwrite=overwrite)
    names = []
    for exp in exps:
        _say(_header(exp))
        run_search(exp, results, address=args.address, resume=args.resume, retrain=not args.no_retrain,
                   dashboard=not args.no_dashboard, storage=getattr(args, "storage", None), say=_say,
                   retry_failed=getattr(args, "retry_failed", False), verbose=getattr(args, "verbose", False),
                   overwrite=overwrite, smoke=args.smoke)
        names.append(exp.name)
    if suite and not args.no_retrain:
        if suite.ensemble:
            name = f"{suite.name}_ensemble"
            _say(f"== {name}: mean class probabilities of {', '.join(suite.ensemble)}")
            ensemble.build(results, name, suite.ensemble, say=_say)
            names.append(name)
        df = write_comparison(results, names)
        _say(_terminal_table(df, results))
    return 0


def _terminal_table(df, results: Path) -> str:
    """The comparison as markdown within 120 columns, saying where the full table is when columns were left out."""
    from tuner.report.compare import TERMINAL_WIDTH, narrow_columns, to_markdown

    kept = narrow_columns(df, TERMINAL_WIDTH)
    note = (f"\n({len(df.columns) - len(kept)} more columns in {Path(results) / 'comparison.md'})"
            if len(kept) < len(df.columns) else "")
    return to_markdown(df[kept]) + note


def _header(exp: spaces.Experiment) -> str:
    """`== name (family, N trials, up to E epochs)`: N is what will run (a grid's every point)."""
    from tuner.families import get_family
    from tuner.search.searchers import planned_trials

    n = planned_trials(exp)
    trials = f"{n} trial{'s' if n != 1 else ''}" if n is not None else "trials until the time budget ends"
    budget = f" within {exp.search.time_budget:g} s" if exp.search.time_budget and n is not None else ""
    steps = f"up to {exp.scheduler.max_epochs} epochs" if get_family(exp.family).iterative else "one fit each"
    return f"== {exp.name} ({exp.family}, {trials}{budget}, {steps})"


def _results_dir(results: Path) -> Path | None:
    """The results folder to read, None if there is none; a file given as --results is a user error."""
    if results.exists() and not results.is_dir():
        raise UserError(f"--results {results}: is a file, not a folder; give the folder `tuner search` wrote")
    return results if results.is_dir() else None


def _experiment_dir(results: Path, name: str | None) -> Path:
    if name:
        p = Path(name)
        d = p if RunDir(p).is_experiment() else results / name
        if not RunDir(d).is_experiment():
            raise UserError(f"--experiment {name}: no experiment there (looked in {d}); see `tuner list`")
        return d
    runs = [RunDir(p).best_yaml for p in results.iterdir()] if _results_dir(results) else []
    runs = [p for p in runs if p.is_file()]
    if not runs:
        raise UserError(f"--results {results}: no finished experiment; run `tuner search --space FILE` first")
    return max(runs, key=lambda p: p.stat().st_mtime).parent


def _read_results(d: Path, run: RunDir) -> dict:
    """best.yaml's entry, once every results file has been read: an unreadable file is exit 2 and one `error:`
    line before anything is printed, never half an answer (the messages are `list`'s warnings)."""
    if not run.best_yaml.is_file():
        if run.running_note():
            raise UserError(f"{d}: {run.running_note().split(':')[0]}, no trial has finished yet; try again shortly")
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
    _say(front.drop(columns=empty).to_string(index=False))
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

    d = _experiment_dir(Path(args.results), args.experiment)
    run = RunDir(d)
    # every results file is read, and every option checked, before anything is printed
    info = _read_results(d, run)
    if args.pareto:
        return _print_pareto(d, run)
    chosen = _trial_entry(d, args.trial) if args.trial else None
    dest, onnx = _export_destination(args, d, run, info)
    metrics = run.read_metrics() if run.metrics.is_file() else None
    if run.running_note():  # the search is still going: best.yaml is the best of the trials finished so far
        _say(run.running_note())
    if chosen is not None and dest is None:
        # only a look: best.yaml and best/ stay as they are (changing one alone made them disagree)
        _say(yaml.safe_dump(chosen, sort_keys=False).rstrip())
        _say(f"(not written anywhere: `tuner best --trial {args.trial} --export` retrains and exports it)")
        return 0
    _say(yaml.safe_dump(chosen or info, sort_keys=False).rstrip())
    retrained = bundle_config(run.model)  # the config best/ holds a model of, None if none
    if metrics is not None and retrained == info["config"]:
        _say(test_metrics_line(run))
    elif metrics is not None:
        _say(f"{run.best} holds the retrain of another config than best.yaml's; --export retrains best.yaml's")
    if dest is not None:
        _retrain_and_export(d, chosen or info, chosen is not None, retrained, dest, onnx)
        if retrained != (chosen or info)["config"] and run.metrics.is_file():  # retrained just now
            _say(test_metrics_line(run))
    if dest is not None or not run.report.is_file():  # the report names the bundle, and the page is cheap
        from tuner.report.webpage import write_report

        _say(f"report: {write_report(d)}")
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
        _say(f"retraining trial {entry['trial_id']}'s config first" if chosen else
             "no retrained model of best.yaml's config yet: retraining it first")
        retrain_best(d, say=_say, entry=entry)
    if chosen:
        run.write_best(entry)
    predict.export(d, dest)
    _say(f"exported to {dest} (load it with tuner.load({str(dest)!r}))")
    if onnx:
        from tuner import onnx_export

        _say(f"ONNX model: {onnx_export.export_onnx(dest)} (input and preprocessing: {dest / 'preprocessing.json'})")


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


def dashboard(args) -> int:
    """optuna-dashboard over <results>/<name>/optuna.journal, during the search and after it."""
    from tuner.search.study import open_journal, storage

    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("tuner dashboard needs optuna-dashboard: pip install -e '.[monitor]'") from None
    results = Path(args.results)
    if args.experiment:
        d = _experiment_dir(results, args.experiment)
    else:  # the latest experiment that has a study, finished or not
        runs = [p for p in results.iterdir() if RunDir(p).journal.is_file()] if results.is_dir() else []
        if not runs:
            raise UserError(f"--results {results}: no experiment with a study (optuna.journal); "
                            f"run `tuner search --space FILE` first")
        d = max(runs, key=lambda p: RunDir(p).journal.stat().st_mtime)
    open_journal(d)
    import socket

    try:  # a busy port is the user's to change, not a traceback
        socket.create_server(("127.0.0.1", args.port)).close()
    except OSError as exc:
        raise UserError(f"--port {args.port}: cannot listen there ({exc.strerror}); pass another --port") from None
    except (OverflowError, TypeError):  # the CLI checks the range; this is for a caller from Python
        raise UserError(f"--port {args.port!r}: not a port; give one from 1 to 65535") from None
    _say(f"optuna-dashboard for {d.name}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)")
    optuna_dashboard.run_server(storage(d), host="127.0.0.1", port=args.port)
    return 0


def compare(args) -> int:
    from tuner.report import compare as report
    from tuner.rundir import warn

    results = Path(args.results)
    if _results_dir(results) is None:
        raise UserError(f"--results {results}: no such folder")
    names = []
    for e in args.experiments:
        p = Path(e)
        names.append(p.name if RunDir(p).is_experiment() else e)
        if not RunDir(results / names[-1]).metrics.is_file():
            raise UserError(f"{e}: no retrained model (best/metrics.json) in {results / names[-1]}")
    try:
        df = report.write_comparison(results, names or None, fmt=args.format)
    except UserError as exc:  # a read-only results folder: the table is still printed below
        warn(str(exc))
        df = report.comparison_rows(results, names or None, skip=lambda msg: None)
    if df.empty:
        raise UserError(f"--results {results}: no experiment with a retrained model to compare")
    if args.format == "md" and sys.stdout.isatty():  # a person reads it: what fits; the file keeps every column
        sys.stdout.write(_terminal_table(df, results) + "\n")
    else:
        sys.stdout.write(report.render(df, args.format, results) + "\n")
    return 0


def validate(args) -> int:
    loaded = spaces.load(builtin_spaces.resolve(args.space), args.set)
    if isinstance(loaded, spaces.Suite):
        for m in loaded.members:
            exp = spaces.load(m, args.set)
            _say(f"# {m.name}: ok ({exp.family})")
        _say(yaml.safe_dump(loaded.raw, sort_keys=False).rstrip())
    else:
        _say(spaces.resolved_yaml(loaded).rstrip())
    _say(f"{args.space}: valid")
    return 0


def list(args) -> int:  # noqa: A001 - the sub-command's name
    from tuner.rundir import CorruptResult, warn

    results = Path(args.results)
    dirs = sorted(p for p in results.glob("*") if RunDir(p).is_experiment()) if _results_dir(results) else []
    if not dirs:
        _say(f"no experiments in {results}")
        return 0
    for d in dirs:
        try:
            _say(_list_line(d))
        except CorruptResult as exc:  # one bad folder does not hide the others
            warn(f"{exc}; {d.name} not listed")
    return 0


def _list_line(d: Path) -> str:
    def score(value) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"

    run = RunDir(d)
    space = run.read_space()
    n = len(run.read_trials()) if run.trials.is_file() else 0
    acc = "no finished trial"
    if run.best_yaml.is_file():
        acc = f"val {score(run.read_best()['metrics'].get('val_accuracy'))}"
    test = ""
    if run.metrics.is_file():
        test = f", test {score(run.read_metrics().get('accuracy'))}"
    live = "  (search running)" if run.running_note() else ""
    return f"{d.name:30s} {str(space.get('family', '')):9s} {n:4d} trials  {acc}{test}{live}"


def schema(args) -> int:
    import json

    from tuner.schema import schema as build

    sys.stdout.write(json.dumps(build(), indent=2) + "\n")
    return 0


def spaces_(args) -> int:
    """`tuner spaces`: the built-in space files, one line each: name, family (or suite), the seed experiment."""
    found = builtin_spaces.listing()
    width = max(len(s.name) for s in found)
    _say(f"built-in spaces ({builtin_spaces.SPACES_DIR}); run one with `tuner search --space NAME`:")
    for s in found:
        _say(f"  {s.name:{width}s}  {s.kind:9s} {s.seed}")
    return 0


def report(args) -> int:
    """`tuner report`: (re)write results/<name>/report.html from the folder's files."""
    from tuner.report.webpage import write_report

    d = _experiment_dir(Path(args.results), args.experiment)
    RunDir(d).read_space()  # an unreadable space.yaml is one `error:` line, as for `best`
    _say(f"report: {write_report(d)}")
    return 0
