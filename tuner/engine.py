"""Training and evaluation in plain PyTorch, device-aware, with no Ray in it.

Images stay uint8 NHWC (in the object store or a memory-mapped cache) until a batch is taken: only
the batch is converted, moved to the device, normalised and augmented there. So augmentation never
forces a re-decode, and on CUDA it runs on the GPU.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tuner.errors import TrialFailed
from tuner.progress import bar

from tuner.types import Learner, Param, RunContext

# --------------------------------------------------------------------------- common parameters

COMMON_PARAMS: dict[str, Param] = {
    "optimizer": Param("adam", "str", ("sgd", "adam", "adamw", "rmsprop"),
                       fusable=True, help="adamw decouples weight decay from the lr"),
    "lr": Param(1e-3, "float", low=0.0, pbt=True, fusable=True, help="learning rate (of the head, for transfer)"),
    "momentum": Param(0.9, "float", low=0.0, high=1.0, pbt=True, fusable=True, help="sgd and rmsprop"),
    "weight_decay": Param(0.0, "float", low=0.0, pbt=True, fusable=True, help="L2 penalty (decoupled for adamw)"),
    "eps": Param(1e-8, "float", low=0.0, fusable=True,
                 help="adam/adamw/rmsprop epsilon (the Flowers seed used 0.1)"),
    "nesterov": Param(False, "bool", fusable=True, help="sgd: Nesterov momentum (needs momentum > 0)"),
    "batch_size": Param(64, "int", low=1, help="training images per step"),
    "lr_schedule": Param("none", "str", ("none", "step", "plateau", "cosine"), fusable=True,
                         help="step: times lr_gamma every lr_step epochs; plateau: when val_loss stalls; "
                              "cosine: down to 0 at max_epochs"),
    "lr_step": Param(0, "int", low=0, fusable=True, help="step: epochs between drops (0 = a third of max_epochs)"),
    "lr_gamma": Param(0.1, "float", low=0.0, high=1.0, fusable=True,
                      help="step and plateau: factor the lr is multiplied by"),
    "lr_patience": Param(2, "int", low=0, fusable=True, help="plateau: epochs without improvement before a drop"),
    "lr_threshold": Param(1e-4, "float", low=0.0, fusable=True, help="plateau: relative improvement that counts"),
    "label_smoothing": Param(0.0, "float", low=0.0, high=1.0, pbt=True, fusable=True,
                             help="weight moved from the true class to all classes"),
    "loss": Param("ce", "str", ("ce", "focal"), fusable=True,
                  help="ce: cross-entropy; focal: down-weights easy examples"),
    "focal_gamma": Param(2.0, "float", low=0.0, fusable=True,
                         help="focal: how strongly easy examples are down-weighted"),
    "early_stopping": Param(0, "int", low=0, fusable=True, help="patience in epochs on val_accuracy; 0 = off"),
    "seed": Param(0, "int", fusable=True, help="initial weights and batch order"),
    "compile": Param(False, "bool", help="torch.compile the model for training (opt-in: its compile time does not "
                                          "pay back on short trials)"),
}


_GPU_SHARE = 1.0  # the share of its GPU this process was given, as last told to pick_device


def pick_device(gpus: float | None = None) -> torch.device:
    """The device for a share of `gpus` GPUs; None = any GPU that is visible.

    Inside a trial Ray hides every GPU but the trial's own (CUDA_VISIBLE_DEVICES), so "cuda" is that GPU.
    A trial given no GPU stays on the CPU even where one is visible: it would take a share nobody gave it.
    The share is remembered (a trial runs alone in its worker process) so that `resident_budget` keeps a
    trial's data within its part of a GPU that other trials share.
    """
    global _GPU_SHARE
    wants = gpus is None or gpus > 0
    _GPU_SHARE = 1.0 if gpus is None else min(1.0, max(float(gpus), 0.0))
    return torch.device("cuda" if wants and torch.cuda.is_available() else "cpu")


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
    conv, matmul = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul


def resident_budget(device: torch.device) -> int:
    """Bytes of a trial's images (or features) that may live on its GPU: a third of its share of the
    GPU's memory (the model, activations and optimiser state need the rest), and at most a third of what
    is free right now (other trials may have taken theirs)."""
    free, total = torch.cuda.mem_get_info(device)
    return int(min(total * _GPU_SHARE, free) / 3)


def place(arrays: list, device: torch.device) -> list:
    """A trial's splits on its GPU when all of them fit `resident_budget`: batches are then gathered on
    the GPU and nothing crosses PCIe per batch. Else (and on the CPU) they stay host arrays, and each
    batch is copied through pinned memory without blocking."""
    if device.type != "cuda" or sum(a.nbytes for a in arrays) > resident_budget(device):
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


# --------------------------------------------------------------------------- batches
class Preprocess(nn.Module):
    """uint8 NHWC batch -> normalised float NCHW on the device (grey -> RGB where the model wants 3)."""

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


def to_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array -> a tensor on `device`; on CUDA through pinned memory, without waiting for the copy."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(
        np.array(x, copy=not x.flags.writeable or not x.flags.c_contiguous))
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def take(x: np.ndarray | torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of a split on `device`: gathered there when the split is resident (idx on its device),
    else read on the host and copied."""
    if isinstance(x, torch.Tensor):
        return x[idx]
    return to_device(x[idx.numpy()], device)


# --------------------------------------------------------------------------- losses, optimisers, schedules
def make_loss(cfg: dict) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    smoothing = float(cfg.get("label_smoothing", 0.0))
    if cfg.get("loss", "ce") == "focal":
        gamma = float(cfg.get("focal_gamma", 2.0))

        def focal(logits, y):
            logp = F.log_softmax(logits.float(), dim=1)
            pt = logp.gather(1, y[:, None]).squeeze(1).exp()
            ce = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=smoothing)
            return ((1 - pt) ** gamma * ce).mean()

        return focal
    return lambda logits, y: F.cross_entropy(logits.float(), y, label_smoothing=smoothing)


def make_optimizer(groups, cfg: dict) -> torch.optim.Optimizer:
    name, lr, wd = cfg["optimizer"], float(cfg["lr"]), float(cfg.get("weight_decay", 0.0))
    eps = float(cfg.get("eps", 1e-8))
    if name == "sgd":
        return _fused(torch.optim.SGD, groups, lr=lr, momentum=float(cfg.get("momentum", 0.0)), weight_decay=wd,
                      nesterov=bool(cfg.get("nesterov")) and float(cfg.get("momentum", 0)) > 0)
    if name == "adam":
        return _fused(torch.optim.Adam, groups, lr=lr, weight_decay=wd, eps=eps)
    if name == "adamw":
        return _fused(torch.optim.AdamW, groups, lr=lr, weight_decay=wd, eps=eps)
    return torch.optim.RMSprop(groups, lr=lr, momentum=float(cfg.get("momentum", 0.0)), weight_decay=wd, eps=eps)


def _fused(cls, groups, **kw) -> torch.optim.Optimizer:
    """The optimiser's fused kernel, one call for all parameters instead of a dozen small ops per tensor.
    The same update rule; on the 2-core machine, one thread, digits CNN: Adam 87 us a step against 372 us
    (16 channels) and 205 against 752 (64), SGD 35 against 137: ~10% of a small CNN's training step. torch
    < 2.4 has no fused CPU kernels, and other devices may lack them: then the plain one."""
    try:
        return cls(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(groups, **kw)


def make_schedule(opt, cfg: dict, max_epochs: int):
    kind = cfg.get("lr_schedule", "none")
    if kind == "step":
        step = int(cfg.get("lr_step") or max(1, max_epochs // 3))
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=float(cfg.get("lr_gamma", 0.1)))
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=float(cfg.get("lr_gamma", 0.1)), patience=int(cfg.get("lr_patience", 2)),
            threshold=float(cfg.get("lr_threshold", 1e-4)))
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs))
    return None


def check_finite(train_loss: float, epoch: int, lr: float) -> None:
    """A trial whose training loss is NaN or infinite cannot go on: `TrialFailed`, saying what to change."""
    if not math.isfinite(train_loss):
        raise TrialFailed(f"train_loss is {train_loss} at epoch {epoch + 1}: the lr "
                          f"({lr:.3g}) is probably too high for this config")


# --------------------------------------------------------------------------- the learner for torch models
# what a running trial's optimiser state carries of the config: scaled on a PBT exploit (`adapt_state`)
OPTIMIZER_HPARAMS = ("lr", "momentum", "weight_decay")


class TorchLearner(Learner):
    """Trains an `nn.Module` on uint8 image arrays, one epoch per `fit` step; checkpointable."""

    def __init__(self, model: nn.Module, cfg: dict, info, ctx: RunContext | None = None,
                 in_channels_wanted: int | None = None):
        ctx = ctx or RunContext()
        augment_cfg, keep_best = ctx.augment, ctx.keep_best
        self.progress = ctx.progress
        self.cfg = cfg
        self.device = torch.device(ctx.device)
        self.info = info
        self.model = model.to(self.device)
        self.pre = Preprocess(info.mean, info.std, info.channels, in_channels_wanted).to(self.device)
        self.augment_cfg = augment_cfg
        self.cuda = self.device.type == "cuda"
        # channels-last for convolutional models on every device: on CUDA it is what the tensor cores want; on
        # the CPU, oneDNN's convolutions are faster in it too (2-core machine, one thread, a training step:
        # digits CNN 5.3 ms against 6.3 ms, MobileNetV3-S and EfficientNet-B0 at 64 px 1.6x; ResNet18 the same
        # within 10%). A model without convolutions (mlp) keeps its inputs as they are: no copy per batch.
        conv = any(p.dim() == 4 for p in self.model.parameters())
        self.memory_format = torch.channels_last if conv else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        if self.cuda:
            # cudnn.benchmark stays off. Measured on an H100 (issue 13): with it on, a trial's first training
            # step took 9.2 s (ResNet18, 64 px) / 13.4 s (ResNet50, 224 px) and each new batch shape another
            # 3.3 s / 10.8 s (0.6 s / 1.3 s in evaluation); off, 0.7 s / 0.9 s and 0.13 s / 0.36 s, and the
            # steady step time was the same either way (0.065 s, ResNet50 at batch 256). A trial never runs
            # long enough to win that back, so there is no switch for it.
            torch.backends.cudnn.benchmark = False
        self.amp_dtype = amp_dtype(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # opt-in: compiling takes longer than a short trial saves; used for training and validation steps
        # only (exact predictions run the plain module, so their float32 graph is never compiled too)
        self.train_model = torch.compile(self.model, dynamic=False) if cfg.get("compile") else self.model
        self.loss_fn = make_loss(cfg)
        self.optimizer = make_optimizer(self.param_groups(), cfg)
        self.schedule = None
        self.gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
        self.epoch = 0
        self.best = -math.inf
        self.bad_epochs = 0
        self.keep_best = keep_best
        self.best_state: dict | None = None
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.resident: tuple | None = None  # (data, its splits as `place` left them)

    # hooks a family may override --------------------------------------------------------------
    def param_groups(self):
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def train_mode(self) -> None:
        self.model.train()

    # -------------------------------------------------------------------------------------------
    def inputs(self, x: np.ndarray | torch.Tensor, train: bool) -> torch.Tensor:
        """A raw uint8 NHWC batch (host array or on the device) -> the model's input on the device."""
        t = self.pre(to_device(x, self.device))
        if train:
            t = augment(t, self.augment_cfg, self.gen)
        return t.contiguous(memory_format=self.memory_format) if t.dim() == 4 else t

    def _forward(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        with precision(self.device, exact):
            return (self.model if exact else self.train_model)(x)

    def train_epoch(self, x, y, batch_size: int) -> tuple[float, float]:
        """One pass over (x, y), host arrays or resident tensors. Loss and hits add up on the device and are
        read once at the end: a `.item()` per batch would make the CPU wait for the GPU at every step."""
        self.train_mode()
        order = train_batches(len(x), batch_size, self.gen)
        if isinstance(x, torch.Tensor):
            order = to_device(order, x.device)  # one copy per epoch; batches are then gathered on the device
        total = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        shown = bar(len(order), f"epoch {self.epoch + 1}", self.progress, unit="batch", leave=False)
        for idx in order:
            xb = self.inputs(take(x, idx, self.device), train=True)
            yb = take(y, idx, self.device).long()
            logits = self._forward(xb)
            loss = self.loss_fn(logits, yb)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.detach().float() * len(idx)
            correct += (logits.argmax(1) == yb).sum()
            shown.update(1)
        shown.close()
        seen = max(order.numel(), 1)
        return total.item() / seen, correct.item() / seen

    @torch.no_grad()
    def _proba(self, x, exact: bool, batch_size: int | None = None) -> torch.Tensor:
        """Class probabilities on the device, in fixed-shape batches (the padding rows dropped)."""
        self.model.eval()
        n = len(x)
        i = self.info
        bs = batch_size or eval_batch_size(int(self.cfg.get("batch_size", 64)), i.height * i.width * i.channels)
        out = torch.empty((n, self.info.num_classes), device=self.device)
        where = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        shown = bar(n, "testing" if exact else "validating", self.progress, leave=False)
        for start, idx, real in eval_batches(n, bs, where):
            logits = self._forward(self.inputs(take(x, idx, self.device), train=False), exact=exact)
            out[start:start + real] = torch.softmax(logits.float(), 1)[:real]
            shown.update(real)
        shown.close()
        return out

    @torch.no_grad()
    def evaluate(self, x, y) -> tuple[float, float, np.ndarray]:
        """The validation pass of a trial: in the training precision (it steers the search, and is timed)."""
        if not len(y):
            return float("nan"), float("nan"), np.zeros((0, self.info.num_classes), dtype=np.float32)
        proba = self._proba(x, exact=False)
        # labels from the object store are read-only arrays: a copy (small) keeps torch from warning about it
        yt = y.long() if isinstance(y, torch.Tensor) else torch.from_numpy(np.array(y, dtype=np.int64))
        yt = yt.to(self.device)
        loss = F.nll_loss(proba.clamp_min(1e-12).log(), yt)
        acc = (proba.argmax(1) == yt).float().mean()
        return loss.item(), acc.item(), proba.cpu().numpy()

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Probabilities in float32 on any device (`precision(exact=True)`): test metrics and loaded bundles
        agree between a CPU and a GPU."""
        return self._proba(images, exact=True, batch_size=batch_size).cpu().numpy()

    def _placed(self, data) -> list:
        if self.resident is None or self.resident[0] is not data:
            def upload():
                return place([data.x_train, data.y_train, data.x_val, data.y_val], self.device)

            key = getattr(data, "key", "")  # an ImageData's content hash; features (frozen transfer) have none
            placed = resident((key, str(self.device)), upload) if key and self.cuda else upload()
            self.resident = (data, placed)
        return self.resident[1]

    def start(self, max_epochs: int) -> None:
        """Before a `fit`'s first epoch (and the fused trainer's, `tuner.fused`): the lr schedule for max_epochs,
        at the point a loaded checkpoint left it."""
        if self.schedule is None:
            self.schedule = make_schedule(self.optimizer, self.cfg, max_epochs)
            if getattr(self, "_pending_schedule", None):
                self.schedule.load_state_dict(self._pending_schedule)

    def end_epoch(self, val_loss: float, val_acc: float) -> bool:
        """After an epoch's validation (here and in the fused trainer, so both keep the same books): step the
        schedule, count the epoch, remember the best; True when early stopping ends the training."""
        if isinstance(self.schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.schedule.step(val_loss)
        elif self.schedule is not None:
            self.schedule.step()
        self.epoch += 1
        if val_acc > self.best:
            self.best, self.bad_epochs = val_acc, 0
            if self.keep_best:
                # clones, not deepcopy: a fused member's tensors are views into its group's storage, and a
                # deepcopy of a view copies the whole storage
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        patience = int(self.cfg.get("early_stopping", 0))
        return bool(patience) and self.bad_epochs >= patience

    def fit(self, data, max_epochs: int) -> Iterator[dict]:
        self.start(max_epochs)
        batch_size = int(self.cfg.get("batch_size", 64))
        x_train, y_train, x_val, y_val = self._placed(data)
        while self.epoch < max_epochs:
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, train_acc = self.train_epoch(x_train, y_train, batch_size)
            check_finite(train_loss, self.epoch, lr)
            val_loss, val_acc, _ = self.evaluate(x_val, y_val)
            stop = self.end_epoch(val_loss, val_acc)
            yield {"epoch": self.epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                   "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr,
                   "epoch_time_s": time.perf_counter() - t0}
            if stop:
                return

    def restore_best(self) -> None:
        """Go back to the weights of the best validation epoch (the retrain keeps those)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict() if self.schedule is not None else None,
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "best": self.best,
                "bad_epochs": self.bad_epochs, "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                # dropout on a GPU draws from the GPU's generator
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._pending_schedule = state.get("schedule")
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        if self.cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def weights(self) -> dict:
        """What an exported bundle needs to rebuild the model."""
        return {"model": self.model.state_dict()}

    def load_weights(self, w: dict) -> None:
        self.model.load_state_dict(w["model"])

    def hparams(self) -> dict[str, float]:
        return {k: float(self.cfg[k]) for k in OPTIMIZER_HPARAMS if isinstance(self.cfg.get(k), (int, float))}

    def adapt_state(self, state: dict, old: dict[str, float]) -> dict:
        """A checkpoint made under `old` hyperparameters, continued under `new` ones (PBT's exploit step).

        The optimiser's state dict carries its own lr, momentum and weight decay, which would silently
        undo the perturbation; scale each group (and a schedule's base lrs) by new/old, so per-group
        multipliers (backbone_lr_mult) and the schedule's progress are kept.
        """
        new = self.hparams()
        if not old or all(old.get(k) == new.get(k) for k in OPTIMIZER_HPARAMS):
            return state
        ratios = {k: (new[k] / old[k]) if old.get(k) else None for k in OPTIMIZER_HPARAMS if k in new and k in old}
        for group in state["optimizer"]["param_groups"]:
            for k in OPTIMIZER_HPARAMS:
                if k not in group or k not in ratios:
                    continue
                group[k] = group[k] * ratios[k] if ratios[k] is not None else new[k]
                if k == "lr" and "initial_lr" in group and ratios[k] is not None:
                    group["initial_lr"] *= ratios[k]
        schedule, r = state.get("schedule"), ratios.get("lr")
        if schedule and r is not None:
            for key in ("base_lrs", "_last_lr"):
                if key in schedule:
                    schedule[key] = [v * r for v in schedule[key]]
        return state


    def _hparams(learner) -> dict:
        cfg = getattr(learner, "cfg", {}) or {}
        return {k: float(cfg[k]) for k in OPTIMIZER_HPARAMS if isinstance(cfg.get(k), (int, float))}


def set_threads(cpus: float) -> None:
    """Concurrent trials must not fight over cores: one trial's torch uses only the CPUs it was given."""
    n = max(1, int(cpus))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # can only be set once per process; the reused actor keeps the first value
        pass
