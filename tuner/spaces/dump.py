"""The space as run, written back (space.yaml, `tuner validate`), and its seconds-long --smoke version."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import yaml

from tuner.spaces.distributions import Distribution, node_yaml
from tuner.spaces.experiment import Experiment
from tuner.spaces.yamlfile import SpaceDumper


def smoke(exp: Experiment) -> Experiment:
    """The seconds-long version of an experiment: 2 trials, 1 epoch, a small subset."""
    exp = copy.deepcopy(exp)
    exp.search.num_samples = 2 if exp.search.algorithm != "grid" else 1
    exp.search.max_concurrent = min(exp.search.max_concurrent, 2)
    exp.scheduler.max_epochs = 1
    exp.scheduler.grace_period = 1
    exp.scheduler.perturbation_interval = 1
    exp.dataset.limit = min(exp.dataset.limit or 10**9, 300)
    if exp.search.algorithm == "grid":  # one value per parameter, or the grid alone is many trials
        exp.space = {k: (Distribution("choice", (v.grid_values(2)[0],)) if isinstance(v, Distribution) else v)
                     for k, v in exp.space.items()}
    return exp


def resolved_yaml(exp: Experiment) -> str:
    """The space as run (file + --set), for space.yaml and `validate`."""
    out: dict[str, Any] = {"name": exp.name, "family": exp.family, "dataset": dataclasses.asdict(exp.dataset),
           "metric": exp.metric, "mode": exp.mode,
           "search": dataclasses.asdict(exp.search) | {"num_samples": exp.num_samples if exp.num_samples > 0 else None},
           "scheduler": dataclasses.asdict(exp.scheduler), "resources": "auto" if exp.resources.auto else
           {"cpu": exp.resources.cpu, "gpu": exp.resources.gpu},
           "max_failures": exp.max_failures, "fixed": exp.fixed,
           "space": {k: node_yaml(v) for k, v in exp.space.items()}}
    if not exp.search.fuse:  # off: left out, so a folder searched before `fuse` existed still resumes as the same space
        del out["search"]["fuse"]
    if exp.constraints:
        out["constraints"] = exp.constraints
    if exp.storage:
        out["storage"] = exp.storage
    if exp.tracking is not None and exp.tracking.any:
        from tuner import tracking

        out["tracking"] = tracking.to_yaml(exp.tracking)
    return yaml.dump(out, Dumper=SpaceDumper, sort_keys=False)
