"""The search driver: an `Experiment` -> a Ray Tune run (searcher, scheduler, resources, callbacks) -> the
results tables. The pipeline around it (checks, lock, plots, retrain, comparison) is `commands.run_search`."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
import os
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

from tuner.errors import UserError
from tuner.families import get_family
from tuner.rundir import CorruptResult, RunDir, clear, read_result, replace
from tuner.search.cluster import (check_address, check_cluster_fits, check_storage, fit_resources, init_ray,
                                  remove_experiment)
from tuner.search.domains import to_tune
from tuner.settings import cache_dir
from tuner.spaces import Experiment, resolved_yaml


# --------------------------------------------------------------------------- Ray
def _flatten(d: object, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _check_same_space(exp: Experiment, exp_dir: Path) -> None:
    """--resume continues the search it saved: a changed space would retrain something that was never searched."""
    saved = _flatten(RunDir(exp_dir).read_space())
    now = _flatten(yaml.safe_load(resolved_yaml(exp)))
    differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in differ[:5])
        more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
        raise UserError(f"--resume: the space differs from the one {exp_dir} was searched with: {shown}{more}; "
                        f"resume with the same file and --set options, or search under another --name")


def resolve_storage(exp: Experiment, exp_dir: Path, storage: str | None, resume: bool) -> str | None:
    """Where Ray keeps this experiment: --storage, else the space's `storage`, else (on --resume) the first
    run's; checked (a local folder comes back absolute). None: `<results>/<name>/ray`."""
    run_dir = RunDir(exp_dir)
    if resume and not (storage or exp.storage) and run_dir.is_experiment():
        storage = run_dir.read_space().get("storage")  # as the first run
    return check_storage(storage or exp.storage) if (storage or exp.storage) else None


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

    from tuner.metrics import best_key

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
    perturbable = get_family(exp.family).pbt_params  # Param(pbt=True): the family says which
    mutations = {k: to_tune(d) for k, d in exp.searched.items() if k in perturbable}
    if not mutations:
        raise UserError(f"{exp.path}: scheduler pbt needs at least one of {', '.join(perturbable)} in space:")
    bounds = {k: d.args for k, d in exp.searched.items() if k in mutations and d.kind in NUMERIC}
    return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                                   hyperparam_mutations=mutations, synch=False, metric=exp.metric, mode=exp.mode,
                                   custom_explore_fn=ClipToSpace(bounds))


NUMERIC = ("uniform", "loguniform", "int", "logint")


@dataclass
class ClipToSpace:
    """PBT's explore step, kept inside the space: Ray multiplies a value by 0.8 or 1.2 with no bounds, so a
    momentum drawn from [0.5, 0.95] became 1.04 and that trial diverged (val_accuracy 0.97 -> 0.29)."""

    bounds: dict[str, tuple]

    def __call__(self, config: dict) -> dict:
        for k, (lo, hi) in self.bounds.items():
            if k in config:
                config[k] = type(lo)(min(max(config[k], lo), hi))
        return config


def _resources(exp: Experiment) -> dict:
    import ray

    if not exp.resources.auto:
        return {"cpu": exp.resources.cpu, "gpu": exp.resources.gpu}
    return fit_resources(ray.cluster_resources(), exp.search.max_concurrent)


# --------------------------------------------------------------------------- storage
def _trial_dirname(trial) -> str:
    # short and stable: the trial id alone (Ray's default packs every parameter into the name)
    return f"trial_{trial.trial_id}"


def param_space(exp: Experiment, constants_only: bool = False) -> dict:
    if constants_only:  # the searcher draws every searched value itself (Optuna define-by-run, a branching grid)
        return dict(exp.constants)
    grid = exp.search.grid_points if exp.search.algorithm == "grid" else 0
    space = {k: to_tune(d, grid) for k, d in exp.searched.items()}
    space.update(exp.constants)
    return space


# --------------------------------------------------------------------------- the run
def run(exp: Experiment, results: Path, exp_dir: Path, *, address: str | None = None, resume: bool = False,
        dashboard: bool = True, storage: str | None = None, say: Callable[[str], None] = print,
        retry_failed: bool = False, verbose: bool = False) -> tuple:
    """The search itself, in `exp_dir` (checked and locked by the caller, `commands.run_search`): prepare the
    data, start Ray, run Tune, write the tables. Returns (data, best, failed): the prepared data (the retrain
    reuses it), best.yaml's content or None when no trial finished, the failed trials' rows."""
    from ray import tune

    from tuner.data import prepare
    from tuner.search.trainable import TrialSpec, final_failures_callback, run_trial

    if address:
        check_address(address)
    # Ray's folder (trial checkpoints, experiment state) is <results>/<name>/ray, or <storage>/<name> when
    # the trials run on other machines and need a place every node reaches
    run_dir = RunDir(exp_dir)
    exp.storage = resolve_storage(exp, exp_dir, storage, resume)
    ray_path = f"{exp.storage}/{exp.name}" if exp.storage else str(run_dir.ray)
    if resume and not ((exp.storage or Path(ray_path).is_dir()) and tune.Tuner.can_restore(ray_path)):
        raise UserError(f"--resume: nothing to resume in {ray_path}; run without --resume to start "
                        f"experiment {exp.name!r}")
    if not resume and exp.storage:  # first: it may refuse, and then nothing is removed
        remove_experiment(exp.storage, exp.name)
    if not resume:
        clear(exp_dir)  # a new search of the same name replaces the old one
    if resume:
        _check_same_space(exp, exp_dir)  # never overwrites the saved space: it is the one being continued
    else:
        replace(run_dir.space, resolved_yaml(exp))

    t0 = time.perf_counter()
    # on one machine the trials map the cache's files (the object store gets their paths); trials on a
    # cluster's other machines may not see this cache, so there the pixels go through the object store
    on_one_machine = not address and not os.environ.get("RAY_ADDRESS")
    data = prepare(exp.dataset, cache_dir=cache_dir(), by_path=on_one_machine)
    np.savez(run_dir.split, **data.indices)
    say(f"data: {data.name}, {len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test images "
        f"of {data.x_train.shape[1]}x{data.x_train.shape[2]}x{data.x_train.shape[3]}, "
        f"{len(data.class_names)} classes ({time.perf_counter() - t0:.1f} s{_decoded(data.stats)})")

    if on_one_machine:
        _warm_up(exp, data, say)
    init_ray(address, dashboard, say, verbose)
    resources = _resources(exp)
    check_cluster_fits(resources)
    spec = TrialSpec(family=get_family(exp.family), max_epochs=exp.scheduler.max_epochs, augment=exp.dataset.augment,
                     cpus=resources["cpu"], gpus=resources["gpu"], cache_dir=str(cache_dir()),
                     metric=exp.metrics[0], mode=exp.modes[0], objectives=tuple(exp.metrics[1:]),
                     run_id=uuid.uuid4().hex)
    # the arrays go to the object store once; every trial on a node maps the same copy
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, spec=spec), resources)
    # Ray snapshots the experiment (trial states, the searcher) every 10 s by default; a driver killed
    # between two snapshots loses what happened since. The snapshot is small, so take it every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # --- watching the search (tuner.search): console, live tables, the study; Ray's own output with --verbose
    from tuner.search import console, live, searchers, study

    console.quiet_ray(verbose)
    search_alg, constants_only = searchers.build(exp, exp_dir)
    live_results = live.LiveResults(exp, exp_dir)
    callbacks = [live_results] + ([] if isinstance(search_alg, study.StudySearch) else
                                  [study.StudyRecorder(exp, exp_dir)])
    callbacks += [] if verbose else [console.Console(exp, say)]
    callbacks += [final_failures_callback()] if exp.max_failures != 0 else []
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
                # the searcher and scheduler each name their metric (tuner.search.searchers, _scheduler)
                search_alg=search_alg, scheduler=_scheduler(exp),
                num_samples=searchers.num_samples(exp), max_concurrent_trials=exp.search.max_concurrent,
                reuse_actors=True, trial_dirname_creator=_trial_dirname, time_budget_s=exp.search.time_budget),
            run_config=tune.RunConfig(
                name=exp.name if exp.storage else "ray", storage_path=exp.storage or str(exp_dir),
                verbose=1 if verbose else 0, callbacks=callbacks,
                # 2 per trial; PBT keeps all: Ray's PBT can hand a trial a checkpoint of the trial it copies
                # that the copied one has pruned since (seen here with 4 kept: "Could not recover from
                # checkpoint as it does not exist on storage anymore", ray-project/ray#8441)
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None if exp.scheduler.name == "pbt" else 2),
                failure_config=tune.FailureConfig(max_failures=exp.max_failures)),
        )
    t_fit = time.perf_counter()
    with _sigint_stops_tune() as interrupted:
        grid = tuner.fit()
    fit_s = time.perf_counter() - t_fit
    # how long the search itself took, apart from data preparation and Ray start-up (read by benchmarks/),
    # over every run of it: an interrupted one and each --resume add theirs
    before = _search_s_so_far(run_dir) if resume else {"search_s": 0.0, "runs": 0}
    run_dir.write_json(run_dir.run_json, {"trials": len(grid), "search_s": round(before["search_s"] + fit_s, 3),
                                          "prepare_and_start_s": round(t_fit - t0, 3), "runs": before["runs"] + 1,
                                          "prepare_s": round(data.stats.seconds, 3),
                                          "decode_s": round(data.stats.decode_s, 3), "decoded": data.stats.decoded,
                                          "images_bytes": data.stats.nbytes})
    if interrupted():
        # Tune saved its state and ended fit() as if done: nothing here is a finished search to retrain
        raise KeyboardInterrupt
    say(f"search: {len(grid)} trials in {fit_s:.1f} s (data and Ray start-up {t_fit - t0:.1f} s)")
    best = write_results(exp, grid, exp_dir, live_results.results)
    failed = pd.read_csv(run_dir.trials, dtype={"trial_id": str}, keep_default_na=False)
    failed = failed[failed["status"] == "ERROR"]
    if len(failed):
        say(f"{len(failed)} of {len(grid)} trials failed:")
        for _, row in failed.iterrows():
            say(f"  {row['trial_id']}: {row['error']}")
    return data, best, failed


def _warm_up(exp: Experiment, data, say: Callable[[str], None]) -> None:
    """The family's one-off work (embeddings, neighbour tables) here, before Ray starts: on every core, with
    progress on the console, into the caches the trials then read (`Family.warm_up`). On the device the
    trials will use, as the retrain picks it (the embedding cache is kept per device type)."""
    from tuner.engine import pick_device
    from tuner.families import RunContext
    from tuner.families.base import Family

    family = get_family(exp.family)
    if type(family).warm_up is Family.warm_up:
        return  # the family has nothing to prepare
    t0 = time.perf_counter()
    device = pick_device(None if exp.resources.auto else exp.resources.gpu)
    family.warm_up(exp.constants, exp.searched, data, RunContext(device=str(device), cache_dir=str(cache_dir()),
                                                                 progress=True))
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()  # the trials need the GPU's memory; this process keeps only its context
    say(f"warm-up: {exp.family}'s embeddings and tables ready ({time.perf_counter() - t0:.1f} s)")


def _decoded(stats) -> str:
    if not stats.decoded:
        return ""
    return f"; decoded {stats.decoded} images in {stats.decode_s:.1f} s, {stats.decoded / max(stats.decode_s, 1e-9):.0f}/s"


def _search_s_so_far(run_dir: RunDir) -> dict:
    try:
        saved = read_result(run_dir.run_json) if run_dir.run_json.is_file() else {}
    except CorruptResult:  # a broken run.json only loses the earlier runs' seconds
        saved = {}
    return {"search_s": float(saved.get("search_s", 0.0)), "runs": int(saved.get("runs", 1 if saved else 0))}


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
        trial_id = name.removeprefix("trial_") if name.startswith("trial_") else (result.metrics or {}).get("trial_id")
        history = _history(result.metrics_dataframe, (reported or {}).get(trial_id))
        rows.append(trial_row(exp, trial_id, result.config or {}, history, result.error))
    return write_tables(exp, rows, exp_dir)


def _history(saved: pd.DataFrame | None, reported: list[dict] | None) -> pd.DataFrame | None:
    """A trial's epochs, one row per training_iteration: what it reported in this run wins over Ray's file
    (a retried epoch's second result is the one its checkpoint holds)."""
    frames = [f for f in (saved, pd.DataFrame(reported) if reported else None) if f is not None and len(f)]
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    if "training_iteration" not in df:
        return df
    return df.drop_duplicates("training_iteration", keep="last").sort_values("training_iteration",
                                                                           ignore_index=True)
