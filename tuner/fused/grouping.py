"""Which configurations can share one fused model, and how many of them fit at once.

Two configurations of a family share a model when their family says they fuse (`Family.fusable`) and they
agree on every parameter not marked `Param(fusable=True)`: everything that shapes the model or the data
stream (architecture, widths, batch norm, pooling, batch size, backbone, trainable layers...). Image size
and augmentation are the data set's, the same for a whole search. The flags are the one source: docs list
them (`tuner.docs`) and a parameter added without one splits groups, which is always safe.

How many members a group holds: at most `max_members`, and at most what fits a memory budget, one member
costing what `member_bytes` says (on a GPU measured over one training step, as HFTA's partitioner probes;
elsewhere estimated from the parameter, optimiser-state and activation sizes).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from tuner.families.base import DataInfo, Family, RunContext
from tuner.fused.group import FusedGroup, MemberSpec, trunk
from tuner.fused.net import FusedNet


def split_keys(family: Family) -> tuple[str, ...]:
    """The parameters whose values must be equal within a group (all but those marked fusable)."""
    return tuple(k for k, p in family.params.items() if not p.fusable)


def signature(family: Family, config: dict) -> tuple | None:
    """What a configuration's group is named by; None when it cannot fuse at all (it trains alone)."""
    cfg = family.resolve(config)
    if not family.fusable(cfg):
        return None
    return (family.name,) + tuple((k, json.dumps(cfg[k], sort_keys=True, default=str)) for k in split_keys(family))


@dataclass(frozen=True)
class Group:
    """Configurations to train together (`FusedGroup`); `signature` None: one that trains alone."""

    family: str
    signature: tuple | None
    members: tuple[MemberSpec, ...]


def plan_groups(family: Family, members: list[MemberSpec], max_members: int,
                capacity: Callable[[dict], int] | None = None) -> list[Group]:
    """Members grouped by signature, in the order they came, each group at most `max_members` and at most
    `capacity(config)` (how many members of that config's kind fit; see `fitting`) long."""
    if max_members < 1:
        raise ValueError("max_members must be at least 1")
    pending: dict[tuple, list[MemberSpec]] = {}
    limits: dict[tuple, int] = {}
    groups: list[Group] = []
    for spec in members:
        sig = signature(family, spec.config)
        if sig is None:
            groups.append(Group(family.name, None, (spec,)))
            continue
        if sig not in limits:
            limits[sig] = max(1, min(max_members, capacity(spec.config) if capacity else max_members))
        pending.setdefault(sig, []).append(spec)
        if len(pending[sig]) == limits[sig]:
            groups.append(Group(family.name, sig, tuple(pending.pop(sig))))
    groups += [Group(family.name, sig, tuple(specs)) for sig, specs in pending.items()]
    return groups


# --------------------------------------------------------------------------- memory
def _example(model: nn.Sequential, info: DataInfo, channels: int, batch: int) -> torch.Tensor:
    """A batch of the shape the model takes, members first (1, B, ...)."""
    first = next(m for m in model.children() if not isinstance(m, (nn.Dropout, nn.Flatten)))
    if isinstance(first, nn.Linear) and not isinstance(next(iter(model.children())), nn.Flatten):
        return torch.zeros(1, batch, first.in_features)  # a head on cached features
    return torch.zeros(1, batch, channels, info.height, info.width)


def member_bytes(family: Family, config: dict, info: DataInfo, ctx: RunContext | None = None) -> int:
    """Memory one member of this config adds to a group: its weights, gradients and optimiser state, and one
    training step's activations. On a GPU it is measured (one step of a one-member group, peak allocated);
    on a CPU estimated from the sizes (activations counted twice: kept for backward, and their gradients)."""
    ctx = ctx or RunContext()
    group = FusedGroup(family, [MemberSpec("probe", config)], info, ctx)
    learner = group.members[0].learner
    model = trunk(learner)
    x = _example(model, info, family.input_channels(info), int(learner.cfg["batch_size"])).to(group.device)
    if group.device.type == "cuda":
        return _measured(group, model, x)
    net = FusedNet([model], [group.members[0].rng])
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: sizes.append(o.numel() * o.element_size()))
             for m in model.children()]
    with torch.no_grad():
        model.train()(x[0].contiguous(memory_format=torch.channels_last) if x.dim() == 5 else x[0])
    for h in hooks:
        h.remove()
    states = 2 if learner.cfg["optimizer"] in ("adam", "adamw") else 1
    weights = sum(t.numel() * t.element_size() for t in net.params())
    return int(weights * (2 + states) + 2 * sum(sizes))


def _measured(group: FusedGroup, model: nn.Sequential, x: torch.Tensor) -> int:
    device = group.device
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    net = FusedNet([model], [group.members[0].rng])
    learner = group.members[0].learner
    logits = net(x)
    learner.loss_fn(logits[0], torch.zeros(x.shape[1], dtype=torch.long, device=device)).backward()
    net.scatter_grads()
    learner.optimizer.step()  # its state now exists, as it does in training
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def fitting(family: Family, info: DataInfo, budget_bytes: int, ctx: RunContext | None = None) -> Callable[[dict], int]:
    """`plan_groups`'s capacity: how many members of a config fit `budget_bytes` (probed once per signature)."""
    seen: dict[tuple | None, int] = {}

    def capacity(config: dict) -> int:
        sig = signature(family, config)
        if sig not in seen:
            seen[sig] = max(1, budget_bytes // max(1, member_bytes(family, config, info, ctx)))
        return seen[sig]

    return capacity
