"""What the gradient-trained families (linear, mlp, cnn, transfer) share: the common parameters and a learner."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from tuner.engine import COMMON_PARAMS, TorchLearner
from tuner.families.base import DataInfo, Family, RunContext

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1),
                                                   "gelu": nn.GELU}


class TorchFamily(Family):
    """A family that builds an `nn.Module`; training is the shared `TorchLearner`."""

    own_params: dict = {}
    learner_class = TorchLearner

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.params = {**COMMON_PARAMS, **cls.own_params}

    def build(self, cfg: dict, info: DataInfo) -> nn.Module:
        raise NotImplementedError

    def learner(self, config: dict, info: DataInfo, ctx: RunContext | None = None) -> TorchLearner:
        cfg = self.resolve(config)
        torch.manual_seed(int(cfg["seed"]))  # the same config builds the same initial weights
        return self.learner_class(self.build(cfg, info), cfg, info, ctx or RunContext())

    def fusable(self, config: dict) -> bool:
        return True  # a Sequential of the layers tuner.fused.net knows; it says so at build time otherwise

    def features(self, learner: TorchLearner) -> nn.Module:  # type: ignore[override]  # only its own learners
        """Everything before the output layer (a linear model's features are its flattened input)."""
        mods = list(learner.model.children())
        return nn.Sequential(*mods[:-1]) if len(mods) > 1 else nn.Flatten()


def mlp_layers(in_features: int, widths: list[int], dropout: float, batchnorm: bool,
               activation: str) -> list[nn.Module]:
    """Linear -> (BatchNorm) -> activation -> (Dropout), per hidden width."""
    layers: list[nn.Module] = []
    for w in widths:
        layers.append(nn.Linear(in_features, int(w)))
        if batchnorm:
            layers.append(nn.BatchNorm1d(int(w)))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = int(w)
    return layers


def pool_layers(pool: str, channels: int, height: int, width: int) -> tuple[list[nn.Module], int]:
    """A feature map (channels x height x width) -> a vector: `gap` averages each channel, `flatten` keeps the
    whole map. Returns the layers and the vector's length."""
    if pool == "gap":
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten()], channels
    return [nn.Flatten()], channels * height * width


def head_layers(features: int, hidden: list, dropout: float, batchnorm: bool, activation: str,
                num_classes: int) -> list[nn.Module]:
    """The classifier on a pooled vector, for cnn's `fc` and transfer's `hidden`: the hidden layers
    (`mlp_layers`), dropout before the output layer when there are none, then the output layer."""
    widths = [int(w) for w in hidden]
    layers = mlp_layers(features, widths, dropout, batchnorm, activation)
    if dropout and not widths:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-1] if widths else features, num_classes))
    return layers
