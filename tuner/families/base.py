"""The family registry (in the manner of timm's `register_model`) and what every family declares.

A family is plain PyTorch / scikit-learn with no Ray in it: it declares the parameters it takes (so
`validate` can reject a key it does not take) and makes a `Learner`, which `fit`s one epoch at a time.
The Ray trainable, the retrain of the best config and the tests all drive the same `Learner`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Protocol

import numpy as np

from tuner.errors import UserError


@dataclass(frozen=True)
class Param:
    """A parameter a family takes: its default, its type, and (optionally) its allowed values or bounds."""

    default: Any
    type: str = "float"          # float | int | str | bool | list | dict | any
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    help: str = ""

    def check(self, value: Any, where: str) -> None:
        ok = {
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "list": isinstance(value, list),
            "dict": isinstance(value, dict),
            "any": True,
        }[self.type]
        if self.choices is not None and value in self.choices:
            return
        if not ok:
            allowed = f"one of {', '.join(map(str, self.choices))}" if self.choices else f"a {self.type}"
            raise UserError(f"{where}: expected {allowed}, got {value!r}")
        if self.choices is not None and self.type == "str":
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.low is not None and isinstance(value, (int, float)) and value < self.low:
            raise UserError(f"{where}: must be >= {self.low}, got {value!r}")
        if self.high is not None and isinstance(value, (int, float)) and value > self.high:
            raise UserError(f"{where}: must be <= {self.high}, got {value!r}")


@dataclass(frozen=True)
class DataInfo:
    """What a family needs to know about the data to build a model."""

    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    name: str = ""


class Learner(Protocol):
    """One model being trained; the trainable, the retrain and the tests drive it the same way."""

    num_params: int

    def fit(self, data, max_epochs: int) -> Iterator[dict]:
        """Train, yielding the contract's metrics after each epoch (once for non-iterative families).
        Continues from the loaded state if `load_state_dict` was called."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC images (already at the training size) -> class probabilities."""


class Family:
    """Base class: subclasses set `name`, `params` and implement `learner`."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    iterative: ClassVar[bool] = True

    def validate(self, constants: dict, searched: dict, file: str) -> None:
        """Reject keys this family does not take and values outside a parameter's choices."""
        for key, value in list(constants.items()) + list(searched.items()):
            if key not in self.params:
                raise UserError(f"{file}: family {self.name!r} does not take {key!r}; "
                                f"it takes {', '.join(sorted(self.params))}")
        for key, value in constants.items():
            self.params[key].check(value, f"{file}: {key}")
        for key, dist in searched.items():
            param = self.params[key]
            if dist.kind in ("choice", "grid"):
                for v in dist.args:
                    param.check(v, f"{file}: space.{key}")
            elif param.type not in ("float", "int", "any"):
                raise UserError(f"{file}: space.{key} takes {param.type} values; use choice: [...] instead of "
                                f"{dist.kind}")
            else:
                param.check(dist.args[0], f"{file}: space.{key} lower bound")
                param.check(dist.args[1], f"{file}: space.{key} upper bound")
        self.check_config({k: v for k, v in constants.items()}, file)

    def check_config(self, constants: dict, file: str) -> None:
        """Family-specific checks of constant values, from the file alone (`validate` runs these)."""

    def preflight(self, constants: dict, searched: dict, file: str) -> None:
        """What `validate` leaves to the machine that runs the search, checked before Ray starts:
        are the weights files and bundles this search may load here?"""

    def resolve(self, config: dict) -> dict:
        """Defaults filled in under the given config."""
        out = {k: p.default for k, p in self.params.items()}
        out.update({k: v for k, v in config.items() if k in self.params})
        return out

    def learner(self, config: dict, info: DataInfo, device: str = "cpu") -> Learner:
        raise NotImplementedError


FAMILIES: dict[str, Family] = {}


def register_family(cls):
    """Class decorator: make a family available by its `name`."""
    if cls.name in FAMILIES:
        raise ValueError(f"family {cls.name!r} registered twice")
    FAMILIES[cls.name] = cls()
    return cls


def get_family(name: Any, where: str = "family") -> Family:
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise UserError(f"{where}: unknown family {name!r}; choose one of {', '.join(sorted(FAMILIES))}") from None
