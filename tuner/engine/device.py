"""Where a trial runs and in what precision: the device, its share of a GPU, the mixed-precision policy,
the trial's data placed on the GPU when it fits, and the CPU threads a trial may use."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch


def pick_device(gpus: float | None = None) -> torch.device:
    """The device for a share of `gpus` GPUs; None = any GPU that is visible.

    Inside a trial Ray hides every GPU but the trial's own (CUDA_VISIBLE_DEVICES), so "cuda" is that GPU.
    A trial given no GPU stays on the CPU even where one is visible: it would take a share nobody gave it.
    """
    wants = gpus is None or gpus > 0
    return torch.device("cuda" if wants and torch.cuda.is_available() else "cpu")


def gpu_share(gpus: float | None = None) -> float:
    """The part of its GPU a trial given `gpus` GPUs may fill (None: all of it), for `RunContext.gpu_share`:
    `resident_budget` keeps a trial's data within it when other trials share the GPU."""
    return 1.0 if gpus is None else min(1.0, max(float(gpus), 0.0))


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The training precision: bfloat16 on a GPU that has it, else float16 (with a loss scaler); float32
    (None: no autocast) on the CPU, where autocast is slower than float32 for these models."""
    if torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextmanager
def precision(device: torch.device | str, exact: bool):
    """The one mixed-precision policy, used by every learner and by `tuner.embeddings`.

    exact=False (training steps, and the validation pass that steers the search): autocast in `amp_dtype`.
    exact=True (test predictions, loaded bundles, cached embeddings: numbers that outlive the trial):
    float32 with TF32 off, so the same model gives the same answers on a CPU and on a GPU (within float
    rounding, about 1e-5 on probabilities) and a cache written on one device is right on the other.
    """
    device = torch.device(device)
    if not exact:
        dtype = amp_dtype(device)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            yield
        return
    if device.type != "cuda":
        yield
        return
    # the new fp32_precision API only: reading the legacy allow_tf32 flags after mixing the two raises
    # (torch's type stubs lack torch.backends.cudnn.conv; it is one object, so binding it once is the same)
    cudnn_conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]
    conv, matmul = cudnn_conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    cudnn_conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        cudnn_conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul


def resident_budget(device: torch.device, share: float) -> int:
    """Bytes of a trial's images (or features) that may live on its GPU: a third of its `share` of the
    GPU's memory (the model, activations and optimiser state need the rest), and at most a third of what
    is free right now (other trials may have taken theirs)."""
    free, total = torch.cuda.mem_get_info(device)
    return int(min(total * share, free) / 3)


def place(arrays: list, device: torch.device, share: float) -> list:
    """A trial's splits on its GPU when all of them fit `resident_budget(device, share)`: batches are then
    gathered on the GPU and nothing crosses PCIe per batch. Else (and on the CPU) they stay host arrays,
    and each batch is copied through pinned memory without blocking."""
    if device.type != "cuda" or sum(a.nbytes for a in arrays) > resident_budget(device, share):
        return list(arrays)
    return [_upload(a, device) for a in arrays]


_RESIDENT: dict = {}  # (data key, device) -> the splits as `place` left them: one data set per process


def resident(key: tuple, make: Callable[[], list]) -> list:
    """The splits `make` places on the GPU, kept for the next trial in this process. Ray reuses a trial's
    actor (reuse_actors) for the next trial, which trains on the same data: it finds them here instead of
    copying them to the device again while the GPU waits. Another data set replaces them (one is kept)."""
    if key not in _RESIDENT:
        _RESIDENT.clear()  # the old set's memory goes back before the new one is placed
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _RESIDENT[key] = make()
    return _RESIDENT[key]


def _upload(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    out = torch.empty(x.shape, dtype=torch.from_numpy(np.empty(0, x.dtype)).dtype, device=device)
    step = max(1, (64 << 20) // max(1, x[:1].nbytes))  # 64 MB at a time: a memory-mapped set is never all in RAM
    for s in range(0, len(x), step):
        out[s:s + step].copy_(torch.from_numpy(np.array(x[s:s + step])))
    return out


def to_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array -> a tensor on `device`; on CUDA through pinned memory, without waiting for the copy."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(
        np.array(x, copy=not x.flags.writeable or not x.flags.c_contiguous))
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def set_threads(cpus: float) -> None:
    """Concurrent trials must not fight over cores: one trial's torch uses only the CPUs it was given."""
    n = max(1, int(cpus))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # can only be set once per process; the reused actor keeps the first value
        pass
