"""M members' copies of one architecture computed as one network, layer by layer (HFTA's horizontal fusion).

Each member keeps its own plain `nn.Sequential`, built by its family exactly as a trial alone builds it.
Fusing stacks each layer's tensors over the members into one storage and points every member's tensors
at its slice (`p.data = stacked[m]`): the members' parameters stay the objects their optimisers and
state dicts know, while one batched operation per layer computes all of them:

- Linear: `baddbmm` over (M, B, in) activations with (M, out, in) weights;
- Conv2d: one convolution with `groups=M` over the members' channels side by side, (B, M*C, H, W);
- BatchNorm: one batch norm over M*C channels, so every member keeps its own running statistics (plain
  `vmap` cannot update buffers); the counters of batches seen are stacked too;
- Dropout / Dropout2d: a mask per member, drawn from the member's own generator with the member's rate,
  exactly as `F.dropout` on the CPU draws it from the global generator (so a member equals its trial);
- activations and pooling act per element or per channel and run once on the fused tensor.

Gradients reach the stacked storage; `scatter_grads` hands each member the view of its slice, so each
member's own optimiser steps its own parameters (in place, into the storage). Rebuilding the net for the
members still training (`FusedNet(...)` again) compacts the group when one stops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

DROPOUTS = (nn.Dropout, nn.Dropout2d)
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Identity)
CHANNELWISE = (nn.MaxPool2d, nn.AdaptiveAvgPool2d)


class NotFusable(ValueError):
    """The members' models cannot be computed as one (a layer tuner.fused does not know, or shapes differ)."""


@dataclass
class Slot:
    """One layer position: the members' modules there and the dropout each applies after it (0: none)."""

    modules: list[nn.Module]
    dropout: list[float]
    dropout_kind: type | None = None  # nn.Dropout or nn.Dropout2d, when any member drops out here


def _signature(m: nn.Module) -> tuple:
    """What must be equal for modules to share one fused layer."""
    shapes = tuple((n, tuple(t.shape)) for n, t in list(m.named_parameters()) + list(m.named_buffers()))
    return type(m), repr(m), shapes


def align(models: list[nn.Sequential]) -> list[Slot]:
    """The members' layers position by position, each member's dropout folded into the layer before it
    (a member with rate 0 has no Dropout module at all, one with a rate has one: same position)."""
    per_member = []
    for model in models:
        slots: list[tuple[nn.Module, float, type | None]] = []
        for mod in model.children():
            if isinstance(mod, DROPOUTS):
                if not slots or slots[-1][2] is not None:
                    raise NotFusable(f"a dropout layer where tuner.fused does not expect one: {model}")
                slots[-1] = (slots[-1][0], float(mod.p), type(mod))
            else:
                slots.append((mod, 0.0, None))
        per_member.append(slots)
    if len({len(s) for s in per_member}) != 1:
        raise NotFusable("the members' models have different numbers of layers")
    out = []
    for column in zip(*per_member):
        mods = [c[0] for c in column]
        if len({_signature(m) for m in mods}) != 1:
            raise NotFusable(f"the members differ at layer {mods[0]!r}")
        kinds = {c[2] for c in column if c[2] is not None}
        if len(kinds) > 1:
            raise NotFusable(f"Dropout and Dropout2d after the same layer {mods[0]!r}")
        out.append(Slot(mods, [c[1] for c in column], kinds.pop() if kinds else None))
    return out


def _stack(mods: list[nn.Module], name: str, grad: bool) -> torch.Tensor | None:
    """The members' tensor `name` stacked into one storage, each member's tensor now a view of its slice."""
    tensors = [getattr(m, name) for m in mods]
    if tensors[0] is None:
        return None
    first = tensors[0].data
    # each member's slice keeps the strides its own tensor had (a plain learner's convolutions are channels-last):
    # optimiser state is made in the parameter's layout, and torch's fused Adam on the CPU silently computes
    # garbage when a loaded state's layout differs from its parameter's (seen: 0.16 off after one step)
    strides = first.stride() if _dense(first) else first.contiguous().stride()
    stacked = torch.empty_strided((len(tensors), *first.shape), (first.numel(), *strides), dtype=first.dtype,
                                  device=first.device)
    for i, t in enumerate(tensors):
        stacked[i].copy_(t.data)
        t.data = stacked[i]
    return stacked.requires_grad_(grad)


def _dense(t: torch.Tensor) -> bool:
    """Contiguous or channels-last: its elements fill exactly numel() places, so its strides can be reused."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def own_storage(model: nn.Module) -> None:
    """Give a member leaving the group its tensors back as storage of its own (its weights freeze as they
    are, and the group's old storage can go)."""
    for t in list(model.parameters()) + list(model.buffers()):
        t.data = t.data.clone()


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """(M, B, C, H, W) -> (B, M*C, H, W): members side by side in the channels, as grouped convolution wants.

    Channels-last, as a plain learner's convolutions run (`TorchLearner`): a batch norm then reduces in the
    same order as the member's trial does, and its running statistics and everything after agree bitwise
    (in contiguous layout they differed by 3e-8, which Adam blew up as it does for the biases FusedLinear
    is about)."""
    m, b, c, h, w = x.shape
    return x.permute(1, 3, 4, 0, 2).contiguous().view(b, h, w, m * c).permute(0, 3, 1, 2)


def to_members(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, M*C, H, W) -> (M, B, C, H, W)."""
    b = x.shape[0]
    return x.view(b, m, x.shape[1] // m, *x.shape[2:]).transpose(0, 1)


class FusedLinear(torch.autograd.Function):
    """M linear layers at once: (M, B, in) x (M, out, in) weights + (M, out) biases -> (M, B, out).

    The gradients are computed in the orientation `F.linear`'s own backward uses (weight: grad^T @ x, as
    `mm_mat2_backward` does for a transposed weight; bias: a sum over a contiguous gradient), so each member's
    are bitwise those of its trial alone. That matters more than it seems: a bias just before a batch norm
    has a true gradient of 0, so its computed one is pure rounding, and Adam turns rounding of either sign
    into a full lr-sized step: with autograd's own bmm gradients such a bias drifted 3e-2 from the trial's.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return torch.bmm(x, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad = grad.contiguous()  # it may arrive strided from a batch norm over the members' channels
        gx = torch.bmm(grad, w.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(grad.transpose(1, 2), x.to(grad.dtype)) if ctx.needs_input_grad[1] else None
        gb = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class FusedNet:
    """The members' Sequentials as one network: input (M, B, ...) members first; output (M, B, classes)."""

    def __init__(self, models: list[nn.Sequential], generators: list[torch.Generator]):
        self.models, self.generators = models, generators
        self.m = len(models)
        self.slots = align(models)
        self.layers = [self._fuse(s) for s in self.slots]
        # (stacked parameter, the members' parameters it holds), for scatter_grads
        self.owners = [(layer[name], [getattr(mod, name) for mod in slot.modules])
                       for slot, layer in zip(self.slots, self.layers)
                       for name, _ in slot.modules[0].named_parameters()]
        self.training = True

    def _fuse(self, slot: Slot) -> dict:
        mods = slot.modules
        first = mods[0]
        if isinstance(first, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            if isinstance(first, nn.Conv2d) and (first.groups != 1 or first.padding_mode != "zeros"):
                raise NotFusable(f"a grouped or padded-by-{first.padding_mode} convolution: {first!r}")
            if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)) and (first.momentum is None or
                                                                        not first.track_running_stats):
                raise NotFusable(f"batch norm without running statistics or momentum: {first!r}")
            tensors = {n: _stack(mods, n, grad=True) for n, _ in first.named_parameters()}
            tensors.update({n: _stack(mods, n, grad=False) for n, _ in first.named_buffers()})
            return {"module": first, **tensors}
        if isinstance(first, ELEMENTWISE + CHANNELWISE + (nn.Flatten,)):
            if isinstance(first, nn.Flatten) and (first.start_dim, first.end_dim) != (1, -1):
                raise NotFusable(f"a Flatten of other dimensions: {first!r}")
            return {"module": first}
        raise NotFusable(f"tuner.fused cannot fuse {type(first).__name__} layers")

    # --------------------------------------------------------------------------- training state
    def params(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in layer.values() if isinstance(t, torch.Tensor) and t.requires_grad]

    def train(self, on: bool = True) -> None:
        self.training = on

    def zero_grad(self) -> None:
        for t in self.params():
            t.grad = None

    def scatter_grads(self) -> None:
        """Each member's parameters get the views of their slices of the stacked gradients."""
        for stacked, params in self.owners:
            grads = stacked.grad.unbind(0) if stacked.grad is not None else [None] * len(params)
            for p, g in zip(params, grads):
                p.grad = g

    # --------------------------------------------------------------------------- forward
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels = False  # the layout of x: members first (M, B, ...) or members in the channels (B, M*C, H, W)
        for slot, layer in zip(self.slots, self.layers):
            mod = layer["module"]
            if isinstance(mod, (nn.Conv2d, nn.BatchNorm2d) + CHANNELWISE) and not channels:
                x, channels = to_channels(x), True
            if isinstance(mod, nn.Flatten):
                x, channels = (to_members(x, self.m) if channels else x).flatten(2), False
            elif isinstance(mod, nn.Linear):
                x = self._linear(x, layer)
            elif isinstance(mod, nn.Conv2d):
                x = self._conv(x, layer)
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                x = self._batchnorm(x, layer, channels)
            else:
                x = mod(x)
            if slot.dropout_kind is not None and self.training:
                x = self._dropout(x, slot, channels)
        return to_members(x, self.m) if channels else x

    @staticmethod
    def _linear(x: torch.Tensor, layer: dict) -> torch.Tensor:
        return FusedLinear.apply(x, layer["weight"], layer.get("bias"))

    def _conv(self, x: torch.Tensor, layer: dict) -> torch.Tensor:
        mod, w, b = layer["module"], layer["weight"], layer.get("bias")
        return F.conv2d(x, w.flatten(0, 1), None if b is None else b.flatten(), mod.stride, mod.padding,
                        mod.dilation, groups=self.m)

    def _batchnorm(self, x: torch.Tensor, layer: dict, channels: bool) -> torch.Tensor:
        mod = layer["module"]
        flat = x if channels else x.transpose(0, 1).reshape(x.shape[1], -1)  # (M, B, F) -> (B, M*F)
        if self.training:
            layer["num_batches_tracked"].add_(1)
        w, b = layer.get("weight"), layer.get("bias")
        out = F.batch_norm(flat, layer["running_mean"].view(-1), layer["running_var"].view(-1),
                           None if w is None else w.view(-1), None if b is None else b.view(-1),
                           self.training, mod.momentum, mod.eps)
        return out if channels else out.view(x.shape[1], self.m, -1).transpose(0, 1)

    def _dropout(self, x: torch.Tensor, slot: Slot, channels: bool) -> torch.Tensor:
        """Each member's mask as `F.dropout` / `F.dropout2d` draws it on the CPU: `bernoulli_(1 - p)` on a
        tensor of the member's input shape ((B, C, 1, 1) for channel dropout), divided by 1 - p; a member
        with rate 0 draws nothing. (On a GPU the plain layer uses another kernel: not bitwise there.)"""
        members = to_members(x, self.m) if channels else x
        shape = list(members.shape[1:])
        if slot.dropout_kind is nn.Dropout2d:
            shape = shape[:2] + [1] * (len(shape) - 2)
        noise = torch.ones([self.m] + shape, dtype=x.dtype, device=x.device)
        for i, p in enumerate(slot.dropout):
            if p >= 1:
                noise[i] = 0
            elif p > 0:
                noise[i] = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(
                    1 - p, generator=self.generators[i]).div_(1 - p)
        out = members * noise
        return to_channels(out) if channels else out
