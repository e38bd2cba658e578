"""The Ray trial of a fused group (`search.fuse`): several configurations trained as one model
(`tuner.fused.FusedGroup`) or looked up in one pass (`tuner.fused.lookup`), each reported as its own trial.

Each epoch the group sends one Tune result, `{"members": {member_id: metrics}}`: a member's metrics are the
keys a plain trial reports (`trainable.run_trial`), plus `ended` (it trains no further: finished, stopped by
its own early stopping or by the rungs, or failed: then `error`) and `stopped` (the rungs stopped it). The
driver (`tuner.search.fused`) turns them into member trials for the tables, the study and the console.

The checkpoint holds every member's plain learner state, its best epoch so far, its reported epochs and
whether it ended, so a resumed group skips its ended members and goes on with the others from their last
epoch; the first result after a restore carries each member's `history` (its epochs before).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch

from tuner.engine import gpu_share, pick_device, set_threads
from tuner.families import RunContext
from tuner.families.measure import size_and_speed
from tuner.fused import lookup
from tuner.fused.group import FusedGroup, MemberSpec
from tuner.fused.grouping import plan_groups
from tuner.metrics import BEST_LOSS, HISTORY, best_key
from tuner.search.trainable import STATE_FILE, TrialSpec

MEMBERS = "members"  # the key of a group's result and of its trial config


@dataclass
class MemberState:
    """What the group keeps of a member between epochs and across a restore."""

    best: float | None = None       # its best epoch's metric so far
    best_epoch: int | None = None
    best_loss: float | None = None  # its val_loss at that epoch: the console breaks a tie on it, as best.yaml does
    time_s: float = 0.0             # its share of the group's training time so far
    history: list = field(default_factory=list)  # every result it reported
    ended: bool = False
    error: str | None = None
    learner: dict | None = None     # the plain learner's checkpoint (TorchLearner.state_dict)

    def saved(self) -> dict:
        return dict(vars(self))


def saved_members(checkpoint) -> dict[str, MemberState]:
    """Each member's state in a group's checkpoint (a `ray.tune.Checkpoint`)."""
    with checkpoint.as_directory() as d:
        saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    return {key: MemberState(**s) for key, s in saved[MEMBERS].items()}


def _load(states: dict[str, MemberState]) -> bool:
    """The group's checkpoint into `states`; True when there was one (a restore)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    states.update({k: s for k, s in saved_members(checkpoint).items() if k in states})
    return True


def _report(out: dict[str, dict], states: dict[str, MemberState]) -> None:
    from ray import tune

    with tempfile.TemporaryDirectory() as d:
        torch.save({MEMBERS: {k: s.saved() for k, s in states.items()}}, os.path.join(d, STATE_FILE))
        tune.report({MEMBERS: out}, checkpoint=tune.Checkpoint.from_directory(d))


def _scored(spec: TrialSpec, st: MemberState, metrics: dict) -> dict:
    """A member's epoch as a plain trial reports it: its running best, the time it took."""
    value = metrics.get(spec.metric)
    better = max if spec.mode == "max" else min
    if value is not None and value == value and (st.best is None or better(st.best, value) != st.best):
        st.best, st.best_epoch, st.best_loss = value, metrics.get("epoch"), metrics.get("val_loss")
    st.time_s += float(metrics.get("epoch_time_s") or 0.0)
    epoch = int(metrics.get("epoch", len(st.history) + 1))
    return {**metrics, best_key(spec.metric): st.best if st.best is not None else value,
            "best_epoch": st.best_epoch or epoch, BEST_LOSS: st.best_loss, "training_iteration": epoch,
            "time_this_iter_s": metrics.get("epoch_time_s"), "time_total_s": st.time_s, "train_time_s": st.time_s}


def run_group(config: dict, data=None, spec: TrialSpec | None = None, rungs=None,
              ended: dict[str, int] | None = None) -> None:
    """Train (or look up) every member of `config["members"]` ([{key, config}]); `rungs`: the driver's
    `Rungs` actor (ASHA), None for fifo; `ended`: the members trials.csv records as ended (--resume)."""
    import ray

    assert spec is not None, "run_group takes its TrialSpec from tune.with_parameters (fused.trainable)"

    set_threads(spec.cpus)
    ctx = RunContext(device=str(pick_device(spec.gpus)), cache_dir=spec.cache_dir, augment=spec.augment,
                     gpu_share=gpu_share(spec.gpus))
    node = ray.get_runtime_context().get_node_id()
    members = [MemberSpec(m["key"], m["config"]) for m in config[MEMBERS]]
    states = {m.key: MemberState() for m in members}
    restored = _load(states)
    for key in set(ended or ()) & set(states):
        # ended after the checkpoint Ray restores (an interruption between the tables and Tune's snapshot):
        # trained again, the rungs (which hold its scores) would not judge it again and it would run on
        states[key].ended = True
    # a restore: ended members are said once more (the driver may not have heard), the rest go on
    out = {k: {**(s.history[-1] if s.history else {}), "ended": True, "error": s.error, HISTORY: s.history}
           for k, s in states.items() if s.ended}
    todo = [m for m in members if not states[m.key].ended]
    if spec.family.name in ("knn", "features"):
        _lookups(spec, todo, data, ctx, states, out, node)
        return
    if out:
        _report(out, states)
    groups = [FusedGroup(spec.family, list(g.members), data.info, ctx)
              for g in plan_groups(spec.family, todo, max(1, len(todo)))]
    for group in groups:
        for m in group.members:
            saved = states[m.key].learner
            if saved is not None:
                group.load_member_state(m.key, saved)
    _train(spec, groups, data, states, rungs, node, restored)


def _lookups(spec: TrialSpec, todo: list[MemberSpec], data, ctx, states, out: dict, node) -> None:
    for r in lookup.evaluate(spec.family, todo, data, data.info, ctx):
        st = states[r.key]
        st.ended, st.error = True, r.error
        metrics = _scored(spec, st, r.metrics) if r.metrics is not None else {}
        st.history = [metrics] if metrics else []
        out[r.key] = {**metrics, "node_id": node, "ended": True, "error": r.error}
    _report(out, states)


def _measured(group: FusedGroup, data) -> dict:
    """A member's size and speed (its plain learner's), measured once for the group: members share a shape."""
    return size_and_speed(group.export(group.members[0].key), data.x_val)


def _decide(spec: TrialSpec, rungs, scored: list) -> list[bool]:
    """ASHA's stops for one group's epoch (tuner.fused's flow: every result to the rungs, then a completion for
    every member that ends), in one call to the driver's `Rungs` actor; none for fifo (`rungs` None)."""
    if rungs is None:
        return [False] * len(scored)
    import ray

    return ray.get(rungs.decide.remote([(r.key, m["epoch"], m[best_key(spec.metric)], r.done) for r, m in scored]))


def _train(spec: TrialSpec, groups: list[FusedGroup], data, states: dict[str, MemberState], rungs, node,
           restored: bool) -> None:
    """Every group one epoch at a time, in turn; one Tune result (and checkpoint) per round."""
    runs: list[tuple[Any, Any, dict]] = [(g, g.fit(data, spec.max_epochs), {}) for g in groups]
    first = restored
    while runs:
        out: dict[str, dict] = {}
        for run in list(runs):
            group, epochs, measured = run
            reports = next(epochs, None)
            if reports is None:
                runs.remove(run)
                continue
            if not measured:
                measured.update(_measured(group, data))
            scored = []  # (report, metrics) of the members with a result this epoch
            for r in reports:
                if r.metrics is None:  # a NaN loss: this member fails, the others go on
                    states[r.key].ended, states[r.key].error = True, r.error
                    out[r.key] = {"ended": True, "error": r.error}
                else:
                    scored.append((r, {**_scored(spec, states[r.key], r.metrics), **measured, "node_id": node}))
            for (r, metrics), stopped in zip(scored, _decide(spec, rungs, scored)):
                st = states[r.key]
                if stopped:
                    group.stop(r.key)
                st.ended = r.done or stopped
                if first:
                    metrics[HISTORY] = list(st.history)
                st.history.append({k: v for k, v in metrics.items() if k != HISTORY})
                out[r.key] = {**metrics, "ended": st.ended, "stopped": stopped}
            for m in group.members:
                if m.key in out and not states[m.key].error:
                    states[m.key].learner = group.member_state(m.key)
        first = False
        if out:
            _report(out, states)
