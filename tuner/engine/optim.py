"""Losses, optimisers and learning-rate schedules made from a trial's resolved config."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


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
