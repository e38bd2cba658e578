"""The config blocks of a space file (dataset, search, scheduler, resources): dataclasses whose fields carry
their type (the annotation) and bounds (`bounded(...)`). Each block `parse`s itself from its YAML mapping
(`build_block` checks every key's type and bounds) and `check`s the rules between its own keys."""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from tuner.bounds import MAX_IMAGE_SIZE, bound_of, bounded
from tuner.errors import UserError
# the sampler and scheduler registries: their names are the choices; neither module imports Ray or Optuna
from tuner.search.samplers import DEFAULT_SAMPLER, sampler_names
from tuner.search.schedulers import get_scheduler, scheduler_names
from tuner.spaces.distributions import finite
from tuner.spaces.names import check_path_text, shown


# the choices of the blocks' str fields (`tuner schema` lists them as enums). Data set and family names are
# not here: they are the keys of the registries (`tuner.data.READERS`, `tuner.families.FAMILIES`), read when a
# file is parsed, so `import tuner.spaces` loads neither numpy nor torch
NORMALIZATIONS = ("imagenet", "dataset", "half", "none")   # tuner.data.base.normalization's presets


ALGORITHMS = ("optuna", "random", "grid")


# Each field's type is its annotation and its bounds its `bounded(...)` metadata: `build_block` checks both, and
# `tuner schema` is written from both (tuner/schema.py). What involves two keys (val + test < 1,
# grace_period <= max_epochs, ...) is checked in parse_experiment.
SEED = {"min": 0, "max": 2**32 - 1}  # numpy and Optuna take seeds in [0, 2**32)


FRACTION = {"min": 0, "below": 1, "says": "a fraction in [0, 1)"}


@dataclass
class SplitConfig:
    val: float = bounded(0.2, **FRACTION)
    # a fraction, or "official" for the data set's own test set
    test: Union[float, str] = bounded(0.2, min=0, below=1, words=("official",),
                                      says="a fraction in [0, 1) or 'official'")
    seed: int = bounded(0, **SEED)


@dataclass
class AugmentConfig:
    hflip: bool = False
    rotation: float = bounded(0.0, min=0)      # degrees, +-
    color_jitter: float = bounded(0.0, min=0)  # brightness/contrast/saturation strength
    translate: float = bounded(0.0, min=0)     # fraction of the image size
    random_resized_crop: bool = False

    @property
    def any(self) -> bool:
        return bool(self.hflip or self.rotation or self.color_jitter or self.translate or self.random_resized_crop)


def _readers() -> tuple:
    from tuner.data import READERS  # read when a file is checked: `import tuner.spaces` loads no numpy

    return tuple(READERS)


@dataclass
class DatasetConfig:
    name: str = bounded("digits", choices=_readers)
    root: str | None = None
    download: bool = False
    # None keeps the data set's own size
    image_size: int | None = bounded(None, min=4, max=MAX_IMAGE_SIZE, says=f"from 4 to {MAX_IMAGE_SIZE} pixels",
                                     why="the data set is decoded and cached at this size (3 x size x size bytes "
                                         "an image)")
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normalize: str = bounded("dataset", choices=NORMALIZATIONS)
    limit: int | None = bounded(None, min=1, says="a whole number >= 1 (images per split)")  # quick runs

    @classmethod
    def parse(cls, raw: Any, file: str) -> DatasetConfig:
        """The dataset: block: every key of its type and within its bounds (`check` adds the rules across keys)."""
        return build_block(cls, raw, "dataset", file)

    def check(self, file: str) -> None:
        """What the fields' bounds cannot say alone: a split that leaves images to train on, a data folder."""
        sp = self.split
        if not isinstance(sp.test, str) and sp.val + sp.test >= 1:
            raise UserError(f"{file}: dataset.split: val + test = {sp.val + sp.test} leaves nothing to train on")
        if self.root is not None:
            check_path_text(self.root, f"{file}: dataset.root")
        if self.name not in ("digits",) and not self.root and not self.download:
            raise UserError(f"{file}: dataset.root is not set for {self.name}; "
                            f"set dataset.root to the data folder (or dataset.download: true where allowed)")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# `30s`, `10m`, `1.5h`, `.5d`: ASCII digits only (str.isdigit would take '²', which float() refuses)
DURATION = r"^\s*(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[smhd]\s*$"


@dataclass
class SearchConfig:
    algorithm: str = bounded("optuna", choices=ALGORITHMS)
    num_samples: int | None = bounded(None, min=1)  # default 16, or 1 pass over the grid
    max_concurrent: int = bounded(2, min=1)
    seed: int = bounded(0, **SEED)
    grid_points: int = bounded(3, min=2)           # values per continuous parameter when algorithm is grid
    sampler: str = bounded(DEFAULT_SAMPLER, choices=sampler_names)  # algorithm: optuna only (tuner.search.samplers)
    # seconds; the file may say 30s / 10m / 2h (parse_duration reads it)
    time_budget: float | str | None = bounded(None, above=0, pattern=DURATION,
                                              says="seconds > 0 or a duration such as 30s, 10m or 2h")
    # a list of configs evaluated first, or an earlier results folder (check_warm_start reads it)
    warm_start: list | str | None = bounded(None, json={"anyOf": [
        {"type": "array", "items": {"type": "object", "minProperties": 1}}, {"type": "string", "minLength": 1},
        {"type": "null"}]})
    # configurations trained as one model per Ray trial, at most this many (tuner.fused); 0 or off: one per
    # trial; auto: fused wherever the space allows it, in groups sized by tuner.spaces.rules.auto_fuse
    fuse: int | str = bounded(0, min=0, max=1024, words=("auto", "off"),  # false: YAML 1.1's bare `off`
                              json={"type": ["integer", "string", "boolean"], "not": {"const": True}})

    @classmethod
    def parse(cls, raw: Any, file: str) -> SearchConfig:
        """The search: block; time_budget (seconds or a duration) and warm_start (configs or a folder, checked
        with the space: tuner.spaces.warm) are the two keys a scalar type cannot say."""
        search_raw = dict(raw or {}) if isinstance(raw or {}, dict) else raw
        budget = warm = None
        if isinstance(search_raw, dict):
            budget, warm = search_raw.pop("time_budget", None), search_raw.pop("warm_start", None)
            if search_raw.get("fuse") is False:  # YAML 1.1 reads a bare `off` as false
                search_raw["fuse"] = "off"
        search = build_block(cls, search_raw, "search", file)
        if budget is not None:
            search.time_budget = parse_duration(budget, f"{file}: search.time_budget")
        search.warm_start = warm
        if search.fuse == "off":
            search.fuse = 0
        return search


@dataclass
class SchedulerConfig:
    name: str = bounded("asha", choices=scheduler_names)  # tuner.search.schedulers
    max_epochs: int = bounded(10, min=1)
    grace_period: int = bounded(1, min=1)  # and <= max_epochs, where the scheduler reads it (asha, median)
    reduction_factor: float = bounded(3, above=1)
    perturbation_interval: int = bounded(2, min=1)  # pbt

    @classmethod
    def parse(cls, raw: Any, file: str) -> SchedulerConfig:
        return build_block(cls, raw, "scheduler", file)

    def check(self, file: str) -> None:
        # fifo, pbt and hyperband never read it: a shorter --set scheduler.max_epochs needs no grace_period too
        if get_scheduler(self.name).grace and self.grace_period > self.max_epochs:
            raise UserError(f"{file}: scheduler {self.name} needs 1 <= grace_period ({self.grace_period}) <= "
                            f"max_epochs ({self.max_epochs}): lower scheduler.grace_period or raise "
                            f"scheduler.max_epochs")


@dataclass
class ResourcesConfig:
    cpu: float = bounded(1, above=0)
    gpu: float = bounded(0, min=0, whole_above=1, says="a number >= 0: a share of one GPU, or a whole number")
    auto: bool = False             # fit trials to what the cluster has

    @classmethod
    def parse(cls, raw: Any, file: str) -> ResourcesConfig:
        """resources: `auto` (fit trials to the cluster) or a mapping such as {cpu: 1, gpu: 0}."""
        if raw is not None and not isinstance(raw, dict) and raw != "auto":
            raise UserError(f"{file}: resources must be auto or a mapping such as {{cpu: 1, gpu: 0}}, got {raw!r}")
        return cls(auto=True) if raw == "auto" else build_block(cls, raw, "resources", file)


def _members(typ: Any) -> tuple:
    """The types an annotation allows: `int | None` -> (int, NoneType); `list[dict]` -> (list,)."""
    args = typing.get_args(typ) if typing.get_origin(typ) in (Union, types.UnionType) else (typ,)
    return tuple(typing.get_origin(a) or a for a in args)


class WrongType(UserError):
    """A value none of a field's types takes (check_type)."""


def check_type(value: Any, typ: Any, where: str) -> Any:
    """Coerce a YAML scalar to a dataclass field's (resolved) annotated type, or say what is wrong."""
    allowed = _members(typ)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        if not finite(value):  # .nan / .inf pass every < and > check below, then break the run
            raise UserError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    words = " or ".join("None" if a is type(None) else getattr(a, "__name__", str(a)) for a in allowed)
    raise WrongType(f"{where}: expected {words}, got {value!r}")


def build_block(cls, data: Any, where: str, file: str):
    """A config block from its YAML mapping: every key known, of its field's type and within its bounds."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{file}: {where} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)  # the annotations as types (they are strings under `annotations`)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(f"{file}: unknown key {where}.{shown(key)}; known keys: {', '.join(sorted(fields))}")
        f, typ = fields[key], hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = build_block(typ, value, f"{where}.{key}", file)
            continue
        bound = bound_of(f)
        try:
            kwargs[key] = check_type(value, typ, f"{file}: {where}.{key}")
        except WrongType:
            if bound is None:
                raise
            # what the field takes, not only its types ("search.fuse: expected int or str, got 1.5" named no fix)
            whole = int in _members(typ) and float not in _members(typ)
            raise UserError(f"{file}: {where}.{key} must be {bound.wanted(whole)}, got {value!r}") from None
        problem = bound.problem(kwargs[key]) if bound is not None else None
        if problem:
            raise UserError(f"{file}: {where}.{key} {problem}")
    return cls(**kwargs)


def parse_duration(value: Any, where: str) -> float:
    """`30m` / `2h` / `45s` / a number of seconds -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if finite(value) else math.nan
    elif isinstance(value, str) and re.search(DURATION, value):
        seconds = float(value.strip()[:-1]) * DURATION_UNITS[value.strip()[-1]]
    else:
        raise UserError(f"{where}: expected seconds or a duration such as 30s, 10m or 2h, got {value!r}")
    if not (math.isfinite(seconds) and seconds > 0):  # .nan passes `<= 0`; .inf broke the console's clock
        raise UserError(f"{where}: must be a finite time of more than 0 seconds, got {value!r}")
    return seconds
