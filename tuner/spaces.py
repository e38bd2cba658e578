"""Search-space files: YAML + `--set` overrides -> a validated, typed `Experiment` (or `Suite`).

Everything a user can get wrong is checked here, before Ray starts, so a typo costs a second and
not a cluster allocation. Every error is a `UserError` naming the file and the dotted key.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from tuner.errors import UserError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "logint", "choice", "grid")
DATASETS = ("digits", "cifar10", "stl10", "flowers102", "stanford_cars", "imagefolder", "flowers104")


# --------------------------------------------------------------------------- distributions
@dataclass(frozen=True)
class Distribution:
    """One searched parameter: `{loguniform: [1e-4, 1e-1]}` and friends."""

    kind: str
    args: tuple

    @property
    def is_log(self) -> bool:
        return self.kind in ("loguniform", "logint")

    def to_tune(self, grid_points: int = 0):
        """The Ray Tune domain. With grid_points > 0 every distribution becomes a grid."""
        from ray import tune

        if grid_points or self.kind == "grid":
            return tune.grid_search(self.grid_values(grid_points or 3))
        lo, hi = (self.args + (None, None))[:2]
        if self.kind == "uniform":
            return tune.uniform(lo, hi)
        if self.kind == "loguniform":
            return tune.loguniform(lo, hi)
        if self.kind == "int":  # inclusive bounds, as the contract says; Ray's randint excludes hi
            return tune.randint(lo, hi + 1)
        if self.kind == "logint":
            return tune.lograndint(lo, hi + 1)
        return tune.choice(list(self.args))

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


def parse_distribution(value: Any, where: str) -> Union[Distribution, Any]:
    """`{kind: [args]}` -> Distribution; anything else is a constant."""
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
    if lo > hi:
        raise UserError(f"{where}: {kind} bounds are reversed ({lo} > {hi}); write [{hi}, {lo}]")
    if kind in ("loguniform", "logint") and lo <= 0:
        raise UserError(f"{where}: {kind} needs bounds > 0, got {lo}; use uniform/int for ranges that include 0")
    if kind in ("int", "logint"):
        if int(lo) != lo or int(hi) != hi:
            raise UserError(f"{where}: {kind} bounds must be whole numbers, got {args!r}")
        lo, hi = int(lo), int(hi)
    else:
        lo, hi = float(lo), float(hi)
    return Distribution(kind, (lo, hi))


# --------------------------------------------------------------------------- config blocks
@dataclass
class SplitConfig:
    val: float = 0.2
    test: Union[float, str] = 0.2  # a fraction, or "official" for the data set's own test set
    seed: int = 0


@dataclass
class AugmentConfig:
    hflip: bool = False
    rotation: float = 0.0        # degrees, +-
    color_jitter: float = 0.0    # brightness/contrast/saturation strength
    translate: float = 0.0       # fraction of the image size
    random_resized_crop: bool = False

    @property
    def any(self) -> bool:
        return bool(self.hflip or self.rotation or self.color_jitter or self.translate or self.random_resized_crop)


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: str | None = None
    download: bool = False
    image_size: int | None = None  # None keeps the data set's own size
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normalize: str = "dataset"     # imagenet | dataset | half | none
    limit: int | None = None       # at most this many images per split (quick runs)


@dataclass
class SearchConfig:
    algorithm: str = "optuna"      # optuna | random | grid
    num_samples: int | None = None  # default 16, or 1 pass over the grid
    max_concurrent: int = 2
    seed: int = 0
    grid_points: int = 3           # values per continuous parameter when algorithm is grid


@dataclass
class SchedulerConfig:
    name: str = "asha"             # asha | median | pbt | fifo
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: float = 3
    perturbation_interval: int = 2  # pbt


@dataclass
class ResourcesConfig:
    cpu: float = 1
    gpu: float = 0
    auto: bool = False             # fit trials to what the cluster has


@dataclass
class Experiment:
    name: str
    family: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    metric: str = "val_accuracy"
    mode: str = "max"
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)  # name -> Distribution or constant
    max_failures: int = 0
    storage: str | None = None
    path: Path | None = None
    raw: dict = field(default_factory=dict)  # the resolved YAML exactly as run

    @property
    def searched(self) -> dict[str, Distribution]:
        """Parameters that vary between trials (a `fixed` key wins over the same `space` key)."""
        return {k: v for k, v in self.space.items() if isinstance(v, Distribution) and k not in self.fixed}

    @property
    def constants(self) -> dict[str, Any]:
        """Every parameter with one value: constants in `space`, then `fixed` on top."""
        out = {k: v for k, v in self.space.items() if not isinstance(v, Distribution)}
        out.update(self.fixed)
        return out

    @property
    def num_samples(self) -> int:
        if self.search.num_samples is not None:
            return self.search.num_samples
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
            raise UserError(f"{file}: unknown key {where}.{key}; known keys: {', '.join(sorted(fields))}")
        f = fields[key]
        typ = f.type if not isinstance(f.type, str) else eval(f.type, globals())  # noqa: S307 - our own annotations
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, f"{where}.{key}", file)
        else:
            kwargs[key] = _check_type(value, f.type, f"{file}: {where}.{key}")
    return cls(**kwargs)


def apply_overrides(raw: dict, overrides: list[str], file: str) -> dict:
    """`--set a.b=VALUE`: VALUE is YAML; the dotted path is created as needed."""
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set search.num_samples=8")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as exc:
            raise UserError(f"--set {key}: value {text!r} is not valid YAML ({exc.problem})") from None
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such space file; see search_spaces/ for examples")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a space file is a YAML mapping (name:, family:, space:, ...), got {type(raw).__name__}")
    return raw


TOP_KEYS = {"name", "dataset", "family", "metric", "mode", "search", "scheduler", "resources", "fixed", "space",
            "max_failures", "storage"}
SUITE_KEYS = {"name", "suite", "ensemble"}
METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")


NAME_MAX = 100


def check_name(name: object, where: str) -> str:
    """An experiment name becomes `<results>/<name>`, which a new search removes first: so it must be one
    plain file-name component, never a path that leads elsewhere. Every way a name arrives comes through here."""
    if not isinstance(name, str):
        raise UserError(f"{where}: {repr(name)[:60]} is a {type(name).__name__}, not a name; write it as a quoted "
                        f"string such as 'my_search'")
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    shown = repr(name if len(name) <= 40 else name[:40] + "...")
    why = ("is empty" if not name
           else f"has the control character {bad!r}" if bad is not None
           else f"is {len(name)} characters long (at most {NAME_MAX})" if len(name) > NAME_MAX
           else "contains a path separator" if "/" in name or "\\" in name
           else "starts with '.'" if name.startswith(".") else None)
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
        raise UserError(f"{path}: suite must be a non-empty list of space files")
    paths = []
    for m in members:
        p = (path.parent / str(m)).resolve()
        if not p.is_file():
            raise UserError(f"{path}: suite member {m!r} not found (looked for {p})")
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
    from tuner.families import get_family

    file = str(path) if path else "<space>"
    for key in raw:
        if key not in TOP_KEYS:
            hint = " (a suite file has only name, suite and ensemble)" if key in ("suite", "ensemble") else ""
            raise UserError(f"{file}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(TOP_KEYS))}")
    if "family" not in raw:
        raise UserError(f"{file}: missing key 'family'; set one of linear, mlp, cnn, transfer, knn, features")
    family = get_family(raw["family"], where=f"{file}: family")
    name = raw["name"] if raw.get("name") is not None else (path.stem if path else "experiment")
    check_name(name, f"{file}: name")

    dataset = _build(DatasetConfig, raw.get("dataset"), "dataset", file)
    search = _build(SearchConfig, raw.get("search"), "search", file)
    scheduler = _build(SchedulerConfig, raw.get("scheduler"), "scheduler", file)
    res_raw = raw.get("resources")
    resources = ResourcesConfig(auto=True) if res_raw == "auto" else _build(ResourcesConfig, res_raw, "resources", file)

    _one_of(file, "dataset.name", dataset.name, DATASETS)
    _one_of(file, "dataset.normalize", dataset.normalize, ("imagenet", "dataset", "half", "none"))
    _one_of(file, "search.algorithm", search.algorithm, ("optuna", "random", "grid"))
    _one_of(file, "scheduler.name", scheduler.name, ("asha", "median", "pbt", "fifo"))
    mode = raw.get("mode", "max")
    _one_of(file, "mode", mode, ("max", "min"))
    metric = raw.get("metric", "val_accuracy")
    _one_of(file, "metric", metric, METRICS)
    sp = dataset.split
    for key in ("val", "test"):
        v = getattr(sp, key)
        if v == "official":
            continue
        if isinstance(v, str) or not 0 <= v < 1:
            raise UserError(f"{file}: dataset.split.{key} must be a fraction in [0, 1) or 'official', got {v!r}")
    if sp.val == "official":
        raise UserError(f"{file}: dataset.split.val: 'official' is only for test; give val a fraction such as 0.2")
    if not isinstance(sp.test, str) and sp.val + sp.test >= 1:
        raise UserError(f"{file}: dataset.split: val + test = {sp.val + sp.test} leaves nothing to train on")
    if dataset.image_size is not None and dataset.image_size < 4:
        raise UserError(f"{file}: dataset.image_size must be at least 4 pixels, got {dataset.image_size}")
    if dataset.name not in ("digits",) and not dataset.root and not dataset.download:
        raise UserError(f"{file}: dataset.root is not set for {dataset.name}; "
                        f"set dataset.root to the data folder (or dataset.download: true where allowed)")
    for key, low in (("num_samples", 1), ("max_concurrent", 1), ("grid_points", 2)):
        v = getattr(search, key)
        if v is not None and v < low:
            raise UserError(f"{file}: search.{key} must be >= {low}, got {v}")
    if scheduler.max_epochs < 1 or scheduler.grace_period < 1 or scheduler.grace_period > scheduler.max_epochs:
        raise UserError(f"{file}: scheduler needs 1 <= grace_period ({scheduler.grace_period}) <= "
                        f"max_epochs ({scheduler.max_epochs})")
    if scheduler.reduction_factor <= 1:
        raise UserError(f"{file}: scheduler.reduction_factor must be > 1, got {scheduler.reduction_factor}")
    if resources.cpu <= 0 or resources.gpu < 0:
        raise UserError(f"{file}: resources need cpu > 0 and gpu >= 0, got cpu={resources.cpu} gpu={resources.gpu}")
    if resources.gpu > 1 and resources.gpu != int(resources.gpu):
        raise UserError(f"{file}: resources.gpu above 1 must be whole, got {resources.gpu}")

    fixed = raw.get("fixed") or {}
    space_raw = raw.get("space") or {}
    for key, block in (("fixed", fixed), ("space", space_raw)):
        if not isinstance(block, dict):
            raise UserError(f"{file}: {key} must be a mapping of parameter: value")
    space = {k: parse_distribution(v, f"{file}: space.{k}") for k, v in space_raw.items()}
    for k, v in fixed.items():
        if isinstance(parse_distribution(v, f"{file}: fixed.{k}"), Distribution):
            raise UserError(f"{file}: fixed.{k} is a distribution; move it to space: or give one value")

    exp = Experiment(name=name, family=raw["family"], dataset=dataset, metric=metric, mode=mode, search=search,
                     scheduler=scheduler, resources=resources, fixed=dict(fixed), space=space,
                     max_failures=int(raw.get("max_failures", 0)), storage=raw.get("storage"), path=path, raw=raw)
    if search.algorithm == "optuna" and any(d.kind == "grid" for d in exp.searched.values()):
        bad = next(k for k, d in exp.searched.items() if d.kind == "grid")
        raise UserError(f"{file}: space.{bad} is a grid, which Optuna cannot enumerate; "
                        f"use choice, or set search.algorithm to grid or random")
    family.validate(exp.constants, exp.searched, file)
    return exp


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
           "metric": exp.metric, "mode": exp.mode, "search": dataclasses.asdict(exp.search) | {"num_samples": exp.num_samples},
           "scheduler": dataclasses.asdict(exp.scheduler), "resources": "auto" if exp.resources.auto else
           {"cpu": exp.resources.cpu, "gpu": exp.resources.gpu},
           "max_failures": exp.max_failures, "fixed": exp.fixed,
           "space": {k: (v.to_yaml() if isinstance(v, Distribution) else v) for k, v in exp.space.items()}}
    if exp.storage:
        out["storage"] = exp.storage
    return yaml.safe_dump(out, sort_keys=False)
