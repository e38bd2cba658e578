"""Decode and resize each image once into a uint8 array.

In-memory arrays at their native size pass straight through. Everything else (files, other sizes)
is decoded and resized here, once per experiment.
"""
from __future__ import annotations

import numpy as np


def _to_array(item, size: int | None, channels: int) -> np.ndarray:
    from PIL import Image

    if isinstance(item, np.ndarray):
        img = Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item)
    elif isinstance(item, Image.Image):
        img = item
    else:
        img = Image.open(item)
    img = img.convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_split(cfg, split: str, src, idx: np.ndarray, cache_dir=None, progress: bool = True) -> np.ndarray:
    images = src.images
    size = cfg.image_size
    if isinstance(images, np.ndarray):
        if size is None or images.shape[1:3] == (size, size):
            return np.ascontiguousarray(images[idx])
        channels = images.shape[-1]
    else:
        channels = 3
        size = size or 224
    out = np.empty((len(idx), size, size, channels), dtype=np.uint8)
    for j, i in enumerate(idx):
        out[j] = _to_array(images[i], size, channels)
    return out
