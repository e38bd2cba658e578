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

EPOCH_COLUMNS = ["trial_id", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time_s"]


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


def init_ray(address: str | None, dashboard: bool, say: Callable[[str], None] = print) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"ignore_reinit_error": True, "logging_level": logging.WARNING, "log_to_driver": True}
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
        say(f"Ray dashboard: http://{url}  (log in with the token printed by `ray get-auth-token`; "
            f"it is stored in ~/.ray/auth_token)")


def _scheduler(exp: Experiment):
    from ray.tune.schedulers import (ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule,
                                     PopulationBasedTraining)

    s = exp.scheduler
    if not get_family(exp.family).iterative or s.name == "fifo":
        return FIFOScheduler()
    # several objectives: the Tuner gets no single metric, so ASHA is told to stop trials by the first one
    by_first = {"metric": exp.metrics[0], "mode": exp.modes[0]} if exp.multi else {}
    if s.name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=s.max_epochs, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, **by_first)
    if s.name == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=s.max_epochs,
                                  reduction_factor=s.reduction_factor)
    if s.name == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=s.grace_period,
                                  min_samples_required=3)
    mutations = {k: d.to_tune() for k, d in exp.searched.items()
                 if k in ("lr", "momentum", "dropout", "weight_decay", "label_smoothing")}
    if not mutations:
        raise UserError(f"{exp.path}: scheduler pbt needs at least one of lr, momentum, dropout, weight_decay "
                        f"or label_smoothing in space:")
    return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                                   hyperparam_mutations=mutations, synch=False)


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
        say: Callable[[str], None] = print, retry_failed: bool = False) -> Path:
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

    init_ray(address, dashboard, say)
    resources = _resources(exp)
    spec = TrialSpec(family=get_family(exp.family), max_epochs=exp.scheduler.max_epochs, augment=exp.dataset.augment,
                     cpus=resources["cpu"], gpus=resources["gpu"], cache_dir=str(cache_dir()))
    # the arrays go to the object store once; every trial on a node maps the same copy
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, spec=spec), resources)
    # Ray snapshots the experiment (trial states, the searcher) every 10 s by default; a driver killed
    # between two snapshots loses what happened since. The snapshot is small, so take it every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if resume:
        # errored trials stay failed (a NaN comes back the same) unless --retry-failed, which reruns them
        # from their last checkpoint; unfinished ones go on from their checkpoints
        tuner = tune.Tuner.restore(ray_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=retry_failed)
    else:
        from tuner import searchers

        search_alg, constants_only = searchers.build(exp)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(exp, constants_only),
            tune_config=tune.TuneConfig(
                # several objectives: no single metric for Ray (the searcher and ASHA carry their own)
                metric=None if exp.multi else exp.metric, mode=None if exp.multi else exp.mode,
                search_alg=search_alg, scheduler=_scheduler(exp),
                num_samples=searchers.num_samples(exp), max_concurrent_trials=exp.search.max_concurrent,
                reuse_actors=True, trial_dirname_creator=_trial_dirname, time_budget_s=exp.search.time_budget),
            run_config=tune.RunConfig(
                name=exp.name if exp.storage else "ray", storage_path=exp.storage or str(exp_dir), verbose=1,
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


MEASURED = ["num_params", "latency_ms", "latency_ms_b64", "train_time_s"]  # once per trial, not per epoch


def write_results(exp: Experiment, grid, exp_dir: Path) -> dict | None:
    """trials.csv, epochs.csv and best.yaml from Ray's ResultGrid (and pareto.csv for several objectives).

    A trial's objectives are read at its best epoch by the first metric. A trial outside `constraints` is
    marked infeasible and is never the best; a conditional branch's parameters a trial did not draw stay empty.
    """
    from tuner.searchers import constraint_values, pareto_front

    trials, epochs = [], []
    searched = exp.param_names
    constants = exp.constants
    primary, mode = exp.metrics[0], exp.modes[0]
    extra = [m for m in exp.metrics + list(exp.constraints) if m not in ("val_accuracy", "val_loss") + tuple(MEASURED)]
    for result in grid:
        df = result.metrics_dataframe
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_")
        cfg = result.config or {}
        row = {"trial_id": trial_id, "status": "ERROR" if result.error else "TERMINATED",
               "error": _one_line(result.error) if result.error else ""}
        for k in searched + [k for k in constants if k not in searched]:
            v = cfg.get(k, constants.get(k))
            row[k] = v if not isinstance(v, (list, dict)) else yaml.safe_dump(v, default_flow_style=True).strip()
        if df is not None and len(df) and primary in df:
            df = df.copy()
            df["trial_id"] = trial_id
            if "epoch" not in df:
                df["epoch"] = df["training_iteration"]
            df["time_s"] = df.get("time_this_iter_s", np.nan)
            for col in EPOCH_COLUMNS:
                if col not in df:
                    df[col] = np.nan
            epochs.append(df[EPOCH_COLUMNS])
            i = df[primary].idxmax() if mode == "max" else df[primary].idxmin()
            row.update(epochs=int(df["epoch"].max()), val_accuracy=float(df.loc[i, "val_accuracy"]),
                       val_loss=float(df.loc[i, "val_loss"]), best_epoch=int(df.loc[i, "epoch"]),
                       time_s=float(df["time_total_s"].max()) if "time_total_s" in df else np.nan)
            for m in MEASURED + extra:
                row[m] = float(df.loc[i, m]) if m in df and pd.notna(df.loc[i, m]) else np.nan
            if exp.constraints:
                row["feasible"] = all(c <= 0 for c in constraint_values(row, exp.constraints))
            # a failed trial is never the best: its retrain would fail the same way; nor is an infeasible one
            if not result.error and row.get("feasible", True):
                row["_metric"] = float(df.loc[i, primary])
                row["_config"] = cfg
        else:
            row.update(epochs=0, val_accuracy=np.nan, val_loss=np.nan, best_epoch=np.nan, time_s=np.nan)
            row.update({m: np.nan for m in MEASURED + extra})
            if exp.constraints:
                row["feasible"] = False
        trials.append(row)
    table = pd.DataFrame(trials)
    public = table.drop(columns=[c for c in table.columns if c.startswith("_")])
    public.to_csv(exp_dir / "trials.csv", index=False)
    (pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame(columns=EPOCH_COLUMNS)).to_csv(
        exp_dir / "epochs.csv", index=False)
    ok = table[table["_metric"].notna()] if "_metric" in table else table.iloc[0:0]
    if exp.multi:
        # the non-dominated feasible trials; the retrain takes the one best on the first objective
        ok = pareto_front(ok, exp.metrics, exp.modes)
        public.loc[ok.index].to_csv(exp_dir / "pareto.csv", index=False)
    if ok.empty:
        return None
    best_row = ok.loc[ok["_metric"].idxmax() if mode == "max" else ok["_metric"].idxmin()]
    best = best_entry(exp, best_row, {k: _plain(v) for k, v in best_row["_config"].items()})
    (exp_dir / "best.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
    return best


def best_entry(exp: Experiment, row, config: dict) -> dict:
    """best.yaml's content for one trials.csv row and its config."""
    metrics = {"epoch": int(row["best_epoch"]), "val_accuracy": float(row["val_accuracy"]),
               "val_loss": float(row["val_loss"])}
    for m in exp.metrics + MEASURED:
        if m in row and pd.notna(row[m]):
            metrics[m] = _plain(float(row[m]))
    return {"experiment": exp.name, "family": exp.family, "trial_id": str(row["trial_id"]),
            "metric": exp.metric, "mode": exp.mode, "config": config, "metrics": metrics,
            "epochs_run": int(row["epochs"])}


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
