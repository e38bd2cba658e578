"""A fully connected network over flattened pixels (the STL-10 seed's 3-, 5- and 7-layer MLPs)."""
from __future__ import annotations

import torch.nn as nn

from tuner.families.base import DataInfo, Param, register_family
from tuner.families.trained import ACTIVATIONS, TorchFamily, mlp_layers


@register_family
class MLP(TorchFamily):
    """A fully connected network over the flattened pixels: `hidden` layers, then the output layer.

    Use it to see how far depth and width go without convolutions (the STL-10 seed's 3-, 5- and
    7-layer networks); it ignores where pixels are, so it suits small images such as digits.
    """
    name = "mlp"
    own_params = {
        "hidden": Param([512, 256, 128], "list", help="hidden widths, input side first"),
        "dropout": Param(0.0, "float", low=0.0, high=0.95, pbt=True, fusable=True, help="after each hidden layer"),
        "batchnorm": Param(False, "bool", help="batch norm after each hidden layer"),
        "activation": Param("relu", "str", tuple(ACTIVATIONS), help="leaky_relu has slope 0.1"),
    }

    def build(self, cfg: dict, info: DataInfo) -> nn.Module:
        hidden = [int(w) for w in cfg["hidden"]]
        layers = mlp_layers(info.channels * info.height * info.width, hidden, cfg["dropout"], cfg["batchnorm"],
                            cfg["activation"])
        last = hidden[-1] if hidden else info.channels * info.height * info.width
        return nn.Sequential(nn.Flatten(), *layers, nn.Linear(last, info.num_classes))
