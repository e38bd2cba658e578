"""Search-space files: YAML + `--set` overrides -> a validated, typed `Experiment` (or `Suite`).

Everything a user can get wrong is checked here, before Ray starts, so a typo costs a second and
not a cluster allocation. Every error is a `UserError` naming the file and the dotted key.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from tuner.bounds import MAX_IMAGE_SIZE, Bound, bound_of, bounded
from tuner.errors import UserError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "logint", "choice", "grid")
# the choices of the blocks' str fields (`tuner schema` lists them as enums). Data set and family names are
# not here: they are the keys of the registries (`tuner.data.READERS`, `tuner.families.FAMILIES`), read when a
# file is parsed, so `import tuner.spaces` loads neither numpy nor torch
NORMALIZATIONS = ("imagenet", "dataset", "half", "none")   # tuner.data.base.normalization's presets
ALGORITHMS = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "median", "pbt", "fifo", "hyperband")


# --------------------------------------------------------------------------- distributions
@dataclass(frozen=True)
class Distribution:
    """One searched parameter: `{loguniform: [1e-4, 1e-1]}` and friends."""

    kind: str
    args: tuple

    @property
    def is_log(self) -> bool:
        return self.kind in ("loguniform", "logint")

    def grid_values(self, points: int) -> list:
        """Finite values for a grid search: the listed ones, or `points` evenly (log-)spaced ones."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        lo, hi = self.args
        if self.is_log:
            vals = [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / max(points - 1, 1))
                    for i in range(points)]
        else:
            vals = [lo + i * (hi - lo) / max(points - 1, 1) for i in range(points)]
        if self.kind in ("int", "logint"):
            return sorted({int(round(v)) for v in vals})
        return [float(f"{v:.6g}") for v in vals]

    def to_yaml(self) -> dict:
        return {self.kind: list(self.args)}


def _finite(x: int | float) -> bool:
    """A number that is neither NaN nor infinite and fits a float (YAML ints have no size limit)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


@dataclass(frozen=True)
class Conditional:
    """A `choice` written as a mapping: each option brings its own sub-space, searched only when drawn.

    `options` maps an option's value to its sub-space (name -> Distribution, Conditional or constant).
    """

    options: tuple  # ((value, {name: node}), ...) in file order

    kind = "conditional"

    @property
    def args(self) -> tuple:
        return tuple(v for v, _ in self.options)

    def names(self) -> list[str]:
        """Every parameter name a branch may set, nested ones included, in file order."""
        out: list[str] = []
        for _, sub in self.options:
            for k, node in sub.items():
                for n in [k] + (node.names() if isinstance(node, Conditional) else []):
                    if n not in out:
                        out.append(n)
        return out

    def grid(self, key: str, grid_points: int) -> list[dict]:
        """Every config of the tree for a grid search: each option, times the grid of its sub-space."""
        out = []
        for value, sub in self.options:
            out += [{key: value, **cfg} for cfg in grid_configs(sub, grid_points)]
        return out

    def to_yaml(self) -> dict:
        return {"choice": {v: {k: node_yaml(n) for k, n in sub.items()} for v, sub in self.options}}


def node_yaml(node: Any) -> Any:
    return node.to_yaml() if isinstance(node, (Distribution, Conditional)) else node


def grid_configs(space: dict, grid_points: int) -> list[dict]:
    """The cartesian product of a (sub-)space's values: what a grid search over a conditional tree runs."""
    configs: list[dict] = [{}]
    for k, node in space.items():
        if isinstance(node, Conditional):
            values = node.grid(k, grid_points)
        elif isinstance(node, Distribution):
            values = [{k: v} for v in node.grid_values(grid_points)]
        else:
            values = [{k: node}]
        configs = [{**c, **v} for c in configs for v in values]
    return configs


def parse_distribution(value: Any, where: str) -> Union[Distribution, Conditional, Any]:
    """`{kind: [args]}` -> Distribution; `{choice: {option: {sub-space}}}` -> Conditional; else a constant."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("choice"), dict):
        if not value["choice"]:
            raise UserError(f"{where}.choice: a conditional choice needs at least one option")
        options = []
        for opt, sub in value["choice"].items():
            sub = {} if sub is None else sub
            if not isinstance(sub, dict):
                raise UserError(f"{where}.choice.{opt}: an option's sub-space is a mapping of parameter: "
                                f"distribution (or {{}} for none), got {sub!r}")
            options.append((opt, {k: parse_distribution(v, f"{where}.choice.{opt}.{k}") for k, v in sub.items()}))
        return Conditional(tuple(options))
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
        if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
            kind = next(iter(value))
            raise UserError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
        return value
    kind, args = next(iter(value.items()))
    if not isinstance(args, list) or not args:
        raise UserError(f"{where}: {kind} needs a non-empty list, e.g. {{{kind}: [..]}}")
    if kind in ("choice", "grid"):
        return Distribution(kind, tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise UserError(f"{where}: {kind} needs two numbers [lo, hi], got {args!r}")
    lo, hi = args
    if not (_finite(lo) and _finite(hi)):
        raise UserError(f"{where}: {kind} bounds must be finite numbers, got {args!r}")
    if lo > hi:
        raise UserError(f"{where}: {kind} bounds are reversed ({lo} > {hi}); write [{hi}, {lo}]")
    if kind in ("loguniform", "logint") and lo <= 0:
        raise UserError(f"{where}: {kind} needs bounds > 0, got {lo}; use uniform/int for ranges that include 0")
    if kind in ("int", "logint"):
        if int(lo) != lo or int(hi) != hi:
            raise UserError(f"{where}: {kind} bounds must be whole numbers, got {args!r}")
        if max(abs(lo), abs(hi)) > INT_LIMIT:
            raise UserError(f"{where}: {kind} bounds must lie within +-2**53, got {args!r}")
        lo, hi = int(lo), int(hi)
    else:
        lo, hi = float(lo), float(hi)
    return Distribution(kind, (lo, hi))


# --------------------------------------------------------------------------- config blocks
# Each field's type is its annotation and its bounds its `bounded(...)` metadata: `_build` checks both, and
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


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# `30s`, `10m`, `1.5h`, `.5d`: ASCII digits only (str.isdigit would take '²', which float() refuses)
DURATION = r"^\s*(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[smhd]\s*$"
SAMPLERS = ("tpe", "gp", "cmaes", "nsga2", "qmc", "random")


@dataclass
class SearchConfig:
    algorithm: str = bounded("optuna", choices=ALGORITHMS)
    num_samples: int | None = bounded(None, min=1)  # default 16, or 1 pass over the grid
    max_concurrent: int = bounded(2, min=1)
    seed: int = bounded(0, **SEED)
    grid_points: int = bounded(3, min=2)           # values per continuous parameter when algorithm is grid
    sampler: str = bounded("tpe", choices=SAMPLERS)  # algorithm: optuna only
    # seconds; the file may say 30s / 10m / 2h (parse_duration reads it)
    time_budget: float | str | None = bounded(None, above=0, pattern=DURATION,
                                              says="seconds > 0 or a duration such as 30s, 10m or 2h")
    # a list of configs evaluated first, or an earlier results folder (_check_warm_start reads it)
    warm_start: list | str | None = bounded(None, json={"anyOf": [
        {"type": "array", "items": {"type": "object", "minProperties": 1}}, {"type": "string", "minLength": 1},
        {"type": "null"}]})


@dataclass
class SchedulerConfig:
    name: str = bounded("asha", choices=SCHEDULERS)
    max_epochs: int = bounded(10, min=1)
    grace_period: int = bounded(1, min=1)  # and <= max_epochs
    reduction_factor: float = bounded(3, above=1)
    perturbation_interval: int = bounded(2, min=1)  # pbt


@dataclass
class ResourcesConfig:
    cpu: float = bounded(1, above=0)
    gpu: float = bounded(0, min=0, whole_above=1, says="a number >= 0: a share of one GPU, or a whole number")
    auto: bool = False             # fit trials to what the cluster has


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
        return {k: v for k, v in pin(self.space, self.fixed).items() if isinstance(v, (Distribution, Conditional))}

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
        out = {k: v for k, v in pin(self.space, self.fixed).items() if not isinstance(v, (Distribution, Conditional))}
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


# --------------------------------------------------------------------------- parsing
def _check_type(value: Any, typ: Any, where: str) -> Any:
    """Coerce YAML scalars to a dataclass field's annotated type, or say what is wrong."""
    text = str(typ)
    if value is None and "None" in text:
        return None
    if "bool" in text and isinstance(value, bool):
        return value
    if "float" in text and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not _finite(value):  # .nan / .inf pass every < and > check below, then break the run
            raise UserError(f"{where}: must be a finite number, got {value!r}")
        return float(value) if not ("int" in text and isinstance(value, int)) else value
    if "int" in text and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "str" in text and isinstance(value, str):
        return value
    raise UserError(f"{where}: expected {text.replace('typing.', '').replace(' | ', ' or ')}, got {value!r}")


def _build(cls, data: Any, where: str, file: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{file}: {where} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(f"{file}: unknown key {where}.{shown(key)}; known keys: {', '.join(sorted(fields))}")
        f = fields[key]
        typ = f.type if not isinstance(f.type, str) else eval(f.type, globals())  # noqa: S307 - our own annotations
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, f"{where}.{key}", file)
            continue
        kwargs[key] = _check_type(value, f.type, f"{file}: {where}.{key}")
        problem = bound_of(f).problem(kwargs[key]) if bound_of(f) else None
        if problem:
            raise UserError(f"{file}: {where}.{key} {problem}")
    return cls(**kwargs)


def shown(key: Any) -> str:
    """A user's key as it goes into a one-line message: as typed, or quoted when it holds a line break
    or another unprintable character (which would split the `error:` line)."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


def apply_overrides(raw: dict, overrides: list[str], file: str) -> dict:
    """`--set a.b=VALUE`: VALUE is YAML; the dotted path is created as needed."""
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set search.num_samples=8")
        key, text = item.split("=", 1)
        try:
            value = safe_yaml(text) if text != "" else None
        except yaml.YAMLError as exc:
            raise UserError(f"--set {shown(key)}: value {text!r} is not valid YAML ({yaml_problem(exc)})") from None
        except UserError as exc:
            raise UserError(f"--set {shown(key)}: {exc}") from None
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


MAX_SPACE_BYTES = 1 << 20  # a space file is a page of YAML; a megabyte is already a mistake
MAX_YAML_NODES = 100_000   # after alias expansion; a real space file has a few hundred


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """How many nodes the document has once every alias is expanded, without expanding it:
    an alias is a second reference to the same node, so each node is sized once."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise UserError("an alias refers to the mapping or list that contains it (a recursive document)")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_nodes(c, memo, open_) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_nodes(k, memo, open_) + _expanded_nodes(v, memo, open_) for k, v in node.value)
    else:
        n = 1
    open_.discard(key)
    memo[key] = n
    return n


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line (its str() spans several, with a caret under the spot)."""
    text = getattr(exc, "problem", None) or str(exc)
    return " ".join(text.split())


# YAML 1.2 core-schema floats that have an exponent: `1e-4`, `5E3`, `-2e+5`, `.5e-3`, `1.0e3`. PyYAML follows
# YAML 1.1, whose floats need a dot and a signed exponent, so it reads `1e-4` as the string '1e-4' and a
# `{loguniform: [1e-4, 1e-2]}` fails as "needs two numbers". Every other scalar resolves as PyYAML's does.
EXPONENT_FLOAT = r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"


class SpaceLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads YAML 1.2's exponent floats (`1e-4`) as floats."""


class SpaceDumper(yaml.SafeDumper):
    """yaml.SafeDumper that quotes a string SpaceLoader would read as a float (`'1e-4'`), so it reads back."""


for _cls in (SpaceLoader, SpaceDumper):  # each gets its own copy of SafeLoader's resolvers; those stay as they are
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(EXPONENT_FLOAT), list("-+.0123456789"))


def safe_yaml(text: str, loader_class: type = SpaceLoader) -> Any:
    """yaml.safe_load (with SpaceLoader's `1e-4` floats) that refuses a document that expands past
    MAX_YAML_NODES (an alias bomb: nine lines that PyYAML would turn into billions of list entries) or that
    nests past Python's stack. Files tuner wrote with yaml.safe_dump are read with yaml.SafeLoader: under
    SpaceLoader an unquoted trial id such as 508172e8 would come back as the number 5.08e13.
    Raises yaml.YAMLError for bad syntax and UserError for the rest, each without the file name."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_nodes(node, {}, set())
        if n > MAX_YAML_NODES:
            raise UserError(f"the document expands to {n} values through its aliases (&/*), more than "
                            f"{MAX_YAML_NODES}; write the values out instead of nesting aliases")
        return loader.construct_document(node)
    except RecursionError:
        raise UserError("nested too deeply to read; a space file needs a few levels of nesting") from None
    except (ValueError, OverflowError) as exc:  # a timestamp like 2024-13-45, an int of 5000 digits
        why = "a number has too many digits" if "digits" in str(exc) else str(exc)
        raise UserError(f"a value cannot be read: {why}") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such space file; see search_spaces/ for examples")
    size = path.stat().st_size
    if size > MAX_SPACE_BYTES:
        raise UserError(f"{path}: {size} bytes is too large for a space file (at most {MAX_SPACE_BYTES}); "
                        f"is this the right file?")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file (byte {exc.start} is not UTF-8); "
                        f"a space file is YAML text, see search_spaces/ for examples") from None
    try:
        raw = safe_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{line}: {yaml_problem(exc)}") from None
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a space file is a YAML mapping (name:, family:, space:, ...), "
                        f"got {type(raw).__name__}")
    return raw


# the top-level keys that are not blocks: their bounds, for validate and `tuner schema` alike
MAX_FAILURES = Bound(min=-1, says="a whole number >= 0 (retries of a crashed trial), or -1 to retry crashed "
                                  "trials forever")
STORAGE = Bound(pattern=r"\S", says="a folder or a URI such as s3://bucket/path")
CONSTRAINT_SIDES = ("min", "max")
INT_LIMIT = 2**53  # int / logint bounds: past this floats skip integers and Ray's sampler overflows

TOP_KEYS = {"name", "dataset", "family", "metric", "mode", "search", "scheduler", "resources", "fixed", "space",
            "max_failures", "storage", "constraints", "tracking"}
SUITE_KEYS = {"name", "suite", "ensemble"}
METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")

# what an objective or a constraint may name: the per-epoch metrics and what the trial measures once
OBJECTIVES = METRICS + ("num_params", "latency_ms", "latency_ms_b64", "train_time_s")


def parse_duration(value: Any, where: str) -> float:
    """`30m` / `2h` / `45s` / a number of seconds -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if _finite(value) else math.nan
    elif isinstance(value, str) and re.search(DURATION, value):
        seconds = float(value.strip()[:-1]) * DURATION_UNITS[value.strip()[-1]]
    else:
        raise UserError(f"{where}: expected seconds or a duration such as 30s, 10m or 2h, got {value!r}")
    if not (math.isfinite(seconds) and seconds > 0):  # .nan passes `<= 0`; .inf broke the console's clock
        raise UserError(f"{where}: must be a finite time of more than 0 seconds, got {value!r}")
    return seconds


def check_path_text(path: str, where: str) -> str:
    """A path from a space file that the file system can take: no NUL byte, at most 4096 bytes, each part at
    most 255 (Linux's PATH_MAX and NAME_MAX). A longer one failed later with 'File name too long'."""
    size = len(os.fsencode(path)) if "\0" not in path else 0
    part = max((len(os.fsencode(p)) for p in path.split("/")), default=0) if "\0" not in path else 0
    why = ("holds a NUL byte" if "\0" in path else f"is {size} bytes long (at most 4096)" if size > 4096
           else f"has a part of {part} bytes (at most 255)" if part > 255 else None)
    if why:
        raise UserError(f"{where}: {shown(path[:60] + '...' if len(path) > 60 else path)} {why}; give the "
                        f"path of a folder")
    return path


NAME_MAX = 100
# one plain folder name: 1 to NAME_MAX characters, no path separator or control character, no leading dot.
# `(?![\s\S])` ends the string in Python and JSON Schema (ECMA) regexes alike ($ would let a final newline by)
NAME_PATTERN = rf"^(?!\.)[^/\\\u0000-\u001f\u007f]{{1,{NAME_MAX}}}(?![\s\S])"


def check_name(name: object, where: str) -> str:
    """An experiment name becomes `<results>/<name>`, which a new search removes first: so it must be one
    plain file-name component, never a path that leads elsewhere. Every way a name arrives comes through here."""
    if not isinstance(name, str):
        kind = {"int": "a number", "float": "a number", "bool": "true/false", "NoneType": "empty"}.get(
            type(name).__name__, f"a {type(name).__name__}")
        raise UserError(f"{where}: {repr(name)[:60]} is {kind}, not a name; write it as a quoted string such as "
                        f"'my_search'")
    if re.search(NAME_PATTERN, name):
        return name
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    shown = repr(name if len(name) <= 40 else name[:40] + "...")
    why = ("is empty" if not name
           else f"has the control character {bad!r}" if bad is not None
           else f"is {len(name)} characters long (at most {NAME_MAX})" if len(name) > NAME_MAX
           else "contains a path separator" if "/" in name or "\\" in name
           else "starts with '.'")
    if why:
        raise UserError(f"{where}: {shown} {why}; a name is one plain folder name (letters, digits, '-', '_', '.')")
    return name


def load(path: str | Path, overrides: list[str] | None = None) -> Union[Experiment, Suite]:
    """Read, override and validate a space or suite file."""
    path = Path(path)
    raw = read_yaml(path)
    if "suite" in raw:
        # --set on a suite is meant for its members (the caller loads each with the same overrides);
        # only the suite's own list keys are applied to the suite itself
        own = [s for s in overrides or [] if s.split("=", 1)[0].split(".")[0].strip() in ("suite", "ensemble")]
        return _load_suite(path, apply_overrides(raw, own, str(path)))
    raw = apply_overrides(raw, overrides or [], str(path))
    return parse_experiment(raw, path)


def _load_suite(path: Path, raw: dict) -> Suite:
    for key in raw:
        if key not in SUITE_KEYS:
            raise UserError(f"{path}: unknown key {key!r} in a suite; a suite takes {', '.join(sorted(SUITE_KEYS))}")
    members = raw["suite"]
    if not isinstance(members, list) or not members:
        raise UserError(f"{path}: suite must be a non-empty list of space files, got {members!r}")
    paths = []
    for m in members:
        if not isinstance(m, str) or not m.strip() or any(ord(c) < 32 for c in m):
            raise UserError(f"{path}: suite member {m!r} is not a file name; list space files, e.g. suite: [a.yaml]")
        p = (path.parent / m).resolve()
        if not p.is_file():
            raise UserError(f"{path}: suite member {m!r} not found (looked for {p})")
        if "suite" in read_yaml(p):  # one level only: a suite of suites would run its members twice over
            raise UserError(f"{path}: suite member {m!r} is itself a suite; list its space files here instead")
        paths.append(p)
    ensemble = raw.get("ensemble") or []
    if not isinstance(ensemble, list) or not all(isinstance(e, str) for e in ensemble):
        raise UserError(f"{path}: ensemble must be a list of experiment names")
    for e in ensemble:
        check_name(e, f"{path}: ensemble entry")
    name = raw["name"] if raw.get("name") is not None else path.stem
    check_name(name, f"{path}: name")
    return Suite(name=name, members=paths, ensemble=ensemble, path=path, raw=raw)


def parse_experiment(raw: dict, path: Path | None = None) -> Experiment:
    from tuner.families import FAMILIES, get_family

    file = str(path) if path else "<space>"
    for key in raw:
        if key not in TOP_KEYS:
            hint = " (a suite file has only name, suite and ensemble)" if key in ("suite", "ensemble") else ""
            raise UserError(f"{file}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(TOP_KEYS))}")
    if "family" not in raw:
        raise UserError(f"{file}: missing key 'family'; set one of {', '.join(FAMILIES)}")
    family = get_family(raw["family"], where=f"{file}: family")
    name = raw["name"] if raw.get("name") is not None else (path.stem if path else "experiment")
    check_name(name, f"{file}: name")

    dataset = _build(DatasetConfig, raw.get("dataset"), "dataset", file)
    search_raw = dict(raw.get("search") or {}) if isinstance(raw.get("search") or {}, dict) else raw.get("search")
    budget = warm = None
    if isinstance(search_raw, dict):  # the two keys _build's scalar types cannot say
        budget, warm = search_raw.pop("time_budget", None), search_raw.pop("warm_start", None)
    search = _build(SearchConfig, search_raw, "search", file)
    if budget is not None:
        search.time_budget = parse_duration(budget, f"{file}: search.time_budget")
    search.warm_start = warm
    scheduler = _build(SchedulerConfig, raw.get("scheduler"), "scheduler", file)
    res_raw = raw.get("resources")
    if res_raw is not None and not isinstance(res_raw, dict) and res_raw != "auto":
        raise UserError(f"{file}: resources must be auto or a mapping such as {{cpu: 1, gpu: 0}}, got {res_raw!r}")
    resources = ResourcesConfig(auto=True) if res_raw == "auto" else _build(ResourcesConfig, res_raw, "resources", file)

    metric, mode = _objectives(raw, file)
    constraints = _constraints(raw.get("constraints"), file)
    _check_blocks(dataset, scheduler, file)

    fixed = {} if raw.get("fixed") is None else raw["fixed"]
    space_raw = {} if raw.get("space") is None else raw["space"]
    for key, block in (("fixed", fixed), ("space", space_raw)):
        if not isinstance(block, dict):
            raise UserError(f"{file}: {key} must be a mapping of parameter: value, got {block!r}")
        for k in block:
            if not isinstance(k, str):
                raise UserError(f"{file}: {key}: parameter names are words, got {k!r}")
    max_failures = raw.get("max_failures", 0)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or MAX_FAILURES.problem(max_failures):
        raise UserError(f"{file}: max_failures must be {MAX_FAILURES.says}; got {max_failures!r}")
    storage = raw.get("storage")
    if storage is not None and (not isinstance(storage, str) or STORAGE.problem(storage)):
        raise UserError(f"{file}: storage must be {STORAGE.says}, got {storage!r}")
    if storage is not None:
        check_path_text(storage, f"{file}: storage")
    space = {k: parse_distribution(v, f"{file}: space.{k}") for k, v in space_raw.items()}
    _check_branch_names(space, file)
    for k, v in fixed.items():
        if isinstance(parse_distribution(v, f"{file}: fixed.{k}"), Distribution):
            raise UserError(f"{file}: fixed.{k} is a distribution; move it to space: or give one value")

    from tuner import tracking

    exp = Experiment(name=name, family=raw["family"], dataset=dataset, metric=metric, mode=mode,
                     constraints=constraints, search=search,
                     scheduler=scheduler, resources=resources, fixed=dict(fixed), space=space,
                     max_failures=max_failures, storage=storage, tracking=tracking.parse(raw.get("tracking"), file),
                     path=path, raw=raw)
    for k, v in list(exp.constants.items()) + [(k, a) for k, d in exp.searched.items() for a in d.args]:
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{file}: {k} is {v}; give a finite number")
    if search.algorithm == "optuna" and any(d.kind == "grid" for d in exp.searched.values()):
        bad = next(k for k, d in exp.searched.items() if d.kind == "grid")
        raise UserError(f"{file}: space.{bad} is a grid, which Optuna cannot enumerate; "
                        f"use choice, or set search.algorithm to grid or random")
    _validate_tree(family, exp.constants, exp.searched, file, "space")
    _check_search_power(exp, file)
    return exp


def _check_blocks(dataset: DatasetConfig, scheduler: SchedulerConfig, file: str) -> None:
    """What the blocks' bounds (checked in _build) cannot say alone: rules that take two keys."""
    sp = dataset.split
    if not isinstance(sp.test, str) and sp.val + sp.test >= 1:
        raise UserError(f"{file}: dataset.split: val + test = {sp.val + sp.test} leaves nothing to train on")
    if dataset.root is not None:
        check_path_text(dataset.root, f"{file}: dataset.root")
    if dataset.name not in ("digits",) and not dataset.root and not dataset.download:
        raise UserError(f"{file}: dataset.root is not set for {dataset.name}; "
                        f"set dataset.root to the data folder (or dataset.download: true where allowed)")
    if scheduler.grace_period > scheduler.max_epochs:
        raise UserError(f"{file}: scheduler needs 1 <= grace_period ({scheduler.grace_period}) <= "
                        f"max_epochs ({scheduler.max_epochs})")


def _objectives(raw: dict, file: str) -> tuple:
    """`metric`/`mode`: one each, or equal-length lists for a multi-objective search."""
    metric, mode = raw.get("metric", "val_accuracy"), raw.get("mode", "max")
    if isinstance(metric, list) or isinstance(mode, list):
        metrics = metric if isinstance(metric, list) else [metric]
        modes = mode if isinstance(mode, list) else [mode] * len(metrics)
        if len(metrics) < 1 or len(modes) != len(metrics):
            raise UserError(f"{file}: mode needs one entry per metric ({len(metrics)} metrics, {len(modes)} modes)")
        if len(set(map(str, metrics))) != len(metrics):
            raise UserError(f"{file}: metric lists {metrics!r}: each objective once")
        for i, (m, d) in enumerate(zip(metrics, modes)):
            _one_of(file, f"metric[{i}]", m, OBJECTIVES)
            _one_of(file, f"mode[{i}]", d, ("max", "min"))
        return (metrics, modes) if len(metrics) > 1 else (metrics[0], modes[0])
    _one_of(file, "mode", mode, ("max", "min"))
    _one_of(file, "metric", metric, OBJECTIVES)
    return metric, mode


def _constraints(raw: Any, file: str) -> dict[str, dict]:
    """`constraints: {num_params: {max: 5.0e+6}}`: a trial outside any bound is infeasible."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{file}: constraints must be a mapping such as {{latency_ms: {{max: 10}}}}, got {raw!r}")
    out = {}
    for name, bound in raw.items():
        _one_of(file, f"constraints.{name}: metric", name, OBJECTIVES)
        if not isinstance(bound, dict) or not bound or set(bound) - set(CONSTRAINT_SIDES):
            raise UserError(f"{file}: constraints.{name} takes {{max: X}} and/or {{min: X}}, got {bound!r}")
        for side, v in bound.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not _finite(v):
                raise UserError(f"{file}: constraints.{name}.{side} must be a finite number, got {v!r}")
        if "min" in bound and "max" in bound and bound["min"] > bound["max"]:
            raise UserError(f"{file}: constraints.{name}: min {bound['min']} > max {bound['max']}")
        out[name] = {k: float(v) for k, v in bound.items()}
    return out


def _occurrences(space: dict, path: tuple = ()):
    """(name, path) for every name the tree sets; a path is the ((choice, option), ...) that leads to it."""
    for k, node in space.items():
        yield k, path
        if isinstance(node, Conditional):
            for opt, sub in node.options:
                yield from _occurrences(sub, path + ((k, opt),))


def _exclusive(a: tuple, b: tuple) -> bool:
    """Whether no trial can reach both paths: they part at one choice, into different options of it."""
    for (ka, oa), (kb, ob) in zip(a, b):
        if ka != kb:
            return False  # two different choices: a trial draws both
        if not _same_value(oa, ob):
            return True
    return False  # one path leads into the other (or they are the same): both are reached together


def _check_branch_names(space: dict, file: str) -> None:
    """A trial's config holds one value per name: a name may be set in several options of one choice (only one
    is drawn), never in two places a trial can reach at once (outside and inside a branch, or in branches of
    two different choices, where the later draw silently replaced the earlier one)."""
    seen: dict[str, list[tuple]] = {}
    for name, path in _occurrences(space):
        for other in seen.get(name, []):
            if not _exclusive(other, path):
                here, there = (f"space.{''.join(f'{k}.choice.{o}.' for k, o in p)}{name}" for p in (other, path))
                raise UserError(f"{file}: {here} and {there} both set {name!r}, and one trial can draw both; "
                                f"give it in one place only (or in options of one choice)")
        seen.setdefault(name, []).append(path)


def pin(space: dict, fixed: dict) -> dict:
    """The space tree as trials draw it: `fixed` wins over the same key at any depth. A pinned parameter's
    distribution is dropped; a pinned conditional choice gives way to the sub-space of the option `fixed`
    names, as if it were written in its place (or to nothing, when `fixed` names a value it has no option for)."""
    out: dict = {}
    for k, node in space.items():
        if k in fixed:
            if isinstance(node, Conditional):
                out.update(pin(next((sub for opt, sub in node.options if _same_value(opt, fixed[k])), {}), fixed))
            continue
        if isinstance(node, Conditional):
            node = Conditional(tuple((opt, pin(sub, fixed)) for opt, sub in node.options))
        out[k] = node
    return out


def _validate_tree(family, constants: dict, searched: dict, file: str, where: str) -> None:
    """The family checks each level: a conditional's option values as a choice, then every option's
    sub-space on top of the constants (a key in several branches is checked in each with its own range)."""
    flat = {k: (Distribution("choice", v.args) if isinstance(v, Conditional) else v) for k, v in searched.items()}
    family.validate(constants, flat, file)
    for k, node in searched.items():
        if not isinstance(node, Conditional):
            continue
        for opt, sub in node.options:
            here = f"{file}: {where}.{k}.choice.{opt}"
            fixed = {n: v for n, v in sub.items() if not isinstance(v, (Distribution, Conditional))}
            consts = {**constants, k: opt, **fixed}
            _validate_tree(family, consts, {n: v for n, v in sub.items() if isinstance(v, (Distribution, Conditional))},
                           here, where)


def _has_categorical_only(exp: Experiment) -> bool:
    return all(isinstance(d, Conditional) or d.kind in ("choice", "grid") for d in exp.searched.values())


def _check_search_power(exp: Experiment, file: str) -> None:
    """Samplers, schedulers, objectives, budgets and warm starts that cannot work together: said before Ray."""
    s, sched = exp.search, exp.scheduler.name
    if s.sampler != "tpe" and s.algorithm != "optuna":
        raise UserError(f"{file}: search.sampler {s.sampler} is for algorithm: optuna (algorithm is {s.algorithm})")
    if s.algorithm == "optuna":
        if s.sampler == "nsga2" and not exp.multi:
            raise UserError(f"{file}: search.sampler nsga2 is a multi-objective sampler; give metric a list "
                            f"(e.g. [val_accuracy, latency_ms]) or use tpe")
        if s.sampler == "cmaes" and exp.searched and _has_categorical_only(exp):
            raise UserError(f"{file}: search.sampler cmaes searches numbers only and every parameter in space: is "
                            f"a choice; use tpe, or make a parameter uniform/loguniform/int")
        if s.sampler in ("gp", "cmaes", "qmc") and exp.conditional:
            raise UserError(f"{file}: search.sampler {s.sampler} needs one fixed set of parameters, and space: "
                            f"has a conditional choice; use tpe or random")
        if s.sampler == "cmaes" and exp.multi:
            raise UserError(f"{file}: search.sampler cmaes has one objective; use nsga2 or tpe for "
                            f"metric {exp.metric!r}")
    if exp.multi and sched not in ("fifo", "asha"):
        raise UserError(f"{file}: scheduler.name {sched} stops or copies trials by one metric, and metric is a "
                        f"list; use fifo, or asha (which stops trials by the first objective, {exp.metrics[0]})")
    if exp.scheduler.name == "pbt" and exp.conditional:
        raise UserError(f"{file}: scheduler pbt mutates one fixed set of parameters; a conditional choice in "
                        f"space: cannot go with it")
    if exp.constraints and s.algorithm != "optuna":
        raise UserError(f"{file}: constraints need search.algorithm optuna (its sampler steers away from "
                        f"infeasible trials); algorithm is {s.algorithm}")
    if s.warm_start is not None:
        _check_warm_start(exp, file)


def _check_warm_start(exp: Experiment, file: str) -> None:
    ws = exp.search.warm_start
    if exp.scheduler.name == "pbt":
        raise UserError(f"{file}: search.warm_start does not go with scheduler pbt (its population starts at random)")
    if isinstance(ws, list):
        names = set(exp.param_names) | set(exp.constants)
        for i, cfg in enumerate(ws):
            if not isinstance(cfg, dict) or not cfg:
                raise UserError(f"{file}: search.warm_start[{i}] must be a config mapping such as "
                                f"{{lr: 1.0e-3, batch_size: 32}}, got {cfg!r}")
            for k in cfg:
                if k not in names:
                    raise UserError(f"{file}: search.warm_start[{i}].{k}: not a parameter of this space; "
                                    f"it has {', '.join(sorted(names))}")
            _check_pinned(exp, cfg, f"{file}: search.warm_start[{i}]")
            bad = point_problem(exp.searched, cfg)
            if bad:  # the searcher would drop this config without a word
                raise UserError(f"{file}: search.warm_start[{i}].{bad[0]}: {cfg[bad[0]]!r} is not in the space; "
                                f"{bad[1]}")
        return
    if not isinstance(ws, str) or not ws:
        raise UserError(f"{file}: search.warm_start must be a list of configs or the path of an earlier "
                        f"experiment's results folder, got {ws!r}")
    check_path_text(ws, f"{file}: search.warm_start")
    folder = Path(ws).expanduser()
    if not folder.is_absolute() and exp.path is not None and not folder.exists():
        folder = Path(exp.path).parent / folder
    if not (folder / "trials.csv").is_file() or not (folder / "space.yaml").is_file():
        raise UserError(f"{file}: search.warm_start: {ws} is not a results folder (no trials.csv and space.yaml "
                        f"there); give results/<name> of a finished search")
    if exp.search.algorithm != "optuna":
        raise UserError(f"{file}: search.warm_start from a results folder seeds Optuna's study; set "
                        f"search.algorithm: optuna")
    exp.search.warm_start = str(folder.resolve())  # space.yaml keeps a path that works from anywhere
    old = _read_warm_folder(folder, f"{file}: search.warm_start")
    if old.get("family") != exp.family:
        raise UserError(f"{file}: search.warm_start: {ws} searched family {old.get('family')!r}, this space "
                        f"family {exp.family!r}; their trials cannot seed this search")


def _read_warm_folder(folder: Path, where: str) -> dict:
    """A warm-start folder's space.yaml (a mapping), and its trials.csv readable as text (the search reads
    the table itself, tuner.rundir.read_trials); a file that cannot be is one error naming it."""
    from tuner.files import read_regular

    for name in ("trials.csv", "space.yaml"):
        path = folder / name
        try:
            text = read_regular(path, None if name == "trials.csv" else MAX_SPACE_BYTES).decode("utf-8")
            data = safe_yaml(text, yaml.SafeLoader) if name == "space.yaml" else None  # as tuner wrote it
        except (OSError, UnicodeDecodeError, yaml.YAMLError, UserError) as exc:
            raise UserError(f"{where}: {path}: cannot be read ({' '.join(str(exc).split())[:200]}); give the "
                            f"results folder of a finished search") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: {folder / 'space.yaml'}: cannot be read (expected a mapping, found "
                        f"{type(data).__name__}); give the results folder of a finished search")
    return data


def _check_pinned(exp: Experiment, cfg: dict, where: str) -> None:
    """A warm-start value for a parameter that has one value (`fixed:`, or a constant in `space:`) must be
    that value: every trial gets the constant, so another one would be dropped without a word."""
    constants = exp.constants
    for k, v in cfg.items():
        if k in constants and not _same_value(v, constants[k]):
            block = "fixed" if k in exp.fixed else "space"
            raise UserError(f"{where}.{k}: {v!r}, but {block}.{k} pins it to {constants[k]!r} for every trial; "
                            f"leave {k} out of the warm start or change {block}.{k}")


def _same_value(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)  # YAML's true is not the option 1


def point_problem(space: dict, config: dict) -> tuple[str, str] | None:
    """The first searched value of `config` (a warm-start point) that this space cannot draw, as (key, what it
    allows); None when every given value fits. A key may be missing (the searcher draws it), but not set for a
    conditional branch the config does not choose."""
    drawn: set[str] = set()

    def walk(sub: dict, where: str) -> tuple[str, str] | None:
        for k, node in sub.items():
            drawn.add(k)
            if k not in config or not isinstance(node, (Distribution, Conditional)):
                continue
            v = config[k]
            if node.kind in ("choice", "grid", "conditional"):
                if not any(_same_value(v, a) for a in node.args):
                    return k, f"{where}.{k} is one of {', '.join(map(str, node.args))}"
                if isinstance(node, Conditional):
                    branch = next(b for o, b in node.options if _same_value(v, o))
                    found = walk(branch, f"{where}.{k}.{v}")
                    if found:
                        return found
                continue
            lo, hi = node.args
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            whole = node.kind in ("int", "logint")
            if not number or not lo <= v <= hi or (whole and not float(v).is_integer()):
                return k, f"{where}.{k} is {node.kind} [{lo}, {hi}]" + (" (whole numbers)" if whole else "")
        return None

    found = walk(space, "space")
    if found:
        return found
    for k in config:
        if k not in drawn:
            owners = _branch_owners(space, k)
            if owners:
                return k, (f"it belongs to {' or '.join(owners)}, which this config does not choose; "
                           f"set that choice in the same config or leave {k} out")
    return None


def _branch_owners(space: dict, key: str) -> list[str]:
    """`parent: option` for every conditional option whose sub-space (at any depth) sets `key`."""
    out = []
    for k, node in space.items():
        if isinstance(node, Conditional):
            for option, sub in node.options:
                if key in sub:
                    out.append(f"{k}: {option}")
                out += _branch_owners(sub, key)
    return out


def _one_of(file: str, key: str, value: Any, choices) -> None:
    if value not in choices:
        raise UserError(f"{file}: {key} is {value!r}; choose one of {', '.join(map(str, choices))}")


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
    out = {"name": exp.name, "family": exp.family, "dataset": dataclasses.asdict(exp.dataset),
           "metric": exp.metric, "mode": exp.mode,
           "search": dataclasses.asdict(exp.search) | {"num_samples": exp.num_samples if exp.num_samples > 0 else None},
           "scheduler": dataclasses.asdict(exp.scheduler), "resources": "auto" if exp.resources.auto else
           {"cpu": exp.resources.cpu, "gpu": exp.resources.gpu},
           "max_failures": exp.max_failures, "fixed": exp.fixed,
           "space": {k: node_yaml(v) for k, v in exp.space.items()}}
    if exp.constraints:
        out["constraints"] = exp.constraints
    if exp.storage:
        out["storage"] = exp.storage
    if exp.tracking is not None and exp.tracking.any:
        from tuner import tracking

        out["tracking"] = tracking.to_yaml(exp.tracking)
    return yaml.dump(out, Dumper=SpaceDumper, sort_keys=False)
