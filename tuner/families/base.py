"""The family registry (in the manner of timm's `register_model`) and what every family declares.

A family is plain PyTorch / scikit-learn with no Ray in it: it declares the parameters it takes (so
`validate` can reject a key it does not take) and makes a `Learner` (`tuner.types`), which `fit`s one
epoch at a time. The Ray trainable, the retrain of the best config, `tuner.load` and the tests all drive
the same `Learner` through the same methods, so a family needs nothing beyond this contract.

Adding a family: a `Family` subclass with a `name`, its `params` and a `learner` method, registered with
`@register_family`; the learner implements the four abstract methods of `Learner`. This one is complete
(tests/test_families_contract.py runs this very text through the contract every shipped family keeps):

```python
import time

import numpy as np
import torch

from tuner.families.base import Family, Learner, Param, register_family
from tuner.metrics import proba_metrics


class CentroidLearner(Learner):
    checkpoint_every_epoch = False  # it fits in one step: nothing to resume part-way

    def __init__(self, cfg, info, ctx=None):
        self.cfg, self.info, self.centroids = cfg, info, None

    def vectors(self, images):  # uint8 NHWC -> float (N, H*W*C) in [0, 1]
        return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)

    def fit(self, data, max_epochs):
        t0 = time.perf_counter()
        x, y = self.vectors(data.x_train), torch.as_tensor(np.asarray(data.y_train))
        self.centroids = torch.stack([x[y == c].mean(0) for c in range(self.info.num_classes)])
        loss, acc = proba_metrics(self.predict_proba(data.x_val), np.asarray(data.y_val))
        yield {"epoch": 1, "val_loss": loss, "val_accuracy": acc, "epoch_time_s": time.perf_counter() - t0}

    def predict_proba(self, images):
        distance = torch.cdist(self.vectors(images), self.centroids)
        return torch.softmax(-distance / self.cfg["temperature"], 1).numpy()

    def state_dict(self):
        return {"centroids": self.centroids}

    def load_state_dict(self, state):
        self.centroids = state["centroids"]


@register_family
class NearestCentroid(Family):
    # each class is the mean of its training images; an image goes to the nearest mean
    name = "nearest_centroid"
    iterative = False  # one report per trial: the driver schedules it FIFO
    params = {"temperature": Param(0.1, "float", low=1e-6, help="softmax over -distance / temperature")}

    def learner(self, config, info, ctx=None):
        return CentroidLearner(self.resolve(config), info, ctx)
```

`nearest_centroid` can then be a space file's `family:` (with `space: {temperature: {loguniform: [0.01, 1]}}`).
To ship a family, put its module in tuner/families/, import it in tuner/families/__init__.py, add a small
config for it to `CASES` in tests/test_families_contract.py, and run `python -m tuner.docs` so
docs/families.md lists its parameters (a family kept outside tuner runs the same checks:
`tuner.testing.check_family`). A gradient-trained network subclasses `trained.TorchFamily`
instead and only `build`s its `nn.Module` (see linear.py); the training loop, checkpoints,
PBT and bundles then come from `tuner.engine.TorchLearner`.
"""
from __future__ import annotations

from typing import Any, ClassVar

from tuner.errors import UserError
from tuner.types import DataInfo, Learner, Param, RunContext

__all__ = ["FAMILIES", "DataInfo", "Family", "Learner", "Param", "RunContext", "check_param", "get_family",
           "register_family", "values"]


def check_param(param: Param, value: Any, where: str) -> None:
    """`param.problem` as the UserError a space file's author sees (`where` names the file and key)."""
    problem = param.problem(value, where)
    if problem:
        raise UserError(problem)


class Family:
    """What a family declares; one instance per family lives in `FAMILIES`.

    A subclass sets `name` (what a space file's `family:` says), `params` (every key it takes, with its
    default, type and bounds: `validate`, the JSON schema and docs/families.md are made from them) and
    implements `learner`. The other methods have defaults; override them for family-specific checks
    (`check_config`, `preflight`), embeddings (`features`, `input_channels`), one-off work the driver does
    before the trials start (`warm_up`) or a one-step fit (`iterative`).
    """

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    iterative: ClassVar[bool] = True  # False: `fit` reports once (knn, features); the driver then runs FIFO

    def validate(self, constants: dict, searched: dict, file: str) -> None:
        """Check a space file's values for this family, from the file alone (`tuner validate`).

        constants: key -> value (the `fixed:` block and constant `space:` entries).
        searched: key -> `spaces.Distribution` (its `kind`, `args`, `is_categorical`, `low` and `high`).
        file: the space file's name, for the message.
        Raises a `UserError` naming the file and key for a key this family does not take, or a value (or
        searched bound or choice) outside its `Param`; then runs `check_config` on the constants.
        """
        for key, value in list(constants.items()) + list(searched.items()):
            if key not in self.params:
                raise UserError(f"{file}: family {self.name!r} does not take {key!r}; "
                                f"it takes {', '.join(sorted(self.params))}")
        for key, value in constants.items():
            check_param(self.params[key], value, f"{file}: {key}")
        for key, dist in searched.items():
            param = self.params[key]
            if dist.is_categorical:
                for v in dist.args:
                    check_param(param, v, f"{file}: space.{key}")
            elif param.type not in ("float", "int", "any"):
                raise UserError(f"{file}: space.{key} takes {param.type} values; use choice: [...] instead of "
                                f"{dist.kind}")
            else:
                check_param(param, dist.low, f"{file}: space.{key} lower bound")
                check_param(param, dist.high, f"{file}: space.{key} upper bound")
        self.check_config({k: v for k, v in constants.items()}, file)

    def check_config(self, constants: dict, file: str) -> None:
        """Family-specific checks of constant values, from the file alone (`validate` runs these).

        constants: key -> value; file: for the message. Raises a `UserError`; returns nothing.
        """

    def preflight(self, constants: dict, searched: dict, file: str) -> None:
        """What `validate` leaves to the machine that runs the search, checked before Ray starts:
        are the weights files and bundles this search may load here?

        Arguments as `validate`. Raises a `UserError` for anything missing; default: nothing to check.
        """

    def warm_up(self, constants: dict, searched: dict, data, ctx: RunContext) -> None:
        """One-off work every trial would otherwise begin with (embedding the images, neighbour tables),
        done by the driver before the trials start, into the same caches the trials read: once, on every
        core, with progress on the console (`ctx.progress`), instead of inside the first trial while the
        others wait for its file lock. Arguments as `validate`, plus the prepared data and where to run.
        Default: nothing to do."""

    def resolve(self, config: dict) -> dict:
        """config (a trial's values) with every missing parameter at its default; keys this family does not
        take are dropped. Returns a new dict with exactly the keys of `params`."""
        out = {k: p.default for k, p in self.params.items()}
        out.update({k: v for k, v in config.items() if k in self.params})
        return out

    @property
    def pbt_params(self) -> list[str]:
        """The keys population based training may perturb in a running trial (`Param(pbt=True)`); the driver
        reads them here, and `Learner.hparams` / `adapt_state` carry them across a PBT exploit."""
        return [k for k, p in self.params.items() if p.pbt]

    def fusable(self, config: dict) -> bool:
        """Can this resolved config train as a member of a fused model (`tuner.fused`), beside configs that
        differ from it only in parameters marked `Param(fusable=True)`? Default: no."""
        return False

    def learner(self, config: dict, info: DataInfo, ctx: RunContext | None = None) -> Learner:
        """A fresh, unfitted learner.

        config: the trial's values (missing keys take their `Param` defaults; `resolve` fills them in).
        info: the data's shape, classes and normalisation.
        ctx: where and how it runs (device, cache folder, augmentation, keep-best); None: `RunContext()`.
        Returns a `Learner`; the same config builds the same initial model.
        """
        raise NotImplementedError

    def features(self, learner: Learner) -> Any:
        """The fitted learner's network with its classifier cut off (timm's `forward_features`).

        learner: a learner this family made, fitted or with `load_weights` done.
        Returns an `nn.Module` from a normalised NCHW float batch (with `input_channels` channels) to
        features, what `knn` and `features` embed with when this family's bundle is their backbone;
        None (the default): no network to cut.
        """
        return None

    def input_channels(self, info: DataInfo) -> int:
        """The channels this family's networks take for data with `info.channels` channels (grey data is
        repeated to fit); default: the data's own."""
        return info.channels


def values(key: str, constants: dict, searched: dict, default: Any) -> list | None:
    """Every value a search may give `key`: its constant, its choices or grid points, [default] when the
    space leaves it out; None for a numeric range (not a list of values)."""
    if key in constants:
        return [constants[key]]
    if key not in searched:
        return [default]
    dist = searched[key]
    return list(dist.args) if dist.is_categorical else None  # a conditional choice: its options


FAMILIES: dict[str, Family] = {}


def register_family(cls):
    """Class decorator: put one instance of the `Family` subclass `cls` in `FAMILIES` under `cls.name`.

    Returns `cls` unchanged. Raises ValueError when the name is taken (a programming error, not a user's).
    """
    if cls.name in FAMILIES:
        raise ValueError(f"family {cls.name!r} registered twice")
    FAMILIES[cls.name] = cls()
    return cls


def shipped_families() -> dict[str, Family]:
    """The families tuner itself ships, without those a user or a test registers at run time."""
    return {n: f for n, f in FAMILIES.items() if type(f).__module__.startswith("tuner.families.")}


def get_family(name: Any, where: str = "family") -> Family:
    """The registered family called `name`; a `UserError` that starts with `where` and lists the known
    names when there is none (so `where` names the file and key the name came from)."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise UserError(f"{where}: unknown family {name!r}; choose one of {', '.join(sorted(FAMILIES))}") from None
