"""A fully connected network over flattened pixels (the STL-10 seed's 3-, 5- and 7-layer MLPs)."""
from __future__ import annotations

import torch.nn as nn

from tuner.families.base import DataInfo, Param, register_family
from tuner.families.trained import ACTIVATIONS, TorchFamily, mlp_layers


@register_family
class MLP(TorchFamily):
    name = "mlp"
    own_params = {
        "hidden": Param([512, 256, 128], "list", help="hidden widths, input side first"),
        "dropout": Param(0.0, "float", low=0.0, high=0.95),
        "batchnorm": Param(False, "bool"),
        "activation": Param("relu", "str", tuple(ACTIVATIONS)),
    }

    def build(self, cfg: dict, info: DataInfo) -> nn.Module:
        hidden = [int(w) for w in cfg["hidden"]]
        layers = mlp_layers(info.channels * info.height * info.width, hidden, cfg["dropout"], cfg["batchnorm"],
                            cfg["activation"])
        last = hidden[-1] if hidden else info.channels * info.height * info.width
        return nn.Sequential(nn.Flatten(), *layers, nn.Linear(last, info.num_classes))
