"""The one function that knows about Ray: a family's learner, driven one epoch at a time, reported to Tune.

Everything else (families, engine, data) is plain PyTorch and runs the same without Ray.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from tuner.engine import gpu_share, pick_device, set_threads
from tuner.errors import TrialFailed, UserError
from tuner.families import Family, RunContext
from tuner.families.measure import size_and_speed
from tuner.metrics import HISTORY

STATE_FILE = "state.pt"
# in the trial's folder on the storage: "<run_id>\n<why>" after a failure a retry would repeat
FAILED_FILE = ".tuner-failed"


def final_failures_callback():
    """With `max_failures: -1` Tune retries every failure forever, a NaN loss too, which fails the same way
    each time. After a failure that tuner itself raised (TrialFailed: NaN, out of memory; UserError: a bad
    value only the trial could see), allow no further one. Tune has already queued one retry when this
    callback runs (it has no hook before that decision), so `run_trial` ends that retry before it trains:
    see FAILED_FILE."""
    from ray.tune import Callback

    class FinalFailures(Callback):
        def on_trial_recover(self, iteration, trials, trial, **info):
            try:
                with open(trial.error_file) as f:
                    last = f.read().rsplit("Failure #", 1)[-1]
            except (OSError, TypeError):
                return
            if "TrialFailed" in last or "UserError" in last:
                trial.max_failures = 0

    return FinalFailures()


def _failure_marker(spec: "TrialSpec", trial_id: str):
    """(file system, path) of the trial's FAILED_FILE in the experiment's own folder on its storage.

    Not `tune.get_context().get_trial_dir()`: Ray gives a fresh actor one folder (the driver staging path)
    and an actor reused from another trial another (the working directory, FunctionTrainable.reset_config),
    so a retry that ran on the other kind of actor found no marker and trained again. The trial's folder
    on the storage (`_trial_dirname` names it) is the same for every attempt, on every node."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(spec.trials_root)
    return fs, f"{root.rstrip('/')}/trial_{trial_id}/{FAILED_FILE}"


def _failed_before(spec: "TrialSpec", trial_id: str) -> str | None:
    """Why this trial failed deterministically earlier in this same search run, or None. A `--resume` is
    another run (another run_id): `--retry-failed` then really retries."""
    import pyarrow

    if not (spec.run_id and spec.trials_root):
        return None
    try:
        fs, path = _failure_marker(spec, trial_id)
        with fs.open_input_stream(path) as f:
            saved_id, _, why = f.read().decode(errors="replace").partition("\n")
    except (OSError, pyarrow.ArrowException):
        return None
    return why if saved_id == spec.run_id else None


def _remember_failure(spec: "TrialSpec", trial_id: str, why: str) -> None:
    import pyarrow

    if not (spec.run_id and spec.trials_root):
        return
    try:
        fs, path = _failure_marker(spec, trial_id)
    except (OSError, pyarrow.ArrowException):
        return
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(f"{spec.run_id}\n{why}".encode())
    except (OSError, pyarrow.ArrowException):  # a full disk: a retry then repeats the failure once, as it
        with contextlib.suppress(OSError, pyarrow.ArrowException):  # would without the file; none half-written
            fs.delete_file(path)


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of an experiment shares besides its config (sent once, with the data)."""

    family: Family  # the object itself travels, so a family registered at run time reaches the workers
    max_epochs: int
    augment: object
    cpus: float
    gpus: float
    cache_dir: str | None = None
    metric: str = "val_accuracy"  # the running best of this one is reported too, as best_<metric>
    mode: str = "max"
    objectives: tuple = ()        # further objectives: reported as best_<m>, their value at metric's best epoch
    run_id: str = ""              # this driver run's id: a deterministic failure is not retried within it
    trials_root: str = ""         # the folder (or URI) holding the trial_<id> folders: Ray's experiment folder


def _resumed(learner) -> tuple[float | None, dict, list[dict]]:
    """Load the trial's checkpoint (after a failure, on --resume, or a PBT exploit) into `learner`; returns the
    best epoch's metric so far, the other objectives at that epoch, and the epochs before (`_epoch_record`s);
    None, {}, [] when there is none to go on."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, {}, []
    with checkpoint.as_directory() as d:
        # weights_only: a checkpoint on shared storage must not be able to run code when loaded
        saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    learner.load_state_dict(learner.adapt_state(saved["learner"], saved.get("hparams")))
    if saved.get("hparams") != learner.hparams():  # a PBT donor's history, not this trial's own
        return None, {}, []
    return saved.get("best"), saved.get("at_best") or {}, list(saved.get(HISTORY) or [])


def _epoch_record(metrics: dict, seconds: float) -> dict:
    """An epoch as the tables read it (tuner.tables.trial_row), in plain values a weights_only load accepts."""
    plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in metrics.items()
             if v is None or isinstance(v, (bool, int, float, str, np.generic))}
    return {**plain, "time_this_iter_s": seconds}


def _with_best(metrics: dict, spec: TrialSpec, best, at_best: dict) -> tuple[float | None, dict]:
    """Add the running best (`best_<metric>`, `best_epoch`, `best_<objective>`) to an epoch's metrics; returns
    the new (best, at_best). A NaN epoch never becomes the best; the other objectives are read at the best."""
    from tuner.metrics import BEST_LOSS, best_key

    pick = max if spec.mode == "max" else min
    value = metrics.get(spec.metric)
    if value is not None and value == value and (best is None or pick(best, value) != best):
        best = value
        at_best = {**{m: metrics.get(m) for m in spec.objectives}, "epoch": metrics.get("epoch"),
                   "val_loss": metrics.get("val_loss")}
    metrics[best_key(spec.metric)] = best if best is not None else value
    # kept in the checkpoint with `best`, so the console names the right epoch after a --resume too
    metrics["best_epoch"] = at_best.get("epoch") or metrics.get("epoch")
    metrics[BEST_LOSS] = at_best.get("val_loss", metrics.get("val_loss"))
    metrics.update({best_key(m): at_best.get(m, metrics.get(m)) for m in spec.objectives})
    return best, at_best


def _train(learner, data, spec: TrialSpec, node: str) -> None:
    """The trial's epochs, each reported to Tune with its running best, and with a checkpoint when the learner
    trains in epochs; the model's size and speed are measured once, at the first report."""
    from ray import tune

    best, at_best, history = _resumed(learner)
    # the epochs the checkpoint holds go with the first report after a restore: a driver SIGKILLed after the
    # checkpoint but before Ray's snapshot (or tuner's tables) took in their results would leave holes
    restored = list(history)
    t_start = t_epoch = time.perf_counter()
    measured: dict = {}
    for metrics in learner.fit(data, spec.max_epochs):
        if not measured:
            measured = size_and_speed(learner, data.x_val)
        metrics = {**metrics, **measured, "train_time_s": time.perf_counter() - t_start, "node_id": node}
        best, at_best = _with_best(metrics, spec, best, at_best)
        history.append(_epoch_record(metrics, time.perf_counter() - t_epoch))
        t_epoch = time.perf_counter()
        if not learner.checkpoint_every_epoch:
            tune.report(metrics)
            continue
        if restored:
            metrics[HISTORY], restored = restored, []
        with tempfile.TemporaryDirectory() as d:
            torch.save({"learner": learner.state_dict(), "hparams": learner.hparams(), "best": best,
                        "at_best": at_best, HISTORY: history},
                       os.path.join(d, STATE_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    if restored and learner.checkpoint_every_epoch:
        # restored from its last epoch's checkpoint (a driver killed before it heard that result): nothing was
        # left to train, so the epochs go with one report of that last epoch again, or the trial would end
        # with the epochs Ray had recorded, short of those its checkpoint and its best hold
        tune.report({**restored[-1], HISTORY: restored})


def run_trial(config: dict, data=None, spec: TrialSpec | None = None) -> None:
    import ray
    from ray import tune

    assert spec is not None, "run_trial takes its TrialSpec from tune.with_parameters (driver._trainable)"

    # Ray's worker logs every saved checkpoint at INFO: one line per trial and epoch buries the progress table
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    set_threads(spec.cpus)
    ctx = RunContext(device=str(pick_device(spec.gpus)), cache_dir=spec.cache_dir, augment=spec.augment,
                     gpu_share=gpu_share(spec.gpus))
    node = ray.get_runtime_context().get_node_id()  # which machine ran it (several nodes may share one IP)
    trial_id = tune.get_context().get_trial_id()
    why = _failed_before(spec, trial_id)
    if why is not None:  # Tune's one queued retry of a NaN / OOM / bad value: it would fail the same way
        raise TrialFailed(why)
    try:
        learner = spec.family.learner(config, data.info, ctx)
        _train(learner, data, spec, node)
    except torch.cuda.OutOfMemoryError:
        # give the memory back at once: other trials may share this GPU (fractional resources.gpu)
        learner = None
        gc.collect()
        torch.cuda.empty_cache()
        why = (f"CUDA out of memory (batch_size={config.get('batch_size')}, GPU share {spec.gpus}): "
               f"lower batch_size or raise resources.gpu so fewer trials share a GPU")
        _remember_failure(spec, trial_id, why)
        raise TrialFailed(why) from None
    except (TrialFailed, UserError) as exc:
        _remember_failure(spec, trial_id, str(exc))
        raise

