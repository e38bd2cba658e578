"""The search driver: an `Experiment` -> a Ray Tune run -> the results folder -> retrain, test, compare."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

from tuner.errors import UserError
from tuner.families import get_family
from tuner.spaces import Experiment, check_name, resolved_yaml

def cache_dir() -> Path:
    """Decoded images and embeddings are cached here, shared by every experiment on this machine."""
    return Path(os.environ.get("TUNER_CACHE", Path.home() / ".cache" / "tuner")).expanduser()


# --------------------------------------------------------------------------- Ray
def has_dashboard() -> bool:
    try:
        import ray.dashboard  # noqa: F401
        import aiohttp  # noqa: F401  (ray[default] brings it; plain `ray` has no dashboard)
        return True
    except ImportError:
        return False


def check_address(address: str) -> None:
    """Fail in seconds on an address where nothing listens: ray.init would retry for minutes."""
    import socket

    if address == "auto":
        return  # Ray finds the local cluster itself, or says at once that there is none
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected auto, HOST:PORT (ray start's GCS port, 6379) "
                        f"or ray://HOST:10001")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                        f"with `ray start --head` or drop --address to run locally") from None


def init_ray(address: str | None, dashboard: bool, say: Callable[[str], None] = print, verbose: bool = True) -> None:
    import ray

    if ray.is_initialized():
        return
    # without --verbose the console is tuner's (tuner.search.console): Ray's warnings stay in its log files
    kwargs: dict = {"ignore_reinit_error": True, "logging_level": logging.WARNING if verbose else logging.ERROR,
                    "log_to_driver": verbose}
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = bool(dashboard and has_dashboard())
        if kwargs["include_dashboard"]:
            kwargs["dashboard_host"] = "127.0.0.1"  # never on a public interface unless the user says so
    try:
        ctx = ray.init(**kwargs)
    except ConnectionError as exc:
        raise UserError(f"--address {address}: no Ray cluster answers there ({exc}); start one with "
                        f"`ray start --head` or drop --address to run locally") from None
    # Ray writes its dashboard token readable by everyone on the machine (0644); keep it ours
    token = Path.home() / ".ray" / "auth_token"
    if token.is_file() and token.stat().st_uid == os.getuid():
        token.chmod(0o600)
    url = getattr(ctx, "dashboard_url", None)
    if url:
        say(f"Ray dashboard: http://{url}  (login token: `ray get-auth-token`, also in ~/.ray/auth_token)")


def _flatten(d: object, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _check_same_space(exp: Experiment, exp_dir: Path) -> None:
    """--resume continues the search it saved: a changed space would retrain something that was never searched."""
    try:
        saved = _flatten(yaml.safe_load((exp_dir / "space.yaml").read_text()) or {})
    except yaml.YAMLError:
        raise UserError(f"{exp_dir / 'space.yaml'}: not valid YAML; cannot check what --resume continues, "
                        f"start the search again without --resume") from None
    now = _flatten(yaml.safe_load(resolved_yaml(exp)))
    differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in differ[:5])
        more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
        raise UserError(f"--resume: the space differs from the one {exp_dir} was searched with: {shown}{more}; "
                        f"resume with the same file and --set options, or search under another --name")


@contextlib.contextmanager
def _sigint_stops_tune():
    """Ctrl-C during fit(): let Tune stop and save its state, and tell us it happened.

    Tune's own SIGINT handler ends fit() as if the search were over; the result looks finished. So we take
    SIGINT ourselves (TUNE_DISABLE_SIGINT_HANDLER) and pass it on as SIGUSR1, which Tune always handles the
    same way. A second Ctrl-C stops at once.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    seen: list[int] = []

    def on_sigint(sig, frame):
        if seen or not callable(signal.getsignal(signal.SIGUSR1)):  # before Tune listens, or a second time
            raise KeyboardInterrupt
        seen.append(sig)
        signal.raise_signal(signal.SIGUSR1)

    old_int, old_usr1 = signal.signal(signal.SIGINT, on_sigint), signal.getsignal(signal.SIGUSR1)
    old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGUSR1, old_usr1)
        if old_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_env


def _scheduler(exp: Experiment):
    from ray.tune.schedulers import (ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule,
                                     PopulationBasedTraining)

    from tuner.search.live import best_key

    s = exp.scheduler
    if not get_family(exp.family).iterative or s.name == "fifo":
        return FIFOScheduler()
    # ASHA, HyperBand and the median rule compare trials by their best epoch so far, the score a trial is
    # ranked by at the end (its checkpoint at that epoch is what it would give if stopped now): a trial whose
    # accuracy wobbles down for one epoch at a rung is not cut for it, nor one that peaked early kept for a
    # lucky last epoch alone. With several objectives they stop trials by the first. PBT below uses the
    # current epoch: it copies a trial's weights as they are now, not as they were at its best epoch.
    ranked = {"metric": best_key(exp.metrics[0]), "mode": exp.modes[0]}
    if s.name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=s.max_epochs, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, **ranked)
    if s.name == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=s.max_epochs,
                                  reduction_factor=s.reduction_factor, **ranked)
    if s.name == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=s.grace_period,
                                  min_samples_required=3, **ranked)
    mutations = {k: d.to_tune() for k, d in exp.searched.items()
                 if k in ("lr", "momentum", "dropout", "weight_decay", "label_smoothing")}
    if not mutations:
        raise UserError(f"{exp.path}: scheduler pbt needs at least one of lr, momentum, dropout, weight_decay "
                        f"or label_smoothing in space:")
    return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                                   hyperparam_mutations=mutations, synch=False, metric=exp.metric, mode=exp.mode)


def _resources(exp: Experiment) -> dict:
    import ray

    if not exp.resources.auto:
        return {"cpu": exp.resources.cpu, "gpu": exp.resources.gpu}
    return fit_resources(ray.cluster_resources(), exp.search.max_concurrent)


def check_cluster_fits(resources: dict) -> None:
    """A trial runs on one node: asking for more than the largest node has leaves every trial PENDING forever."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    have = f"the cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs in {len(nodes)} node(s)"
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        largest = max((n.get(ray_key, 0) for n in nodes), default=0)
        if resources[key] > largest:
            raise UserError(f"resources.{key}: {resources[key]:g} per trial, but no node has that many "
                            f"({have}, at most {largest:g} on one node); lower resources.{key} or use "
                            f"resources: auto")


def fit_resources(total: dict, concurrent: int) -> dict:
    """`resources: auto`: share the cluster's CPUs and GPUs evenly between the concurrent trials."""
    n = max(1, concurrent)
    cpu = max(1, int(total.get("CPU", 1) // n))
    gpus = total.get("GPU", 0)
    # whole GPUs when there are enough, else a share; rounded down, or 3 shares of 2/3 (0.667) would
    # ask for more than the 2 GPUs there are
    gpu = 0.0 if not gpus else (float(int(gpus // n)) if gpus >= n else math.floor(gpus / n * 1000) / 1000)
    return {"cpu": cpu, "gpu": gpu}


# --------------------------------------------------------------------------- storage
CLOUD_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")


def check_storage(storage: str) -> str:
    """`storage`: a folder every node reaches (NFS, ...) or a pyarrow file-system URI (s3://, gs://, ...).

    Checked before Ray starts; a local folder comes back absolute, since Ray's workers do not share our cwd.
    """
    if "://" in storage:
        scheme = storage.split("://", 1)[0].lower()
        if scheme == "file":
            return "file://" + check_storage(storage[len("file://"):])
        if scheme not in CLOUD_SCHEMES:
            raise UserError(f"storage {storage!r}: unknown URI scheme {scheme!r}; use a shared folder or one of "
                            f"{', '.join(s + '://' for s in ('file',) + CLOUD_SCHEMES)}")
        return storage.rstrip("/")
    path = Path(storage).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"storage {storage}: cannot create the folder ({exc.strerror}); give a writable "
                        f"folder that every node of the cluster mounts") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"storage {storage}: folder is not writable; give one every node can write to")
    return str(path)


def _is_tune_experiment(names: list[str]) -> bool:
    """Ray writes tuner.pkl and experiment_state-*.json at the top of every experiment it runs."""
    return any(n == "tuner.pkl" or (n.startswith("experiment_state-") and n.endswith(".json")) for n in names)


def _remove_experiment(storage: str, name: str) -> None:
    """A new search of the same name replaces the old one on the storage too (else Ray mixes their trials).

    Only `<storage>/<name>` itself, and only when it is a Tune experiment: never a link, a file or a folder
    that is something else (the storage may be shared with other people's data).
    """
    import pyarrow.fs

    check_name(name, "experiment name")
    local = storage[len("file://"):] if storage.startswith("file://") else None if "://" in storage else storage
    if local is not None:
        root = Path(local).resolve()
        target = root / name
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise UserError(f"storage {target}: not an experiment folder (a link or a file); pick another name "
                            f"or remove it by hand")
        if not target.exists():
            return
        if target.resolve().parent != root or not (_is_tune_experiment(os.listdir(target)) or
                                                   not os.listdir(target)):
            raise UserError(f"storage {target}: exists but is not a Ray Tune experiment (no tuner.pkl or "
                            f"experiment_state-*.json); pick another name or remove it by hand")
        shutil.rmtree(target)
        return
    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    target = f"{root.rstrip('/')}/{name}"
    info = fs.get_file_info(target)
    if info.type == pyarrow.fs.FileType.NotFound:
        return
    names = [Path(i.path).name for i in fs.get_file_info(pyarrow.fs.FileSelector(target))] \
        if info.type == pyarrow.fs.FileType.Directory else None
    if names is None or (names and not _is_tune_experiment(names)):
        raise UserError(f"storage {storage}/{name}: exists but is not a Ray Tune experiment; pick another name "
                        f"or remove it by hand")
    fs.delete_dir(target)


# --------------------------------------------------------------------------- the experiment folder
LOCK_FILE = "search.lock"


def experiment_dir(results: Path, name: str) -> Path:
    """`<results>/<name>`, resolved, refused when it is anything but a real folder directly under results."""
    check_name(name, "experiment name")  # also when run() is called from Python, not the CLI
    try:
        root = results.expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--results {results}: cannot create the folder ({exc.strerror}); give a writable "
                        f"folder") from None
    if not root.is_dir():
        raise UserError(f"--results {results}: not a folder")
    exp_dir = root / name
    if exp_dir.is_symlink() or (exp_dir.exists() and not exp_dir.is_dir()):
        raise UserError(f"{exp_dir}: is a link or a file, not an experiment folder; pick another name or remove "
                        f"it by hand")
    if exp_dir.resolve().parent != root:  # cannot happen for a checked name; never rely on that alone
        raise UserError(f"{exp_dir}: not directly under {root}; pick another name")
    return exp_dir


def _check_replaceable(exp_dir: Path) -> None:
    """A new search replaces an old experiment, never a folder that only happens to have the same name."""
    if exp_dir.is_dir() and not (exp_dir / "space.yaml").is_file() and set(os.listdir(exp_dir)) - {LOCK_FILE}:
        raise UserError(f"{exp_dir}: exists but is not a tuner experiment (no space.yaml); pick another name "
                        f"or remove it by hand")


@contextlib.contextmanager
def search_lock(exp_dir: Path):
    """One search per experiment folder at a time. An OS lock: it dies with the process, so a killed search
    never leaves a stale lock behind and --resume works after it."""
    exp_dir.mkdir(exist_ok=True)
    f = open(exp_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{exp_dir}: another search of this experiment is running ({who}); wait for it, stop it, "
                        f"or pick another --name") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock; the file stays, empty of meaning


def _clear(exp_dir: Path) -> None:
    """Empty an old experiment's folder, keeping our lock file (removing it would let a second search in)."""
    for p in exp_dir.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)  # rmtree never follows links inside
        else:
            p.unlink()


def _trial_dirname(trial) -> str:
    # short and stable: the trial id alone (Ray's default packs every parameter into the name)
    return f"trial_{trial.trial_id}"


def param_space(exp: Experiment, constants_only: bool = False) -> dict:
    if constants_only:  # the searcher draws every searched value itself (Optuna define-by-run, a branching grid)
        return dict(exp.constants)
    grid = exp.search.grid_points if exp.search.algorithm == "grid" else 0
    space = {k: d.to_tune(grid) for k, d in exp.searched.items()}
    space.update(exp.constants)
    return space


# --------------------------------------------------------------------------- the run
def run(exp: Experiment, results: Path, *, address: str | None = None, resume: bool = False,
        retrain: bool = True, dashboard: bool = True, storage: str | None = None,
        say: Callable[[str], None] = print, retry_failed: bool = False, verbose: bool = False) -> Path:
    # what `validate` leaves to the machine that runs: are the weights files and bundles here?
    get_family(exp.family).preflight(exp.constants, exp.searched, str(exp.path or exp.name))
    exp_dir = experiment_dir(results, exp.name)
    if resume and not (exp_dir / "space.yaml").is_file():
        raise UserError(f"--resume: nothing to resume in {exp_dir}; run without --resume to start "
                        f"experiment {exp.name!r}")
    if not resume:
        _check_replaceable(exp_dir)
    # the lock is taken before anything is removed: a second search of the same name must not delete the first's
    with search_lock(exp_dir):
        return _run_locked(exp, results, exp_dir, address=address, resume=resume, retrain=retrain,
                           dashboard=dashboard, storage=storage, say=say, retry_failed=retry_failed,
                           verbose=verbose)


def _run_locked(exp: Experiment, results: Path, exp_dir: Path, *, address: str | None, resume: bool,
                retrain: bool, dashboard: bool, storage: str | None, say: Callable[[str], None],
                retry_failed: bool = False, verbose: bool = False) -> Path:
    from ray import tune

    from tuner.data import prepare
    from tuner.trainable import TrialSpec, final_failures_callback, run_trial

    if address:
        check_address(address)
    # Ray's folder (trial checkpoints, experiment state) is <results>/<name>/ray, or <storage>/<name> when
    # the trials run on other machines and need a place every node reaches
    if resume and not (storage or exp.storage) and (exp_dir / "space.yaml").is_file():
        storage = (yaml.safe_load((exp_dir / "space.yaml").read_text()) or {}).get("storage")  # as first run
    exp.storage = check_storage(storage or exp.storage) if (storage or exp.storage) else None
    ray_path = f"{exp.storage}/{exp.name}" if exp.storage else str(exp_dir / "ray")
    if resume and not ((exp.storage or Path(ray_path).is_dir()) and tune.Tuner.can_restore(ray_path)):
        raise UserError(f"--resume: nothing to resume in {ray_path}; run without --resume to start "
                        f"experiment {exp.name!r}")
    if not resume and exp.storage:  # first: it may refuse, and then nothing is removed
        _remove_experiment(exp.storage, exp.name)
    if not resume:
        _clear(exp_dir)  # a new search of the same name replaces the old one
    if resume:
        _check_same_space(exp, exp_dir)  # never overwrites the saved space: it is the one being continued
    else:
        (exp_dir / "space.yaml").write_text(resolved_yaml(exp))

    t0 = time.perf_counter()
    data = prepare(exp.dataset, cache_dir=cache_dir())
    np.savez(exp_dir / "split.npz", **data.indices)
    say(f"data: {data.name}, {len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test images "
        f"of {data.x_train.shape[1]}x{data.x_train.shape[2]}x{data.x_train.shape[3]}, "
        f"{len(data.class_names)} classes ({time.perf_counter() - t0:.1f} s)")

    init_ray(address, dashboard, say, verbose)
    resources = _resources(exp)
    check_cluster_fits(resources)
    spec = TrialSpec(family=get_family(exp.family), max_epochs=exp.scheduler.max_epochs, augment=exp.dataset.augment,
                     cpus=resources["cpu"], gpus=resources["gpu"], cache_dir=str(cache_dir()),
                     metric=exp.metrics[0], mode=exp.modes[0], objectives=tuple(exp.metrics[1:]))
    # the arrays go to the object store once; every trial on a node maps the same copy
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, spec=spec), resources)
    # Ray snapshots the experiment (trial states, the searcher) every 10 s by default; a driver killed
    # between two snapshots loses what happened since. The snapshot is small, so take it every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # --- watching the search (tuner.search): console, live tables, the study; Ray's own output with --verbose
    from tuner import searchers
    from tuner.search import console, live, study

    console.quiet_ray(verbose)
    search_alg, constants_only = searchers.build(exp, exp_dir)
    callbacks = [live.LiveResults(exp, exp_dir)] + ([] if isinstance(search_alg, study.StudySearch) else
                                                    [study.StudyRecorder(exp, exp_dir)])
    callbacks += [] if verbose else [console.Console(exp, say)]
    callbacks += [final_failures_callback()] if exp.max_failures < 0 else []
    console.header(exp, exp_dir, results, say)
    # ---
    if resume:
        # errored trials stay failed (a NaN comes back the same) unless --retry-failed, which reruns them
        # from their last checkpoint; unfinished ones go on from their checkpoints
        tuner = tune.Tuner.restore(ray_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=retry_failed)
        console.restored(tuner, callbacks, verbose)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(exp, constants_only),
            tune_config=tune.TuneConfig(
                # the searcher and scheduler each name their metric (tuner.searchers, _scheduler)
                search_alg=search_alg, scheduler=_scheduler(exp),
                num_samples=searchers.num_samples(exp), max_concurrent_trials=exp.search.max_concurrent,
                reuse_actors=True, trial_dirname_creator=_trial_dirname, time_budget_s=exp.search.time_budget),
            run_config=tune.RunConfig(
                name=exp.name if exp.storage else "ray", storage_path=exp.storage or str(exp_dir),
                verbose=1 if verbose else 0, callbacks=callbacks,
                # a bounded number per trial; PBT keeps more, since other trials copy from them
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if exp.scheduler.name == "pbt" else 2),
                failure_config=tune.FailureConfig(max_failures=exp.max_failures)),
        )
    t_fit = time.perf_counter()
    with _sigint_stops_tune() as interrupted:
        grid = tuner.fit()
    if interrupted():
        # Tune saved its state and ended fit() as if done: nothing here is a finished search to retrain
        raise KeyboardInterrupt
    fit_s = time.perf_counter() - t_fit
    # how long the search itself took, apart from data preparation and Ray start-up (read by benchmarks/)
    (exp_dir / "run.json").write_text(json.dumps({"trials": len(grid), "search_s": round(fit_s, 3),
                                                  "prepare_and_start_s": round(t_fit - t0, 3)}))
    say(f"search: {len(grid)} trials in {fit_s:.1f} s (data and Ray start-up {t_fit - t0:.1f} s)")
    best = write_results(exp, grid, exp_dir)
    failed = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str}, keep_default_na=False)
    failed = failed[failed["status"] == "ERROR"]
    if len(failed):
        say(f"{len(failed)} of {len(grid)} trials failed:")
        for _, row in failed.iterrows():
            say(f"  {row['trial_id']}: {row['error']}")
    from tuner import report

    report.experiment_plots(exp_dir)
    if best is None:
        # nothing to retrain: say so with the exit status too, not only in the log
        why = f" (first error: {failed['error'].iloc[0]})" if len(failed) else ""
        raise UserError(f"{exp_dir / 'trials.csv'}: no {'feasible ' if exp.constraints else ''}trial finished "
                        f"with {exp.metrics[0]}{why}; "
                        f"fix the space (a narrower lr range, a smaller batch_size, ...) and search again")
    say(f"best trial {best['trial_id']}: " + ", ".join(f"{m} = {best['metrics'][m]:.4g}" for m in exp.metrics))
    if exp.multi:
        say(f"Pareto front: {len(pd.read_csv(exp_dir / 'pareto.csv'))} trials -> {exp_dir / 'pareto.csv'}")
    if retrain:
        from tuner.retrain import retrain_best

        metrics = retrain_best(exp_dir, data=data, say=say)
        say(f"retrained best config: test accuracy {metrics['accuracy']:.4f} -> {exp_dir / 'best'}")
        report.write_comparison(results)
    say(f"results: {exp_dir}")
    return exp_dir


def write_results(exp: Experiment, grid, exp_dir: Path) -> dict | None:
    """trials.csv, epochs.csv and best.yaml from Ray's ResultGrid (the same rows the live tables had)."""
    from tuner.search.live import trial_row, write_tables

    rows = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_")
        rows.append(trial_row(exp, trial_id, result.config or {}, result.metrics_dataframe, result.error))
    return write_tables(exp, rows, exp_dir)
