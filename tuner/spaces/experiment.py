"""A parsed space file: the `Experiment` (blocks, objectives, the space tree and what trials draw from it) and
the `Suite` of several."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from tuner.spaces.blocks import DatasetConfig, ResourcesConfig, SchedulerConfig, SearchConfig
from tuner.spaces.distributions import Conditional, Distribution, is_searched, same_value


@dataclass
class Experiment:
    name: str
    family: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    metric: str | list = "val_accuracy"   # one metric, or a list for a multi-objective search
    mode: str | list = "max"              # one mode per metric
    constraints: dict[str, dict] = field(default_factory=dict)  # metric -> {max: x} / {min: x}
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)  # name -> Distribution or constant
    max_failures: int = 0
    storage: str | None = None
    tracking: Any = None  # tuner.tracking.TrackingConfig: the `tracking:` block (MLflow, W&B)
    path: Path | None = None
    raw: dict = field(default_factory=dict)  # the resolved YAML exactly as run

    @property
    def searched(self) -> dict[str, Union[Distribution, Conditional]]:
        """Parameters that vary between trials (a `fixed` key wins over the same `space` key, at any depth)."""
        return {k: v for k, v in pin(self.space, self.fixed).items() if is_searched(v)}

    @property
    def conditional(self) -> bool:
        return any(isinstance(v, Conditional) for v in self.searched.values())

    @property
    def param_names(self) -> list[str]:
        """Every searched name, branch parameters of conditional choices included (trials.csv's columns)."""
        out: list[str] = []
        for k, v in self.searched.items():
            for n in [k] + (v.names() if isinstance(v, Conditional) else []):
                if n not in out:
                    out.append(n)
        return out

    @property
    def metrics(self) -> list[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        return list(self.mode) if isinstance(self.mode, list) else [self.mode]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def constants(self) -> dict[str, Any]:
        """Every parameter with one value: constants in `space` (and in the option of a choice `fixed` pins),
        then `fixed` on top."""
        out = {k: v for k, v in pin(self.space, self.fixed).items() if not is_searched(v)}
        out.update(self.fixed)
        return out

    @property
    def num_samples(self) -> int:
        if self.search.num_samples is not None:
            return self.search.num_samples
        if self.search.time_budget and self.search.algorithm != "grid":
            return -1  # Ray's "until told to stop": the time budget ends the search
        return 1 if self.search.algorithm == "grid" else 16


@dataclass
class Suite:
    name: str
    members: list[Path]
    ensemble: list[str] = field(default_factory=list)
    path: Path | None = None
    raw: dict = field(default_factory=dict)


def pin(space: dict, fixed: dict) -> dict:
    """The space tree as trials draw it: `fixed` wins over the same key at any depth. A pinned parameter's
    distribution is dropped; a pinned conditional choice gives way to the sub-space of the option `fixed`
    names, as if it were written in its place (or to nothing, when `fixed` names a value it has no option for)."""
    out: dict = {}
    for k, node in space.items():
        if k in fixed:
            if isinstance(node, Conditional):
                out.update(pin(next((sub for opt, sub in node.options if same_value(opt, fixed[k])), {}), fixed))
            continue
        if isinstance(node, Conditional):
            node = Conditional(tuple((opt, pin(sub, fixed)) for opt, sub in node.options))
        out[k] = node
    return out
