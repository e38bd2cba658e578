"""Embed each image once per (feature extractor, data set, image size); every trial reads the cache.

Frozen backbones (transfer with trainable_layers: 0) and KNN / classic classifiers all search over
heads or neighbour settings while the expensive part, running the backbone, stays the same. So the
features are computed once, written to disk as float32 .npy, and memory-mapped by every trial. A file
lock makes concurrent trials that need the same features wait for the first instead of recomputing.

One precision for every cached embedding: float32 with TF32 off, on the CPU and on a GPU alike. The
alternative, bfloat16 on a GPU with the precision and device type in the cache key, would keep two
caches of one data set apart but not the answers: a bundle tested on bf16 features and reloaded on a
CPU (or the other way round) would see other features and flip near-tie neighbours and predictions
(issue 13: 6 of 3,600 KNN probabilities moved by 0.2). The price is paid once per (data set,
extractor) on a machine, on the GPU only (a CPU was always float32): extraction runs at float32 rather
than bfloat16 speed, a few times slower on an H100's tensor cores, seconds for tens of thousands of
images (not measured here: no GPU), against search trials that each read the cache many times.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tuner.atomic import writing
from tuner.progress import note


def cache_path(cache_dir: str | os.PathLike, data_key: str, extractor_key: str) -> Path:
    digest = hashlib.sha1(f"{data_key}|{extractor_key}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "embeddings" / digest


def compute(extractor: Callable[[torch.Tensor], torch.Tensor], pre: Callable[[torch.Tensor], torch.Tensor],
            images: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 256,
            progress: str | None = None) -> np.ndarray:
    """uint8 NHWC images -> float32 (N, D) features. `pre` turns a uint8 batch on the device into model input.

    Always in float32 with TF32 off (`engine.precision(exact=True)`), on every device: see the module notes.
    On CUDA the input is channels-last, batches cross through pinned memory and the features come back
    into a pinned buffer without blocking, so the GPU is waited for once, at the end.
    `progress`: a label for a progress bar on stderr (None: none).
    """
    from tuner.engine import precision, to_device
    from tuner.progress import bar

    device = torch.device(device)
    cuda = device.type == "cuda"
    n = len(images)
    out: torch.Tensor | None = None
    if cuda and isinstance(extractor, torch.nn.Module):
        extractor.to(memory_format=torch.channels_last)  # in place; the weights' layout only
    shown = bar(n, progress or "", progress is not None)
    with torch.inference_mode(), precision(device, exact=True), shown:
        for start in range(0, n, batch_size):
            x = pre(to_device(np.asarray(images[start:start + batch_size]), device))
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            f = extractor(x).float().flatten(1)
            if out is None:
                out = torch.empty((n, f.shape[1]), dtype=torch.float32, pin_memory=cuda)
            out[start:start + len(f)].copy_(f, non_blocking=cuda)
            shown.update(len(f))
        if cuda:
            torch.cuda.synchronize(device)
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out.numpy()


def cached(data, extractor_key: str, extractor: Callable, pre: Callable, device="cpu",
           cache_dir: str | os.PathLike | None = None, splits=("train", "val", "test"),
           batch_size: int = 256, progress: bool = False) -> dict[str, np.ndarray]:
    """Features of each split of `data`, computed at most once per (data.key, extractor_key) on this machine.

    `extractor_key` must change whenever the features would (arch, weights file and its mtime, ...);
    `data.key` is a hash of the decoded images and splits (see `tuner.data.prepare`), and the device type
    is part of the key too (both embed in float32, yet a cache stays with the device type that wrote it, so
    GPU and CPU rounding never mix within one search). Without a cache_dir the features are computed and
    kept in memory only. `progress`: a bar per split on stderr, and a line with the rate at the end.
    """
    t0, done = time.perf_counter(), 0

    def embed(s: str) -> np.ndarray:
        nonlocal done
        done += len(data.split(s)[1])
        return compute(extractor, pre, data.split(s)[0], device, batch_size, f"embedding {s}" if progress else None)

    if cache_dir is None:
        return {s: embed(s) for s in splits}
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
                feats = embed(s)
                with writing(f) as tmp:  # a reader never sees half a file
                    np.save(tmp, feats)
            out[s] = np.load(f, mmap_mode="r")
    if done:
        dt = time.perf_counter() - t0
        note(f"embedded {done} images in {dt:.1f} s ({done / max(dt, 1e-9):.0f} img/s) -> {folder}", progress)
    return out
