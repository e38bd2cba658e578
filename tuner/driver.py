"""The search driver: an `Experiment` -> a Ray Tune run -> the results folder -> retrain, test, compare."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

from tuner.errors import UserError
from tuner.families import get_family
from tuner.spaces import Experiment, resolved_yaml

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
    url = getattr(ctx, "dashboard_url", None)
    if url:
        say(f"Ray dashboard: http://{url}  (login token: `ray get-auth-token`, also in ~/.ray/auth_token)")


def _scheduler(exp: Experiment):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, PopulationBasedTraining

    from tuner.search.live import best_key

    s = exp.scheduler
    if not get_family(exp.family).iterative or s.name == "fifo":
        return FIFOScheduler()
    # ASHA and the median rule compare trials by their best epoch so far, the score a trial is ranked by
    # at the end (its checkpoint at that epoch is what it would give if stopped now): a trial whose
    # accuracy wobbles down for one epoch at a rung is not cut for it, nor one that peaked early kept
    # for a lucky last epoch alone. PBT below uses the current epoch: it copies a trial's weights as they
    # are now, not as they were at its best epoch.
    ranked = {"metric": best_key(exp.metric), "mode": exp.mode}
    if s.name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=s.max_epochs, grace_period=s.grace_period,
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


def _remove_experiment(storage: str, name: str) -> None:
    """A new search of the same name replaces the old one on the storage too (else Ray mixes their trials)."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage if "://" in storage else "file://" + storage)
    target = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(target).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(target)


def _trial_dirname(trial) -> str:
    # short and stable: the trial id alone (Ray's default packs every parameter into the name)
    return f"trial_{trial.trial_id}"


def param_space(exp: Experiment) -> dict:
    grid = exp.search.grid_points if exp.search.algorithm == "grid" else 0
    space = {k: d.to_tune(grid) for k, d in exp.searched.items()}
    space.update(exp.constants)
    return space


# --------------------------------------------------------------------------- the run
def run(exp: Experiment, results: Path, *, address: str | None = None, resume: bool = False,
        retrain: bool = True, dashboard: bool = True, storage: str | None = None,
        say: Callable[[str], None] = print, verbose: bool = False) -> Path:
    from ray import tune

    from tuner.data import prepare
    from tuner.trainable import TrialSpec, run_trial

    # what `validate` leaves to the machine that runs: are the weights files and bundles here?
    get_family(exp.family).preflight(exp.constants, exp.searched, str(exp.path or exp.name))
    exp_dir = (results / exp.name).resolve()
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
    if not resume and exp_dir.exists():
        shutil.rmtree(exp_dir)  # a new search of the same name replaces the old one
    if not resume and exp.storage:
        _remove_experiment(exp.storage, exp.name)
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "space.yaml").write_text(resolved_yaml(exp))

    t0 = time.perf_counter()
    data = prepare(exp.dataset, cache_dir=cache_dir())
    np.savez(exp_dir / "split.npz", **data.indices)
    say(f"data: {data.name}, {len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test images "
        f"of {data.x_train.shape[1]}x{data.x_train.shape[2]}x{data.x_train.shape[3]}, "
        f"{len(data.class_names)} classes ({time.perf_counter() - t0:.1f} s)")

    init_ray(address, dashboard, say, verbose)
    resources = _resources(exp)
    spec = TrialSpec(family=get_family(exp.family), max_epochs=exp.scheduler.max_epochs, augment=exp.dataset.augment,
                     cpus=resources["cpu"], gpus=resources["gpu"], cache_dir=str(cache_dir()),
                     metric=exp.metric, mode=exp.mode)
    # the arrays go to the object store once; every trial on a node maps the same copy
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, spec=spec), resources)
    # Ray snapshots the experiment (trial states, the searcher) every 10 s by default; a driver killed
    # between two snapshots loses what happened since. The snapshot is small, so take it every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # --- watching the search (tuner.search): console, live tables, the study; Ray's own output with --verbose
    from tuner.search import console, live, study

    console.quiet_ray(verbose)
    search_alg = study.searcher(exp, exp_dir)
    callbacks = [live.LiveResults(exp, exp_dir)] + ([] if isinstance(search_alg, study.StudySearch) else
                                                    [study.StudyRecorder(exp, exp_dir)])
    callbacks += [] if verbose else [console.Console(exp, say)]
    console.header(exp, exp_dir, results, say)
    # ---
    if resume:
        # errored trials stay failed (a NaN comes back the same); unfinished ones go on from their checkpoints
        tuner = tune.Tuner.restore(ray_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
        console.restored(tuner, callbacks, verbose)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(exp),
            tune_config=tune.TuneConfig(
                # the searcher and scheduler each name their metric (tuner.search.study, _scheduler)
                search_alg=search_alg, scheduler=_scheduler(exp),
                num_samples=exp.num_samples, max_concurrent_trials=exp.search.max_concurrent, reuse_actors=True,
                trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=exp.name if exp.storage else "ray", storage_path=exp.storage or str(exp_dir),
                verbose=1 if verbose else 0, callbacks=callbacks,
                # a bounded number per trial; PBT keeps more, since other trials copy from them
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if exp.scheduler.name == "pbt" else 2),
                failure_config=tune.FailureConfig(max_failures=exp.max_failures)),
        )
    t_fit = time.perf_counter()
    grid = tuner.fit()
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
        raise UserError(f"{exp_dir / 'trials.csv'}: no trial finished with {exp.metric}{why}; "
                        f"fix the space (a narrower lr range, a smaller batch_size, ...) and search again")
    say(f"best trial {best['trial_id']}: {exp.metric} = {best['metrics'][exp.metric]:.4f}")
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
