"""Data augmentation on the device, one affine grid per batch, from a seeded CPU generator."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tuner.engine.device import to_device


def augment(x: torch.Tensor, aug, gen: torch.Generator) -> torch.Tensor:
    """Random flips, rotation, translation, resized crops and colour jitter on a float NCHW batch.

    All geometric changes go through one affine grid per batch, so cost does not grow with the number
    of augmentations. Random numbers come from `gen` (CPU), so a trial's augmentations are seeded, are
    the same on a CPU and a GPU, and its generator state can be checkpointed; they are drawn at once and
    cross to the GPU in one non-blocking copy, so augmenting never waits for the GPU.
    """
    if aug is None or not aug.any:
        return x
    n = x.shape[0]
    dev = x.device
    r = to_device(torch.rand(10, n, 1, 1, 1, generator=gen), dev)
    cols = iter(r)

    def rand(*shape):
        return next(cols).reshape(n, *shape[1:])

    if aug.rotation or aug.translate or aug.random_resized_crop or aug.hflip:
        angle = (rand(n) * 2 - 1) * math.radians(aug.rotation)
        scale = torch.ones(n, device=dev)
        if aug.random_resized_crop:  # zoom into 50-100 % of the side, as RandomResizedCrop((0.25, 1) area) does
            scale = 0.5 + 0.5 * rand(n)
        flip = torch.where(rand(n) < 0.5, -1.0, 1.0) if aug.hflip else torch.ones(n, device=dev)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        tx = (rand(n) * 2 - 1) * aug.translate * 2
        ty = (rand(n) * 2 - 1) * aug.translate * 2
        if aug.random_resized_crop:  # move the crop anywhere inside the image
            tx = tx + (rand(n) * 2 - 1) * (1 - scale)
            ty = ty + (rand(n) * 2 - 1) * (1 - scale)
        theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if aug.color_jitter:
        s = aug.color_jitter
        bright = 1 + (rand(n, 1, 1, 1) * 2 - 1) * s
        contrast = 1 + (rand(n, 1, 1, 1) * 2 - 1) * s
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean * bright
        if x.shape[1] == 3:
            sat = 1 + (rand(n, 1, 1, 1) * 2 - 1) * s
            grey = x.mean(dim=1, keepdim=True)
            x = (x - grey) * sat + grey
    return x
