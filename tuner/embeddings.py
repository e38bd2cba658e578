"""Embed each image once per (feature extractor, data set, image size); every trial reads the cache.

Frozen backbones (transfer with trainable_layers: 0) and KNN / classic classifiers all search over
heads or neighbour settings while the expensive part, running the backbone, stays the same. So the
features are computed once, written to disk as float32 .npy, and memory-mapped by every trial. A file
lock makes concurrent trials that need the same features wait for the first instead of recomputing.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def cache_path(cache_dir: str | os.PathLike, data_key: str, extractor_key: str) -> Path:
    digest = hashlib.sha1(f"{data_key}|{extractor_key}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "embeddings" / digest


@torch.no_grad()
def compute(extractor: Callable[[torch.Tensor], torch.Tensor], pre: Callable[[torch.Tensor], torch.Tensor],
            images: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 256) -> np.ndarray:
    """uint8 NHWC images -> float32 (N, D) features. `pre` turns a uint8 batch on the device into model input."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[start:start + batch_size]))
        x = x.pin_memory().to(device, non_blocking=True) if cuda else x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            f = extractor(pre(x))
        out.append(f.float().flatten(1).cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def cached(data, extractor_key: str, extractor: Callable, pre: Callable, device="cpu",
           cache_dir: str | os.PathLike | None = None, splits=("train", "val", "test"),
           batch_size: int = 256) -> dict[str, np.ndarray]:
    """Features of each split of `data`, computed at most once per (data.key, extractor_key) on this machine.

    `extractor_key` must change whenever the features would (arch, weights file and its mtime, ...);
    `data.key` is a hash of the decoded images and splits (see `tuner.data.prepare`), and the device type
    is part of the key too (a GPU embeds in bfloat16). Without a cache_dir the features are computed and
    kept in memory only.
    """
    if cache_dir is None:
        return {s: compute(extractor, pre, data.split(s)[0], device, batch_size) for s in splits}
    from filelock import FileLock

    folder = cache_path(cache_dir, data.key, f"{extractor_key}|{torch.device(device).type}")
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    with FileLock(str(folder / ".lock")):
        for s in splits:
            f = folder / f"{s}.npy"
            n = len(data.split(s)[1])
            if f.is_file() and len(np.load(f, mmap_mode="r")) != n:
                f.unlink()  # written for other images under the same key (a hand-edited cache): never reuse it
            if not f.is_file():
                feats = compute(extractor, pre, data.split(s)[0], device, batch_size)
                tmp = folder / f".{s}.{os.getpid()}.npy"
                np.save(tmp, feats)
                os.replace(tmp, f)  # atomic: a reader never sees half a file
            out[s] = np.load(f, mmap_mode="r")
    return out
