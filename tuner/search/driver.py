"""The search driver: an `Experiment` -> a Ray Tune run (searcher, scheduler, resources, callbacks) -> the
results tables. The pipeline around it (checks, lock, plots, retrain, comparison) is `commands.run_search`."""
from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd
import yaml
from ray.tune import Stopper

from tuner import interrupt
from tuner.atomic import writing
from tuner.errors import UserError
from tuner.families import get_family
from tuner.metrics import epoch_of
from tuner.rundir import RunDir, clear, replace
from tuner.search.cluster import (check_address, check_cluster_fits, check_storage, fit_resources, init_ray,
                                  remove_experiment)
from tuner.search import adapters, records
from tuner.search.domains import param_space
# ClipToSpace: a search saved by an older tuner names it here, in the PBT scheduler its tuner.pkl holds
from tuner.search.schedulers import SCHEDULERS, ClipToSpace, build_scheduler  # noqa: F401
from tuner.settings import cache_dir
from tuner.spaces import Experiment, resolved_yaml


# --------------------------------------------------------------------------- Ray
def _flatten(d: object, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    return {key: v for k, d2 in d.items() for key, v in _flatten(d2, f"{prefix}.{k}" if prefix else str(k)).items()}


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
    chosen = storage or exp.storage
    return check_storage(chosen) if chosen else None


@contextlib.contextmanager
def _signals_stop_tune():
    """Ctrl-C or SIGTERM during fit(): let Tune stop and save its state; tuner.interrupt raises it after.

    Tune's own SIGINT handler ends fit() as if the search were over; the result looks finished. So tuner
    keeps SIGINT (TUNE_DISABLE_SIGINT_HANDLER) and passes the first signal on as SIGUSR1, which Tune always
    handles the same way. A second one stops at once.
    """
    import signal

    def to_tune() -> bool:
        if not callable(signal.getsignal(signal.SIGUSR1)):  # Tune does not listen yet
            return False
        signal.raise_signal(signal.SIGUSR1)
        return True

    old_usr1 = signal.getsignal(signal.SIGUSR1)
    old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        with interrupt.forwarding(to_tune):
            yield
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, old_usr1)
        if old_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_env


def _resources(exp: Experiment) -> dict:
    import ray

    if not exp.resources.auto:
        return {"cpu": exp.resources.cpu, "gpu": exp.resources.gpu}
    return fit_resources(ray.cluster_resources(), exp.search.max_concurrent)


# --------------------------------------------------------------------------- storage
def _trial_dirname(trial) -> str:
    # short and stable: the trial id alone (Ray's default packs every parameter into the name)
    return f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------- the run
class SearchOutcome(NamedTuple):
    """What `run` hands the pipeline: the prepared data (the retrain reuses it), best.yaml's content (None when
    no trial finished) and the failed trials' rows of trials.csv."""

    data: Any
    best: dict | None
    failed: pd.DataFrame


def run(exp: Experiment, results: Path, exp_dir: Path, *, address: str | None = None, resume: bool = False,
        dashboard: bool = True, storage: str | None = None, say: Callable[[str], None] = print,
        retry_failed: bool = False, verbose: bool = False, smoke: bool = False,
        callbacks: Sequence = ()) -> SearchOutcome:
    """The search itself, in `exp_dir` (checked and locked by the caller, `commands.run_search`), in phases:
    where it runs, the data, Ray and the trainable, the watchers, Tune's run, the tables."""
    run_dir, ray_path = _locate(exp, exp_dir, address, storage, resume)
    t0 = time.perf_counter()
    # on one machine the trials map the cache's files (the object store gets their paths); trials on a
    # cluster's other machines may not see this cache, so there the pixels go through the object store
    on_one_machine = not address and not os.environ.get("RAY_ADDRESS")
    data = _data(exp, on_one_machine, say)
    if not resume and exp.storage:  # refused before Ray starts, removed once nothing else can refuse
        remove_experiment(exp.storage, exp.name, check_only=True)
    if on_one_machine:
        _warm_up(exp, data, say)
    init_ray(address, dashboard, say, verbose)
    resources = _resources(exp)
    check_cluster_fits(resources)  # a refusal here, as one for the data or Ray's start, leaves the folder as it was
    _start_folder(exp, run_dir, data, resume, smoke)
    trainable = _trainable(exp, data, run_dir, ray_path, resume, resources)
    live_results, callbacks = _watchers(exp, exp_dir, results, list(callbacks), verbose, say)
    tuner = _tuner(exp, exp_dir, ray_path, trainable, callbacks, resume, retry_failed, verbose, say)
    interrupt.signal_for_tests("tuner")
    from tuner.search import fused

    adapters.skip_callback_usage_tag()  # Ray's tag of them imports mlflow and wandb: a second a search
    adapters.whole_file_uploads()  # a kill mid-snapshot leaves the old file or the new one, never half
    t_fit = time.perf_counter()
    with _signals_stop_tune():
        grid = tuner.fit()
    fit_s = time.perf_counter() - t_fit
    records.record_run(run_dir, fused.configurations(grid) if exp.search.fuse else len(grid), fit_s, t_fit - t0, data)
    # after a Ctrl-C or SIGTERM Tune saved its state and ended fit() as if done: nothing to retrain here
    interrupt.raise_received()
    n, best = records.tables(exp, grid, exp_dir, live_results)
    say(f"search: {n} trials in {fit_s:.1f} s (data and Ray start-up {t_fit - t0:.1f} s)")
    from tuner.search import study

    study.reconcile(exp, exp_dir, say)  # the study ends equal to the tables, whatever faults came between
    return SearchOutcome(data, best, records.failures(run_dir, n, say))


def _locate(exp: Experiment, exp_dir: Path, address: str | None, storage: str | None,
            resume: bool) -> tuple[RunDir, str]:
    """Where Ray's folder is (trial checkpoints, experiment state): <results>/<name>/ray, or <storage>/<name>
    when the trials run on other machines and need a place every node reaches; a --resume checked."""
    if address:
        check_address(address)
    run_dir = RunDir(exp_dir)
    exp.storage = resolve_storage(exp, exp_dir, storage, resume)
    ray_path = f"{exp.storage}/{exp.name}" if exp.storage else str(run_dir.ray)
    interrupt.note_resumable(lambda: _saved(exp, ray_path))  # what an interrupted run's hint offers
    if resume and not _saved(exp, ray_path):
        raise UserError(f"--resume: nothing to resume in {ray_path}; run without --resume to start "
                        f"experiment {exp.name!r}")
    if resume:
        _check_same_space(exp, exp_dir)  # never overwrites the saved space: it is the one being continued
        adapters.check_state_readable(ray_path, exp.name)
    return run_dir, ray_path


def _data(exp: Experiment, by_path: bool, say: Callable[[str], None]):
    """The data first: a data set that is missing or unreadable stops the search before anything is removed."""
    from tuner.data import prepare

    t0 = time.perf_counter()
    interrupt.signal_for_tests("prepare")
    data = prepare(exp.dataset, cache_dir=cache_dir(), by_path=by_path)
    say(f"data: {data.name}, {len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test images "
        f"of {data.x_train.shape[1]}x{data.x_train.shape[2]}x{data.x_train.shape[3]}, "
        f"{len(data.class_names)} classes ({time.perf_counter() - t0:.1f} s{_decoded(data.stats)})")
    return data


def _start_folder(exp: Experiment, run_dir: RunDir, data, resume: bool, smoke: bool) -> None:
    """Once nothing can refuse the search before Tune's run: a new search empties its folder and writes its
    space and run.json; every run writes the split."""
    if not resume and exp.storage:  # it may refuse, and then nothing is removed
        remove_experiment(exp.storage, exp.name)
    if not resume:
        clear(run_dir.path)  # a new search of the same name replaces the old one (checked: commands.check_can_start)
        replace(run_dir.space, resolved_yaml(exp))
        # a --smoke run says so, so that a later search may replace it unasked (RunDir.was_smoke)
        run_dir.write_json(run_dir.run_json, {"smoke": smoke, "runs": 0, "search_s": 0.0})
    with writing(run_dir.split) as tmp:
        indices: dict[str, Any] = data.indices
        np.savez(tmp, **indices)


def _trainable(exp: Experiment, data, run_dir: RunDir, ray_path: str, resume: bool, resources: dict):
    """What Ray runs per trial: `run_trial` with the data and the trial spec, on the trial's resources; with
    search.fuse, a group of configurations per Ray trial (tuner.search.fused)."""
    from ray import tune

    from tuner.search.trainable import TrialSpec, run_trial

    spec = TrialSpec(family=get_family(exp.family), max_epochs=exp.scheduler.max_epochs, augment=exp.dataset.augment,
                     cpus=resources["cpu"], gpus=resources["gpu"], cache_dir=str(cache_dir()),
                     metric=exp.metrics[0], mode=exp.modes[0], objectives=tuple(exp.metrics[1:]),
                     run_id=uuid.uuid4().hex, trials_root=ray_path)
    if exp.search.fuse:
        from tuner.search import fused

        past = (rung_scores(exp, run_dir), EndedTrials.of(run_dir).ended) if resume else ({}, {})
        return fused.trainable(exp, data, spec, resources, *past)
    # the arrays go to the object store once; every trial on a node maps the same copy
    return tune.with_resources(tune.with_parameters(run_trial, data=data, spec=spec), resources)


def _watchers(exp: Experiment, exp_dir: Path, results: Path, extra: list, verbose: bool,
              say: Callable[[str], None]) -> tuple[Any, list]:
    """The callbacks that watch the search: the live tables, the study recorder (after the tables: it records
    their rows), the caller's (tracking: MLflow, W&B), the console; Ray's own output with --verbose."""
    from tuner.search import console, live, searchers, study
    from tuner.search.trainable import final_failures_callback

    # Ray snapshots the experiment (trial states, the searcher) every 10 s by default; a driver killed
    # between two snapshots loses what happened since. The snapshot is small, so take it every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    console.quiet_ray(verbose)
    live_results = live.LiveResults(exp, exp_dir)
    recorder = [] if searchers.uses_optuna(exp) else [study.StudyRecorder(exp, exp_dir, live_results)]
    callbacks = [live_results] + recorder + extra
    callbacks += [] if verbose else [console.Console(exp, say)]
    callbacks += [final_failures_callback()] if exp.max_failures != 0 else []
    if exp.search.fuse:
        from tuner.search import fused

        callbacks = fused.callbacks(callbacks, live_results)
    console.header(exp, exp_dir, results, say)
    return live_results, callbacks + [adapters.HeaderKeepingCSVLogger()]  # Ray's logger of progress.csv, last


def _tuner(exp: Experiment, exp_dir: Path, ray_path: str, trainable, callbacks: list, resume: bool,
           retry_failed: bool, verbose: bool, say: Callable[[str], None]):
    if not resume:
        return _new_tuner(exp, exp_dir, trainable, callbacks, verbose)
    from ray import tune

    from tuner.search import study

    study.repair(exp, exp_dir, say)  # a damaged journal is rebuilt from the tables before anything reads it
    run_dir = RunDir(exp_dir)
    before = len(run_dir.read_trials()) if run_dir.trials.is_file() else 0
    say(f"resume: {before} trial{'s' * (before != 1)} in trials.csv kept; unfinished ones go on from their last "
        f"checkpoints")
    for path in adapters.restore_deleted_checkpoints(ray_path):  # a kill between Ray's delete and its snapshot
        say(f"resume: {Path(path).parent.name}/{Path(path).name}, deleted by Ray after its last snapshot, "
            f"restored from the next one")
    # errored trials stay failed (a NaN comes back the same) unless --retry-failed, which reruns them
    # from their last checkpoint; unfinished ones go on from their checkpoints
    tuner = tune.Tuner.restore(ray_path, trainable=trainable, resume_unfinished=True, resume_errored=retry_failed)
    _continue_here(tuner, exp, exp_dir, ray_path, callbacks, verbose, say)
    return tuner


def _saved(exp: Experiment, ray_path: str) -> bool:
    """Has Ray saved this experiment, so --resume can go on? Its tuner.pkl (written when the Tuner is made) and
    its experiment state (at the first pass of Tune's loop): a search stopped between the two was resumed as
    one of a single trial (adapters.experiment_state_saved); it is now nothing to resume, and the same command
    without --resume starts it again (rundir.check_replaceable lets it)."""
    from ray import tune

    return bool((exp.storage or Path(ray_path).is_dir()) and tune.Tuner.can_restore(ray_path)
                and adapters.experiment_state_saved(ray_path))


def _new_tuner(exp: Experiment, exp_dir: Path, trainable, callbacks: list, verbose: bool):
    from ray import tune

    budget = exp.search.time_budget
    assert not isinstance(budget, str)  # SearchConfig.parse made a duration seconds

    from tuner.search import searchers

    if exp.search.fuse:  # groups of configurations (tuner.search.fused): its searcher, the rungs in the groups
        from ray.tune.schedulers import FIFOScheduler

        from tuner.search import fused

        search_alg, samples = fused.build(exp, exp_dir)
        space, scheduler = {}, FIFOScheduler()
    else:
        search_alg, constants_only = searchers.build(exp, exp_dir)
        space, scheduler, samples = param_space(exp, constants_only), build_scheduler(exp), searchers.num_samples(exp)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            # the searcher and scheduler each name their metric (tuner.search.searchers, .schedulers); the
            # search algorithm keeps to search.max_concurrent itself (searchers.build)
            search_alg=search_alg, scheduler=scheduler, num_samples=samples,
            reuse_actors=True, trial_dirname_creator=_trial_dirname, time_budget_s=budget),
        run_config=tune.RunConfig(
            name=exp.name if exp.storage else "ray", storage_path=exp.storage or str(exp_dir),
            verbose=1 if verbose else 0, callbacks=callbacks,
            # 2 per trial; PBT keeps all: Ray's PBT can hand a trial a checkpoint of the trial it copies
            # that the copied one has pruned since (seen here with 4 kept: "Could not recover from
            # checkpoint as it does not exist on storage anymore", ray-project/ray#8441)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if SCHEDULERS[exp.scheduler.name].mutates else 2),
            failure_config=tune.FailureConfig(max_failures=exp.max_failures)),
    )


def _continue_here(tuner, exp: Experiment, exp_dir: Path, ray_path: str, callbacks: list, verbose: bool,
                   say: Callable[[str], None]) -> None:
    """A restored Tuner set to go on in this folder as an uninterrupted search would: this run's callbacks
    and verbosity; new trials and the study in the folder being resumed, not the one Ray's pickled state
    names (a copied or moved results folder); ASHA's rungs as they were (Ray does not save the scheduler);
    trials the tables say ended, which a SIGKILLed driver's older snapshot may still count as running,
    stopped where they ended."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from tuner.search import study

    tune_config, run_config = adapters.restored_configs(tuner)
    if run_config is not None:  # through a ray:// client the first run's stay
        run_config.callbacks, run_config.verbose = callbacks, 1 if verbose else 0
        run_config.stop = EndedTrials.of(RunDir(exp_dir))
    if tune_config is None:
        return
    if isinstance(tune_config.search_alg, adapters.FolderSearchGenerator | adapters.FolderVariantGenerator) \
            and "://" not in ray_path:  # a remote storage is the same place from any copy of the results
        tune_config.search_alg.home = (str(Path(ray_path).parent), Path(ray_path).name)
    searcher = tune_config.search_alg
    while hasattr(searcher, "searcher"):  # SearchGenerator -> ConcurrencyLimiter -> StudySearch
        searcher = searcher.searcher
    if isinstance(searcher, study.StudySearch):
        if "_rule" not in vars(searcher):  # pickled by a tuner before the study was reopened on resume
            raise UserError(f"--resume: {exp_dir} was interrupted by an older version of tuner, whose saved "
                            f"searcher this one cannot continue; resume it with that version, or search again "
                            f"with --overwrite")
        searcher.reopen(study.storage(exp_dir))
    if isinstance(tune_config.scheduler, AsyncHyperBandScheduler):
        n = adapters.restore_asha(tune_config.scheduler, rung_scores(exp, RunDir(exp_dir)))
        if n:
            say(f"asha: {n} rung scores restored from epochs.csv")


def rung_scores(exp: Experiment, run_dir: RunDir) -> dict[str, dict[int, float]]:
    """Each trial's score at each epoch in epochs.csv as the trial reported it to the scheduler: the running
    best of the first metric (`best_<metric>`; a NaN epoch never becomes the best)."""
    from tuner.tables import read_epochs

    epochs = read_epochs(run_dir)
    metric = exp.metrics[0]
    if metric not in epochs or epochs.empty:
        return {}
    out: dict[str, dict[int, float]] = {}
    for tid, rows in epochs.sort_values("epoch").groupby(epochs["trial_id"].astype(str)):
        best = None
        for epoch, v in zip(rows["epoch"], rows[metric]):
            if v == v and (best is None or (v > best if exp.modes[0] == "max" else v < best)):
                best = float(v)
            out.setdefault(tid, {})[int(epoch)] = best if best is not None else float(v)
    return out


class EndedTrials(Stopper):
    """The stopper of a resumed run (`RunConfig.stop`): a trial trials.csv records as ended stops at the
    epoch it ended at, should Ray run it again."""

    def __init__(self, ended: dict[str, int]):
        self.ended = ended

    @classmethod
    def of(cls, run_dir: RunDir) -> "EndedTrials":
        if not run_dir.trials.is_file():
            return cls({})
        trials = run_dir.read_trials()
        done = (trials[(trials["status"] == "TERMINATED") & (trials["epochs"] > 0)] if "epochs" in trials
                else trials[0:0])
        return cls({str(t): int(e) for t, e in zip(done["trial_id"], done["epochs"])})

    def __call__(self, trial_id: str, result: dict) -> bool:
        end = self.ended.get(trial_id)
        return end is not None and epoch_of(result) >= end

    def stop_all(self) -> bool:
        return False


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
    rate = stats.decoded / max(stats.decode_s, 1e-9)
    return f"; decoded {stats.decoded} images in {stats.decode_s:.1f} s, {rate:.0f}/s"
