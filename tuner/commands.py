"""What each sub-command does, given parsed arguments. Kept apart from argument parsing and from the driver."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import yaml

from tuner import builtin_spaces, spaces
from tuner.errors import UserError
from tuner.best import best  # noqa: F401 - `tuner best`; cli finds each sub-command here by name
from tuner.progress import say
from tuner.rundir import RunDir, find_experiment, results_folder
from tuner.spaces.rules import auto_fuse_off


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
        data, top, failed = driver.run(exp, results, exp_dir, resume=resume, say=say, callbacks=tracked.callbacks(),
                                        **run)
        metrics = None
        try:
            if top is None:
                # nothing to retrain: say so with the exit status too, not only in the log
                raise UserError(_nothing_finished(exp, run_dir, failed))
            say(f"best trial {top['trial_id']}: " + ", ".join(f"{m} = {top['metrics'][m]:.4g}" for m in exp.metrics))
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
        tracked.finish(exp_dir, top, metrics)


def _nothing_finished(exp: spaces.Experiment, run: RunDir, failed) -> str:
    """Why a search ended without a best trial, and what to change: the first error when trials failed, the
    time budget when it ended the search before any trial reported (slow epochs, not a bad space)."""
    head = f"{run.trials}: no {'feasible ' if exp.constraints else ''}trial finished with {exp.metrics[0]}"
    if len(failed):
        return (f"{head} (first error: {failed['error'].iloc[0]}); "
                f"fix the space (a narrower lr range, a smaller batch_size, ...) and search again")
    budget = float(exp.search.time_budget or 0)  # seconds: the parser turned a duration into them
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


def _experiment(loaded: spaces.Experiment | spaces.Suite) -> spaces.Experiment:
    assert isinstance(loaded, spaces.Experiment)  # a suite's members are spaces, never suites (load_suite)
    return loaded


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
    exps = [_experiment(loaded if member is None else spaces.load(member, args.set)) for member in members]
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
    if getattr(args, "retry_failed", False) and any(exp.search.fuse for exp in exps):
        say("note: --retry-failed reruns the fused groups whose trial failed as a whole; a member that failed "
            "alone (a NaN loss) ended with its group and is not rerun")
    names = []
    for exp in exps:
        say(_header(exp))
        run_search(exp, results, address=args.address, resume=args.resume, retrain=not args.no_retrain,
                   dashboard=not args.no_dashboard, storage=getattr(args, "storage", None), say=say,
                   retry_failed=getattr(args, "retry_failed", False), verbose=getattr(args, "verbose", False),
                   overwrite=overwrite, smoke=args.smoke)
        names.append(exp.name)
    if suite and not args.no_retrain:
        if suite.ensemble:
            name = f"{suite.name}_ensemble"
            say(f"== {name}: mean class probabilities of {', '.join(suite.ensemble)}")
            ensemble.build(results, name, suite.ensemble, say=say)
            names.append(name)
        df = write_comparison(results, names)
        say(_terminal_table(df, results))
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


def dashboard(args) -> int:
    """optuna-dashboard over <results>/<name>/optuna.journal, during the search and after it."""
    from tuner.search.study import open_journal, storage

    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("tuner dashboard needs optuna-dashboard: pip install -e '.[monitor]'") from None
    results = Path(args.results)
    if args.experiment:
        d = find_experiment(results, args.experiment)
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
    say(f"optuna-dashboard for {d.name}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)")
    optuna_dashboard.run_server(storage(d), host="127.0.0.1", port=args.port)
    return 0


def compare(args) -> int:
    from tuner.report import compare as report
    from tuner.rundir import warn

    results = Path(args.results)
    if results_folder(results) is None:
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
            exp = _experiment(spaces.load(m, args.set))
            say(f"# {m.name}: ok ({exp.family})")
        say(yaml.safe_dump(loaded.raw, sort_keys=False).rstrip())
    else:
        say(spaces.resolved_yaml(loaded).rstrip())
        if why := auto_fuse_off(loaded):
            say(f"note: {why}")
    say(f"{args.space}: valid")
    return 0


def list(args) -> int:  # noqa: A001 - the sub-command's name
    from tuner.rundir import CorruptResult, warn

    results = Path(args.results)
    dirs = sorted(p for p in results.glob("*") if RunDir(p).is_experiment()) if results_folder(results) else []
    if not dirs:
        say(f"no experiments in {results}")
        return 0
    for d in dirs:
        try:
            say(_list_line(d))
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
    live = "  (search running)" if run.running_note() else _unfinished(space, n, run)
    return f"{d.name:30s} {str(space.get('family', '')):9s} {n:4d} trials  {acc}{test}{live}"


def _unfinished(space: dict, n: int, run: RunDir) -> str:
    """'  (unfinished: ...)' for a search that stopped short of its num_samples (a Ctrl-C, a kill, a refusal);
    '' when it did not, or when that cannot be told from space.yaml (a grid, a time budget)."""
    search = space.get("search")
    search = search if isinstance(search, dict) else {}
    planned = search.get("num_samples")
    if search.get("algorithm") == "grid" or search.get("time_budget") or not isinstance(planned, int):
        return ""
    # Ray's saved state is what --resume goes on from (elsewhere with a storage); without it, nothing ran
    how = "--resume continues it" if run.ray_saved() or space.get("storage") else "the same command starts it"
    return f"  (unfinished: {n} of {planned} trials; {how})" if 0 <= n < planned else ""


def schema(args) -> int:
    import json

    from tuner.schema import schema as build

    sys.stdout.write(json.dumps(build(), indent=2) + "\n")
    return 0


def spaces_(args) -> int:
    """`tuner spaces`: the built-in space files, one line each: name, family (or suite), the seed experiment."""
    found = builtin_spaces.listing()
    width = max(len(s.name) for s in found)
    say(f"built-in spaces ({builtin_spaces.SPACES_DIR}); run one with `tuner search --space NAME`:")
    for s in found:
        say(f"  {s.name:{width}s}  {s.kind:9s} {s.seed}")
    return 0


def report(args) -> int:
    """`tuner report`: (re)write results/<name>/report.html from the folder's files."""
    from tuner.report.webpage import write_report

    d = find_experiment(Path(args.results), args.experiment)
    RunDir(d).read_space()  # an unreadable space.yaml is one `error:` line, as for `best`
    say(f"report: {write_report(d)}")
    return 0
