"""A VGG-style CNN from scratch: blocks of 3x3 convolutions, each block doubling the channels and halving
the image (the custom CNNs of the Cars, CIFAR-10, Flowers and STL-10 seeds)."""
from __future__ import annotations

import torch.nn as nn

from tuner.families.base import DataInfo, Param, register_family
from tuner.families.trained import ACTIVATIONS, TorchFamily, head_layers, pool_layers


@register_family
class CNN(TorchFamily):
    """A VGG-style CNN trained from scratch: `blocks` of convolutions (3x3 by default), each block
    doubling the channels and halving the image, then global average pooling or flatten, optional fc
    layers and the output layer.

    Use it when there are no pretrained weights to lean on, or to measure what transfer learning
    adds (the custom CNNs of the Cars, CIFAR-10, Flowers and STL-10 seeds).
    """
    name = "cnn"
    own_params = {
        "blocks": Param(3, "int", low=1, high=8, help="each ends in 2x2 max pooling"),
        "channels": Param(32, "int", low=1, help="first block; doubles per block"),
        "convs_per_block": Param(2, "int", low=1, high=6, help="convolutions before each pooling"),
        "kernel_size": Param(3, "int", low=1, high=11, help="square kernels, 'same' padding"),
        "batchnorm": Param(True, "bool", help="after every convolution and fc layer"),
        "spatial_dropout": Param(0.0, "float", low=0.0, high=0.9, fusable=True,
                                 help="channel dropout after each block"),
        "dropout": Param(0.0, "float", low=0.0, high=0.95, pbt=True, fusable=True,
                         help="after each fc layer (before the output layer when fc is empty)"),
        "pool": Param("gap", "str", ("gap", "flatten"),
                      help="gap: global average pooling; flatten: the whole last feature map"),
        "fc": Param([], "list", help="hidden widths of the classifier"),
        "activation": Param("relu", "str", tuple(ACTIVATIONS), help="leaky_relu has slope 0.1"),
    }

    def features(self, learner) -> nn.Module:
        """The convolutional part up to its pooling / flatten (the fc layers belong to the classifier)."""
        mods = list(learner.model.children())
        flat = [i for i, m in enumerate(mods) if isinstance(m, nn.Flatten)]
        return nn.Sequential(*mods[:flat[-1] + 1])

    def build(self, cfg: dict, info: DataInfo) -> nn.Module:
        layers: list[nn.Module] = []
        c_in, size = info.channels, min(info.height, info.width)
        c = int(cfg["channels"])
        k = int(cfg["kernel_size"])
        for b in range(int(cfg["blocks"])):
            for _ in range(int(cfg["convs_per_block"])):
                layers.append(nn.Conv2d(c_in, c, k, padding=k // 2, bias=not cfg["batchnorm"]))
                if cfg["batchnorm"]:
                    layers.append(nn.BatchNorm2d(c))
                layers.append(ACTIVATIONS[cfg["activation"]]())
                c_in = c
            if size >= 2:  # small images (digits are 8x8) stop shrinking at 1x1
                layers.append(nn.MaxPool2d(2))
                size //= 2
            if cfg["spatial_dropout"]:
                layers.append(nn.Dropout2d(cfg["spatial_dropout"]))
            c *= 2
        pool, features = pool_layers(cfg["pool"], c_in, size, size)
        layers += pool
        layers += head_layers(features, cfg["fc"], cfg["dropout"], cfg["batchnorm"], cfg["activation"],
                              info.num_classes)
        return nn.Sequential(*layers)
