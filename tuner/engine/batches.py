"""Batches of uint8 NHWC images: the index batches of an epoch (one shape per trial), evaluation batches,
rows gathered on the device, and the conversion to normalised float NCHW on the device.

Images stay uint8 NHWC (in the object store or a memory-mapped cache) until a batch is taken: only
the batch is converted, moved to the device, normalised and augmented there. So augmentation never
forces a re-decode, and on CUDA it runs on the GPU.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn

from tuner.engine.device import to_device


class Preprocess(nn.Module):
    """uint8 NHWC batch -> normalised float NCHW on the device (grey -> RGB where the model wants 3)."""

    mean: torch.Tensor  # buffers (register_buffer), declared for the type checker
    std: torch.Tensor

    def __init__(self, mean, std, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or in_channels
        if in_channels == 1 and out_channels == 3:
            mean, std = tuple(mean) * 3, tuple(std) * 3
        self.repeat = out_channels // in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one float copy of the batch, normalised in place: `(x - mean) / std` made two more, 1.2 GB for an
        # evaluation batch of 1,024 images at 224 px (a trial's memory held 2.5 GB of such temporaries)
        x = x.permute(0, 3, 1, 2).to(torch.float32, copy=True).div_(255.0)
        if self.repeat > 1:
            x = x.repeat(1, self.repeat, 1, 1)
        return x.sub_(self.mean).div_(self.std)


def train_batches(n: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """One epoch's shuffled index batches, an (n_batches, batch_size) tensor: every batch has one shape.

    The ragged remainder is dropped, not padded: padding repeats images (counting them twice in the
    gradient and in batch-norm statistics), while a fresh shuffle each epoch still shows every image,
    just not in every epoch (DataLoader's drop_last). A set smaller than a batch is one batch of all of
    it. One shape per trial means cuDNN picks its kernels once. Rows are sorted, so memory-mapped
    images are read in order.
    """
    bs = max(1, min(batch_size, n))
    order = torch.randperm(n, generator=gen)
    nb = n // bs
    return order[:nb * bs].view(nb, bs).sort(dim=1).values


EVAL_BATCH_BYTES = 256 << 20  # an evaluation batch's float input at most this (1,024 images at 224 px: 616 MB)


def eval_batch_size(batch_size: int, image_bytes: int = 0) -> int:
    """Evaluation batch: 4x the training batch, at most 1024, and at most EVAL_BATCH_BYTES of float input for
    images of `image_bytes` values (never below the training batch). Inference keeps a layer or two of
    activations alive where training keeps all of them, so this fits wherever training did."""
    cap = EVAL_BATCH_BYTES // (4 * image_bytes) if image_bytes else 1024
    return max(batch_size, min(1024, 4 * batch_size, cap))


def eval_batches(n: int, batch_size: int,
                 device: torch.device | str = "cpu") -> Iterator[tuple[int, torch.Tensor, int]]:
    """(start, index, real rows) for evaluation, every index of one length: the last batch is padded by
    repeating the last image and the caller drops those rows, so no new batch shape appears."""
    bs = max(1, min(batch_size, n))
    for start in range(0, n, bs):
        idx = torch.arange(start, start + bs, device=device).clamp_(max=n - 1)
        yield start, idx, min(bs, n - start)


def take(x: np.ndarray | torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of a split on `device`: gathered there when the split is resident (idx on its device),
    else read on the host and copied."""
    if isinstance(x, torch.Tensor):
        return x[idx]
    return to_device(x[idx.numpy()], device)
