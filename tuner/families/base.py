"""The family registry (in the manner of timm's `register_model`) and what every family declares.

A family is plain PyTorch / scikit-learn with no Ray in it: it declares the parameters it takes (so
`validate` can reject a key it does not take) and makes a `Learner`, which `fit`s one epoch at a time.
The Ray trainable, the retrain of the best config and the tests all drive the same `Learner`.
"""
from __future__ import annotations

from typing import Any, ClassVar

from tuner.errors import UserError
from tuner.types import DataInfo, Learner, Param, RunContext

__all__ = ["FAMILIES", "DataInfo", "Family", "Learner", "Param", "RunContext", "check_param", "get_family",
           "register_family"]


def check_param(param: Param, value: Any, where: str) -> None:
    """`param.problem` as the UserError a space file's author sees."""
    problem = param.problem(value, where)
    if problem:
        raise UserError(problem)



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
            check_param(self.params[key], value, f"{file}: {key}")
        for key, dist in searched.items():
            param = self.params[key]
            if dist.kind in ("choice", "grid"):
                for v in dist.args:
                    check_param(param, v, f"{file}: space.{key}")
            elif param.type not in ("float", "int", "any"):
                raise UserError(f"{file}: space.{key} takes {param.type} values; use choice: [...] instead of "
                                f"{dist.kind}")
            else:
                check_param(param, dist.args[0], f"{file}: space.{key} lower bound")
                check_param(param, dist.args[1], f"{file}: space.{key} upper bound")
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

    @property
    def pbt_params(self) -> list[str]:
        """The parameters population based training may perturb in a running trial (`Param(pbt=True)`)."""
        return [k for k, p in self.params.items() if p.pbt]

    def learner(self, config: dict, info: DataInfo, ctx: RunContext | None = None) -> Learner:
        """A fresh, unfitted learner.

        config: the trial's values (missing keys take their `Param` defaults; `resolve` fills them in).
        info: the data's shape, classes and normalisation.
        ctx: where and how it runs (device, cache folder, augmentation, keep-best); None: `RunContext()`.
        Returns a `Learner`; the same config builds the same initial model.
        """
        raise NotImplementedError

    def features(self, learner: Learner) -> Any:
        """The fitted learner's network with its classifier cut off: an `nn.Module` from a normalised NCHW
        float batch (with `input_channels` channels) to features (timm's `forward_features`); what `knn`
        and `features` embed with when this family's bundle is their backbone. None: no network to cut."""
        return None

    def input_channels(self, info: DataInfo) -> int:
        """The channels this family's networks take for data with `info.channels` (grey data is repeated)."""
        return info.channels


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
