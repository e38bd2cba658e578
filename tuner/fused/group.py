"""A fused group: several configurations of one family trained as one model, each member as its trial alone.

Every member is the plain learner its family builds for its config (same seed: same initial weights, same
optimiser, schedule, loss, generator for batch order and augmentation), so its checkpoints, exported weights
and epoch reports are a plain learner's. What the group adds is one forward and backward pass for all members
(`tuner.fused.net`), each member taking its own batch (`x[idx_m]`) in its own order, and a generator per
member for dropout, which a plain learner draws from the global one. Members may stop at any epoch (early
stopping, a NaN loss, `stop` from a scheduler); the rest go on in a compacted network.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tuner.engine import (TorchLearner, augment, check_finite, eval_batch_size, eval_batches, place, precision, take,
                          to_device, train_batches)
from tuner.engine.optim import zero_grads
from tuner.errors import TrialFailed
from tuner.families.base import DataInfo, Family, RunContext
from tuner.families.transfer import FrozenLearner
from tuner.fused.net import FusedNet, NotFusable, own_storage


@dataclass(frozen=True)
class MemberSpec:
    """A configuration to train in a group: `key` names it in reports and checkpoints (a trial id)."""

    key: str
    config: dict


@dataclass
class MemberReport:
    """One member's epoch: `metrics` as a plain learner's `fit` yields them (EPOCH_KEYS + TRAINED_KEYS; its
    `epoch_time_s` is its share of the group's epoch), None when it failed; `done`: it trains no further."""

    key: str
    metrics: dict | None
    done: bool
    error: str | None = None


@dataclass
class Member:
    key: str
    learner: TorchLearner   # its own plain learner: model (weights in the group's storage), optimiser, counters
    rng: torch.Generator    # its dropout masks (a plain learner draws them from the global generator)
    done: bool = False
    error: str | None = None


def _copied(state):
    """A checkpoint with every tensor copied (nested dicts and lists)."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: _copied(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_copied(v) for v in state)
    return state


def trunk(learner: TorchLearner) -> nn.Sequential:
    """The part of a member's model that trains: the whole model, or a frozen transfer model's head."""
    model = learner.model.head if isinstance(learner, FrozenLearner) else learner.model
    if not isinstance(model, nn.Sequential):
        raise NotFusable(f"{type(learner).__name__}: the model is not an nn.Sequential")
    return model


class FusedGroup:
    """Members of one family that share the model's shape and the data stream (`tuner.fused.grouping`).

    fit(data, max_epochs) yields, per epoch, a `MemberReport` for every member that trained in it; between
    epochs `stop(key)` ends a member (a scheduler's decision). `member_state` / `load_member_state` are the
    plain learner's checkpoint format; `export` is a plain learner holding a member's weights.
    """

    def __init__(self, family: Family, members: list[MemberSpec], info: DataInfo, ctx: RunContext | None = None):
        if not members:
            raise ValueError("a fused group needs at least one member")
        self.family, self.info, self.ctx = family, info, ctx or RunContext()
        self.device = torch.device(self.ctx.device)
        self.members: list[Member] = []
        for spec in members:
            learner = family.learner(spec.config, info, self.ctx)  # seeds and builds, as a trial alone does
            if not isinstance(learner, TorchLearner):
                raise NotFusable(f"{family.name}: its learner trains no torch model")
            self.members.append(Member(spec.key, learner, self._dropout_generator(learner)))
            if self.members[0].learner is not learner and isinstance(learner, FrozenLearner):
                learner.drop_body()  # one frozen body serves the group: the first member's
        if len({m.key for m in self.members}) != len(self.members):
            raise ValueError("fused members need distinct keys")
        lead = self.members[0].learner
        self.frozen = isinstance(lead, FrozenLearner)
        self.batch_size = int(lead.cfg["batch_size"])
        self.net: FusedNet | None = None
        self._in_net: list[Member] = []
        self._placed: tuple | None = None

    def _dropout_generator(self, learner: TorchLearner) -> torch.Generator:
        """What a trial alone would draw dropout from: the global generator as its family left it after building
        the model (on a GPU, the device's, seeded by the family's `torch.manual_seed`)."""
        if self.device.type == "cuda":
            return torch.Generator(self.device).manual_seed(int(learner.cfg["seed"]))
        gen = torch.Generator()
        gen.set_state(torch.get_rng_state())
        return gen

    # --------------------------------------------------------------------------- members
    def member(self, key: str) -> Member:
        for m in self.members:
            if m.key == key:
                return m
        raise KeyError(key)

    def active(self) -> list[Member]:
        return [m for m in self.members if not m.done]

    def stop(self, key: str) -> None:
        """End a member's training (a scheduler's decision); its weights stay as they are now."""
        self.member(key).done = True

    def _net(self, active: list[Member]) -> FusedNet:
        """The fused network of the members still training: rebuilt (compacted) when one has left."""
        if self.net is None or [m.key for m in self._in_net] != [m.key for m in active]:
            for m in self._in_net:
                if m not in active:
                    own_storage(trunk(m.learner))
            self.net = FusedNet([trunk(m.learner) for m in active], [m.rng for m in active])
            self._in_net = list(active)
        return self.net

    # --------------------------------------------------------------------------- training
    def _data(self, data) -> tuple:
        if self._placed is None or self._placed[0] is not data:
            lead = self.members[0].learner
            source = lead.train_data(data) if isinstance(lead, FrozenLearner) else data  # frozen: cached features
            arrays = [source.x_train, source.y_train, source.x_val, source.y_val]
            self._placed = (data, place(arrays, self.device, self.ctx.gpu_share))
        return self._placed[1]

    def fit(self, data, max_epochs: int) -> Iterator[list[MemberReport]]:
        """Train every member up to max_epochs (each counts its own epochs, so members loaded from checkpoints
        of other epochs train together); yield each epoch's reports."""
        for m in self.members:
            m.learner.start(max_epochs)
            if m.learner.epoch >= max_epochs:
                m.done = True
        x_train, y_train, x_val, y_val = self._data(data)
        while True:
            active = self.active()
            if not active:
                return
            net = self._net(active)
            t0 = time.perf_counter()
            lrs = [m.learner.optimizer.param_groups[0]["lr"] for m in active]
            train_loss, train_acc = self._train_epoch(net, active, x_train, y_train)
            val_loss, val_acc = self._evaluate(net, active, x_val, y_val)
            share = (time.perf_counter() - t0) / len(active)
            yield [self._end_epoch(m, max_epochs, lrs[i], train_loss[i], train_acc[i], val_loss[i], val_acc[i],
                                   share) for i, m in enumerate(active)]

    @staticmethod
    def _end_epoch(m: Member, max_epochs: int, lr: float, train_loss: float, train_acc: float,
                   val_loss: float, val_acc: float, share: float) -> MemberReport:
        try:
            check_finite(train_loss, m.learner.epoch, lr)
        except TrialFailed as exc:
            m.done, m.error = True, str(exc)
            return MemberReport(m.key, None, True, m.error)
        stop = m.learner.end_epoch(val_loss, val_acc)
        m.done = stop or m.learner.epoch >= max_epochs or m.done
        metrics = {"epoch": m.learner.epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                   "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr, "epoch_time_s": share}
        return MemberReport(m.key, metrics, m.done)

    def _inputs(self, xb: torch.Tensor, members: list[Member] | None, train: bool) -> torch.Tensor:
        """Raw rows -> model inputs. Training: M*B rows, each member's B augmented with its own generator,
        returned (M, B, ...). Evaluation (members None): B rows every member sees, returned (1, B, ...)."""
        lead = self.members[0].learner
        t = to_device(xb, self.device).float() if self.frozen else lead.pre(to_device(xb, self.device))
        if members is not None and train and not self.frozen and lead.augment_cfg is not None and lead.augment_cfg.any:
            b = len(t) // len(members)
            t = torch.cat([augment(t[i * b:(i + 1) * b], lead.augment_cfg, m.learner.gen)
                           for i, m in enumerate(members)])
        n = len(members) if members else 1
        return t.view(n, len(t) // n, *t.shape[1:])

    def _train_epoch(self, net: FusedNet, active: list[Member], x, y) -> tuple[list[float], list[float]]:
        """One epoch of every active member, each on its own batches; per-member mean loss and accuracy."""
        net.train()
        orders = torch.stack([train_batches(len(x), self.batch_size, m.learner.gen) for m in active], 1)
        if isinstance(x, torch.Tensor):
            orders = to_device(orders, x.device)  # (batches, M, B): one copy per epoch, then gathered on the device
        total = torch.zeros(len(active), device=self.device)
        correct = torch.zeros(len(active), dtype=torch.long, device=self.device)
        for idx in orders:
            flat = idx.flatten()
            xb = self._inputs(take(x, flat, self.device), active, train=True)
            yb = take(y, flat, self.device).long().view(idx.shape)
            with precision(self.device, exact=False):
                logits = net(xb)
            losses = torch.stack([m.learner.loss_fn(logits[i], yb[i]) for i, m in enumerate(active)])
            self._step(net, active, losses)
            total += losses.detach().float() * idx.shape[1]
            correct += (logits.argmax(2) == yb).sum(1)
        seen = max(orders.shape[0] * orders.shape[2], 1)
        # divided as Python numbers, as the plain learner divides its totals
        return [t / seen for t in total.tolist()], [c / seen for c in correct.tolist()]

    @staticmethod
    def _step(net: FusedNet, active: list[Member], losses: torch.Tensor) -> None:
        """One backward pass for all members, then each member's own optimiser step. Each loss reaches only its
        member's weights, with gradient 1 as when it trains alone; `scatter_grads` then sets every member
        parameter's gradient, so the optimisers need no zero_grad."""
        net.zero_grad()
        scalers = [m.learner.scaler for m in active]
        if any(s.is_enabled() for s in scalers):  # float16 on a GPU: each member its own loss scale
            torch.stack([s.scale(losses[i]) for i, s in enumerate(scalers)]).sum().backward()
        else:
            losses.sum().backward()
        net.scatter_grads()
        for m, scaler in zip(active, scalers):
            zero_grads(m.learner.shadowed)  # as the plain learner does (tuner.engine.optim.shadowed_biases)
            if scaler.is_enabled():
                scaler.step(m.learner.optimizer)
                scaler.update()
            else:
                m.learner.optimizer.step()

    @torch.no_grad()
    def _proba(self, net: FusedNet, x) -> torch.Tensor:
        """(M, N, classes) probabilities in fixed-shape batches, as `TorchLearner._proba` makes them."""
        net.train(False)
        n = len(x)
        out = torch.empty((net.m, n, self.info.num_classes), device=self.device)
        where = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        for start, idx, real in eval_batches(n, eval_batch_size(self.batch_size), where):
            xb = self._inputs(take(x, idx, self.device), None, train=False)
            with precision(self.device, exact=False):
                logits = net(xb.expand(net.m, *xb.shape[1:]))
            out[:, start:start + real] = torch.softmax(logits.float(), 2)[:, :real]
        return out

    def _evaluate(self, net: FusedNet, active: list[Member], x, y) -> tuple[list[float], list[float]]:
        if not len(y):
            return [float("nan")] * len(active), [float("nan")] * len(active)
        proba = self._proba(net, x)
        yt = y.long() if isinstance(y, torch.Tensor) else torch.from_numpy(np.array(y, dtype=np.int64))
        yt = yt.to(self.device)
        losses = [F.nll_loss(p.clamp_min(1e-12).log(), yt).item() for p in proba]
        accs = [(p.argmax(1) == yt).float().mean().item() for p in proba]
        return losses, accs

    # --------------------------------------------------------------------------- checkpoints and export
    def member_state(self, key: str) -> dict:
        """The member's checkpoint in the plain learner's format (`TorchLearner.state_dict`): a plain learner
        of its config continues from it, and so does a group (`load_member_state`)."""
        m = self.member(key)
        state = m.learner.state_dict()
        state["cuda_rng" if self.device.type == "cuda" else "torch_rng"] = m.rng.get_state()
        # copies: the model's tensors are views (saving one saves the whole group's storage) and the optimiser's
        # are its live state, which the next step would change under a checkpoint kept in memory
        return _copied(state)

    def load_member_state(self, key: str, state: dict) -> None:
        """Continue a member from a checkpoint (its own, or a plain trial's of the same config), before `fit`
        or between two of its epochs."""
        m = self.member(key)
        cpu, cuda = torch.get_rng_state(), (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
                                            else None)
        # torch's optimiser adopts the state's tensors as they are: copies, so training never writes into `state`
        m.learner.load_state_dict(_copied(state))  # the weights land in the group's storage through the views
        torch.set_rng_state(cpu)  # the plain load sets the global generators: not the group's to change
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        rng = state.get("cuda_rng" if self.device.type == "cuda" else "torch_rng")
        if rng is not None:
            m.rng.set_state(rng)
        m.done, m.error = False, None

    def export(self, key: str) -> TorchLearner:
        """A plain learner of the member's config holding its weights (and training state): what the bundle,
        predict and retrain paths take from a trial."""
        m = self.member(key)
        learner = self.family.learner(m.learner.cfg, self.info, self.ctx)
        assert isinstance(learner, TorchLearner)  # what every fusable family builds
        cpu = torch.get_rng_state()
        learner.load_state_dict(self.member_state(key))
        torch.set_rng_state(cpu)
        if m.learner.best_state is not None:
            learner.best_state = {k: v.clone() for k, v in m.learner.best_state.items()}
        return learner
