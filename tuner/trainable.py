"""The one function that knows about Ray: a family's learner, driven one epoch at a time, reported to Tune.

Everything else (families, engine, data) is plain PyTorch and runs the same without Ray.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch

from tuner.engine import pick_device, set_threads
from tuner.families import get_family


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of an experiment shares besides its config (sent once, with the data)."""

    family: str
    max_epochs: int
    augment: object
    cpus: float
    gpus: float
    cache_dir: str | None = None


def run_trial(config: dict, data=None, spec: TrialSpec | None = None) -> None:
    from ray import tune

    set_threads(spec.cpus)
    family = get_family(spec.family)
    kwargs = {"augment": spec.augment} if family.iterative else {"cache_dir": spec.cache_dir}
    learner = family.learner(config, data.info, device=pick_device(spec.gpus), **kwargs)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            learner.load_state_dict(torch.load(os.path.join(d, "state.pt"), weights_only=True))
    for metrics in learner.fit(data, spec.max_epochs):
        if not family.iterative:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            torch.save(learner.state_dict(), os.path.join(d, "state.pt"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
