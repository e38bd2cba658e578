"""Logistic regression on flattened pixels: the baseline every other family has to beat."""
from __future__ import annotations

import torch.nn as nn

from tuner.families.base import DataInfo, register_family
from tuner.families.trained import TorchFamily


@register_family
class Linear(TorchFamily):
    name = "linear"
    own_params: dict = {}

    def build(self, cfg: dict, info: DataInfo) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(info.channels * info.height * info.width, info.num_classes))
