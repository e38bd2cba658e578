"""Logistic regression on flattened pixels: the baseline every other family has to beat."""
from __future__ import annotations

import torch.nn as nn

from tuner.families.base import DataInfo, register_family
from tuner.families.trained import TorchFamily


@register_family
class Linear(TorchFamily):
    """Logistic regression on the flattened pixels: one linear layer from every pixel to every class.

    The baseline every other family has to beat (the STL-10 seed's first model). Cheap enough to search
    lr, batch size and optimizer widely; it takes only the common training parameters.
    """
    name = "linear"
    own_params: dict = {}

    def build(self, cfg: dict, info: DataInfo) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(info.channels * info.height * info.width, info.num_classes))
