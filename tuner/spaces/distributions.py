"""The distributions of a space file's `space:` block: `{loguniform: [1e-4, 1e-1]}` and friends, parsed into
typed objects that say what they are (`is_categorical`, `is_int`, `log`, `low`/`high`), so that no consumer
(the searchers' adapters, the report, the schema, PBT's bounds) tests kind strings of its own.

The six kinds are one table, `KINDS`, in the manner of Optuna's `FloatDistribution(log=True)` /
`IntDistribution` / `CategoricalDistribution`; the file keeps its grammar (`{kind: args}`), so a
Distribution still carries its `kind` and writes itself back with `to_yaml`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from tuner.errors import UserError


@dataclass(frozen=True)
class Kind:
    """One distribution kind of the grammar: a list of values, or a [lo, hi] range (whole numbers, log scale)."""

    name: str
    categorical: bool = False
    integer: bool = False
    log: bool = False


KINDS = {k.name: k for k in (Kind("uniform"), Kind("loguniform", log=True), Kind("int", integer=True),
                             Kind("logint", integer=True, log=True), Kind("choice", categorical=True),
                             Kind("grid", categorical=True))}
DISTRIBUTIONS = tuple(KINDS)
INT_LIMIT = 2**53  # int / logint bounds: past this floats skip integers and Ray's sampler overflows


def finite(x: int | float) -> bool:
    """A number that is neither NaN nor infinite and fits a float (YAML ints have no size limit)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


@dataclass(frozen=True)
class Distribution:
    """One searched parameter: `{loguniform: [1e-4, 1e-1]}` and friends. `args` is the list of values of a
    categorical kind, or (lo, hi) of a numeric one."""

    kind: str
    args: tuple

    @property
    def is_categorical(self) -> bool:
        """A list of values (choice, grid), not a range."""
        return KINDS[self.kind].categorical

    @property
    def is_numeric(self) -> bool:
        """A [lo, hi] range (uniform, loguniform, int, logint)."""
        return not KINDS[self.kind].categorical

    @property
    def is_int(self) -> bool:
        """A range of whole numbers (int, logint)."""
        return KINDS[self.kind].integer

    @property
    def log(self) -> bool:
        """Drawn on a log scale (loguniform, logint)."""
        return KINDS[self.kind].log

    @property
    def is_grid(self) -> bool:
        """Every value is run (`grid:`), not drawn."""
        return self.kind == "grid"

    @property
    def low(self) -> Any:
        return self.args[0]

    @property
    def high(self) -> Any:
        return self.args[-1]

    def contains(self, v: Any) -> bool:
        """Whether a sampler could draw `v` (a warm-start point, a clipped value)."""
        if self.is_categorical:
            return any(same_value(v, a) for a in self.args)
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return number and self.low <= v <= self.high and (not self.is_int or float(v).is_integer())

    def grid_values(self, points: int) -> list:
        """Finite values for a grid search: the listed ones, or `points` evenly (log-)spaced ones."""
        if self.is_categorical:
            return list(self.args)
        lo, hi = self.args
        if self.log:
            vals = [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / max(points - 1, 1))
                    for i in range(points)]
        else:
            vals = [lo + i * (hi - lo) / max(points - 1, 1) for i in range(points)]
        if self.is_int:
            return sorted({int(round(v)) for v in vals})
        return [float(f"{v:.6g}") for v in vals]

    def to_yaml(self) -> dict:
        return {self.kind: list(self.args)}


def same_value(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)  # YAML's true is not the option 1


@dataclass(frozen=True)
class Conditional:
    """A `choice` written as a mapping: each option brings its own sub-space, searched only when drawn.

    `options` maps an option's value to its sub-space (name -> Distribution, Conditional or constant).
    """

    options: tuple  # ((value, {name: node}), ...) in file order

    kind = "conditional"
    is_categorical = True  # its options are a list of values, as a choice's
    is_numeric = is_int = log = is_grid = False

    @property
    def args(self) -> tuple:
        return tuple(v for v, _ in self.options)

    def as_choice(self) -> Distribution:
        """The choice between the options alone, without their sub-spaces."""
        return Distribution("choice", self.args)

    def branch(self, value: Any) -> dict:
        """The sub-space of the option `value`."""
        return next(sub for opt, sub in self.options if same_value(opt, value))

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


Node = Union[Distribution, Conditional]


def is_searched(node: Any) -> bool:
    """A node that varies between trials (a distribution or a conditional choice), not a constant."""
    return isinstance(node, (Distribution, Conditional))


def node_yaml(node: Any) -> Any:
    return node.to_yaml() if is_searched(node) else node


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
        return _parse_conditional(value["choice"], where)
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
        if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
            kind = next(iter(value))
            raise UserError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
        return value
    kind, args = next(iter(value.items()))
    if not isinstance(args, list) or not args:
        raise UserError(f"{where}: {kind} needs a non-empty list, e.g. {{{kind}: [..]}}")
    if KINDS[kind].categorical:
        return Distribution(kind, tuple(args))
    return Distribution(kind, _range(KINDS[kind], args, where))


def _parse_conditional(choice: dict, where: str) -> Conditional:
    if not choice:
        raise UserError(f"{where}.choice: a conditional choice needs at least one option")
    options = []
    for opt, sub in choice.items():
        sub = {} if sub is None else sub
        if not isinstance(sub, dict):
            raise UserError(f"{where}.choice.{opt}: an option's sub-space is a mapping of parameter: "
                            f"distribution (or {{}} for none), got {sub!r}")
        options.append((opt, {k: parse_distribution(v, f"{where}.choice.{opt}.{k}") for k, v in sub.items()}))
    return Conditional(tuple(options))


def _range(kind: Kind, args: list, where: str) -> tuple:
    """[lo, hi] of a numeric kind, checked: two finite numbers in order, > 0 on a log scale, whole for ints."""
    name = kind.name
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise UserError(f"{where}: {name} needs two numbers [lo, hi], got {args!r}")
    lo, hi = args
    if not (finite(lo) and finite(hi)):
        raise UserError(f"{where}: {name} bounds must be finite numbers, got {args!r}")
    if lo > hi:
        raise UserError(f"{where}: {name} bounds are reversed ({lo} > {hi}); write [{hi}, {lo}]")
    if kind.log and lo <= 0:
        raise UserError(f"{where}: {name} needs bounds > 0, got {lo}; use uniform/int for ranges that include 0")
    if not kind.integer:
        return float(lo), float(hi)
    if int(lo) != lo or int(hi) != hi:
        raise UserError(f"{where}: {name} bounds must be whole numbers, got {args!r}")
    if max(abs(lo), abs(hi)) > INT_LIMIT:
        raise UserError(f"{where}: {name} bounds must lie within +-2**53, got {args!r}")
    return int(lo), int(hi)
