"""A fitted learner's size and speed: trials.csv's `num_params`, `latency_ms` and `latency_ms_b64`, measured
the same way for a plain trial, a fused group's members and a knn or features pass."""
from __future__ import annotations

import time

import numpy as np
import torch


def measure_latency(learner, images, batch: int, repeats: int = 3) -> float:
    """Inference time per image in milliseconds at a batch size, on the learner's device: one warm-up call,
    then the fastest of a few timed ones (the least disturbed by other trials sharing the machine)."""
    x = images[:batch]
    if len(x) < batch:  # a small validation split: repeat images up to the batch size
        x = np.concatenate([x] * (batch // max(len(x), 1) + 1))[:batch]
    learner.predict_proba(x)
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        learner.predict_proba(x)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best * 1000 / batch


_LATENCY: dict[str, tuple[float, float]] = {}  # per process: see `Learner.latency_key`


def latencies(learner, images) -> tuple[float, float]:
    """(latency_ms at batch 1, at batch 64), measured, or as measured for a learner of the same key."""
    key = learner.latency_key()
    if key is not None and key in _LATENCY:
        return _LATENCY[key]
    value = (measure_latency(learner, images, 1), measure_latency(learner, images, 64))
    if key is not None:
        _LATENCY[key] = value
    return value


def size_and_speed(learner, images) -> dict:
    """num_params, latency_ms and latency_ms_b64 of a fitted learner, on the validation images."""
    one, many = latencies(learner, images)
    return {"num_params": int(learner.num_params), "latency_ms": one, "latency_ms_b64": many}
