"""What each sub-command does, given parsed arguments. Kept apart from argument parsing and from the driver."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tuner import spaces
from tuner.errors import UserError


def _say(msg: str) -> None:
    print(msg, flush=True)


def search(args) -> int:
    from tuner import report
    from tuner import driver

    loaded = spaces.load(args.space, args.set)
    results = Path(args.results)
    members = loaded.members if isinstance(loaded, spaces.Suite) else [None]
    # every member (and the ensemble) is checked before the first one runs
    exps = [loaded if member is None else spaces.load(member, args.set) for member in members]
    suite = loaded if isinstance(loaded, spaces.Suite) else None
    if suite and suite.ensemble:
        from tuner import ensemble

        done = {p.parent.parent.name for p in results.glob("*/best/model.pt")} if results.is_dir() else set()
        ensemble.check_names(suite.ensemble, {e.name for e in exps} | done, f"{suite.path}: ensemble")
    names = []
    for exp in exps:
        if args.name and suite is None:
            exp.name = args.name
        if args.smoke:
            exp = spaces.smoke(exp)
        _say(f"== {exp.name} ({exp.family}, {exp.num_samples} trials, up to {exp.scheduler.max_epochs} epochs)")
        driver.run(exp, results, address=args.address, resume=args.resume, retrain=not args.no_retrain,
                   dashboard=not args.no_dashboard, storage=getattr(args, "storage", None), say=_say,
                   verbose=getattr(args, "verbose", False))
        names.append(exp.name)
    if suite and not args.no_retrain:
        if suite.ensemble:
            name = f"{suite.name}_ensemble"
            _say(f"== {name}: mean class probabilities of {', '.join(suite.ensemble)}")
            ensemble.build(results, name, suite.ensemble, say=_say)
            names.append(name)
        df = report.write_comparison(results, names)
        _say(report.to_markdown(df))
    return 0


def _experiment_dir(results: Path, name: str | None) -> Path:
    if name:
        p = Path(name)
        d = p if (p / "space.yaml").is_file() else results / name
        if not (d / "space.yaml").is_file():
            raise UserError(f"--experiment {name}: no experiment there (looked in {d}); see `tuner list`")
        return d
    runs = [p for p in results.glob("*/best.yaml")] if results.is_dir() else []
    if not runs:
        raise UserError(f"--results {results}: no finished experiment; run `tuner search --space FILE` first")
    return max(runs, key=lambda p: p.stat().st_mtime).parent


def best(args) -> int:
    from tuner import export
    from tuner.retrain import retrain_best

    d = _experiment_dir(Path(args.results), args.experiment)
    from tuner.search.live import running_note

    if not (d / "best.yaml").is_file():
        if running_note(d):
            raise UserError(f"{d}: {running_note(d).split(':')[0]}, no trial has finished yet; try again shortly")
        raise UserError(f"{d}: the search has no finished trial yet; run or --resume it first")
    info = yaml.safe_load((d / "best.yaml").read_text())
    if running_note(d):  # the search is still going: best.yaml is the best of the trials finished so far
        _say(running_note(d))
    _say(yaml.safe_dump(info, sort_keys=False).rstrip())
    if (d / "best" / "metrics.json").is_file():
        _say(f"test metrics: {d / 'best' / 'metrics.json'}")
    if args.export is not None:
        if not (d / "best" / "model.pt").is_file():
            _say("no retrained model yet: retraining the best config first")
            retrain_best(d, say=_say)
        dest = Path(args.export) if args.export else d / "export"
        export.export(d, dest)
        _say(f"exported to {dest} (load it with tuner.load({str(dest)!r}))")
    return 0


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
        runs = [p.parent for p in results.glob("*/optuna.journal")] if results.is_dir() else []
        if not runs:
            raise UserError(f"--results {results}: no experiment with a study (optuna.journal); "
                            f"run `tuner search --space FILE` first")
        d = max(runs, key=lambda p: (p / "optuna.journal").stat().st_mtime)
    open_journal(d)
    import socket

    try:  # a busy port is the user's to change, not a traceback
        socket.create_server(("127.0.0.1", args.port)).close()
    except OSError as exc:
        raise UserError(f"--port {args.port}: cannot listen there ({exc.strerror}); pass another --port") from None
    _say(f"optuna-dashboard for {d.name}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)")
    optuna_dashboard.run_server(storage(d), host="127.0.0.1", port=args.port)
    return 0


def compare(args) -> int:
    from tuner import report

    results = Path(args.results)
    if not results.is_dir():
        raise UserError(f"--results {results}: no such folder")
    names = []
    for e in args.experiments:
        p = Path(e)
        names.append(p.name if (p / "space.yaml").is_file() else e)
        if not ((results / names[-1] / "best" / "metrics.json").is_file()):
            raise UserError(f"{e}: no retrained model (best/metrics.json) in {results / names[-1]}")
    df = report.write_comparison(results, names or None, fmt=args.format)
    if df.empty:
        raise UserError(f"--results {results}: no experiment with a retrained model to compare")
    sys.stdout.write(report.render(df, args.format) + "\n")
    return 0


def validate(args) -> int:
    loaded = spaces.load(args.space, args.set)
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
    import pandas as pd

    from tuner.search.live import running_note

    results = Path(args.results)
    dirs = sorted(p for p in results.glob("*") if (p / "space.yaml").is_file()) if results.is_dir() else []
    if not dirs:
        _say(f"no experiments in {results}")
        return 0
    for d in dirs:
        space = yaml.safe_load((d / "space.yaml").read_text())
        n = len(pd.read_csv(d / "trials.csv")) if (d / "trials.csv").is_file() else 0
        best = yaml.safe_load((d / "best.yaml").read_text()) if (d / "best.yaml").is_file() else None
        acc = f"val {best['metrics']['val_accuracy']:.4f}" if best else "no finished trial"
        test = ""
        if (d / "best" / "metrics.json").is_file():
            import json
            test = f", test {json.loads((d / 'best' / 'metrics.json').read_text())['accuracy']:.4f}"
        live = "  (search running)" if running_note(d) else ""
        _say(f"{d.name:30s} {space.get('family', ''):9s} {n:4d} trials  {acc}{test}{live}")
    return 0
