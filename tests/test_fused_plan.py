"""Fused trials around the training: which configurations share a group and how many fit (tuner.fused.grouping),
ASHA's decisions for members (tuner.fused.rungs, against Ray's own scheduler), and knn / features configurations
evaluated in one pass (tuner.fused.lookup) as their trials alone would be."""
from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import pytest

from tuner import spaces
from tuner.data import prepare
from tuner.families import get_family
from tuner.fused.group import MemberSpec
from tuner.fused.grouping import fitting, member_bytes, plan_groups, signature, split_keys
from tuner.fused.lookup import evaluate
from tuner.fused.rungs import Rungs


@pytest.fixture(scope="module")
def digits():
    return prepare(spaces.DatasetConfig(name="digits", split=spaces.SplitConfig(0.2, 0.2, 0)), progress=False)


# --------------------------------------------------------------------------- grouping
def test_what_splits_a_group_is_every_parameter_not_marked_fusable():
    mlp = split_keys(get_family("mlp"))
    assert {"hidden", "batchnorm", "activation", "batch_size", "compile"} <= set(mlp)
    assert not {"lr", "momentum", "weight_decay", "optimizer", "lr_schedule", "seed", "dropout", "loss"} & set(mlp)
    assert {"arch", "weights", "trainable_layers", "hidden", "pool", "cached_views"} <= set(
        split_keys(get_family("transfer")))


def test_groups_keep_the_order_configs_came_in_and_their_size_limit():
    mlp = get_family("mlp")
    cfgs = [{"hidden": [16], "lr": 0.1 * i} for i in range(5)] + [{"hidden": [8]}, {"hidden": [16], "batch_size": 32}]
    cfgs.insert(2, {"hidden": [8], "seed": 3})
    specs = [MemberSpec(str(i), c) for i, c in enumerate(cfgs)]
    groups = plan_groups(mlp, specs, max_members=3)
    assert [[m.key for m in g.members] for g in groups] == [["0", "1", "3"], ["2", "6"], ["4", "5"], ["7"]]
    assert len({g.signature for g in groups}) == 3  # two groups of [16] at batch 64, one of [8], one at batch 32
    assert groups[0].signature == signature(mlp, {"hidden": [16], "lr": 5.0, "seed": 9})


def test_configs_that_cannot_fuse_train_alone():
    transfer = get_family("transfer")
    cfgs = [{"arch": "resnet18", "trainable_layers": 1}, {"arch": "resnet18", "trainable_layers": 1},
            {"arch": "resnet18", "weights": "none"}]
    groups = plan_groups(transfer, [MemberSpec(str(i), c) for i, c in enumerate(cfgs)], max_members=8)
    assert [(g.signature, len(g.members)) for g in groups] == [(None, 1)] * 3
    assert signature(get_family("knn"), {}) is None  # knn and features: tuner.fused.lookup instead


def test_a_member_costs_more_with_wider_layers_and_bigger_batches_and_the_budget_caps_groups(digits):
    mlp = get_family("mlp")
    small = member_bytes(mlp, {"hidden": [32]}, digits.info)
    assert 0 < small < member_bytes(mlp, {"hidden": [256]}, digits.info)
    assert small < member_bytes(mlp, {"hidden": [32], "batch_size": 512}, digits.info)
    assert member_bytes(get_family("cnn"), {"channels": 8, "blocks": 2}, digits.info) > 0
    capacity = fitting(mlp, digits.info, budget_bytes=int(3.5 * small))
    assert capacity({"hidden": [32], "lr": 0.5}) == 3
    specs = [MemberSpec(str(i), {"hidden": [32], "seed": i}) for i in range(7)]
    assert [len(g.members) for g in plan_groups(mlp, specs, 20, capacity)] == [3, 3, 1]


# --------------------------------------------------------------------------- rungs
def _drive(seed: int, grace: int, max_t: int, rf: float, mode: str, n: int = 14) -> int:
    """Random interleaved results through Ray's ASHAScheduler and through Rungs: every decision equal.
    Returns how many stops were decided (a run without any would prove little)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    rng = random.Random(seed)
    asha = ASHAScheduler(time_attr="training_iteration", metric="score", mode=mode, max_t=max_t,
                         grace_period=grace, reduction_factor=rf)
    rungs = Rungs(grace, max_t, rf, mode)
    trials = {f"t{i}": SimpleNamespace(trial_id=f"t{i}") for i in range(n)}  # ASHA reads trial_id only
    for t in trials.values():
        asha.on_trial_add(None, t)
    epoch = dict.fromkeys(trials, 0)
    quits = {k: rng.randint(1, max_t) if rng.random() < 0.2 else None for k in trials}  # early stopping
    live, stops = set(trials), 0
    while live:
        key = rng.choice(sorted(live))
        epoch[key] += 1
        score = rng.choice([rng.random(), round(rng.random(), 1), 0.5, float("nan") if rng.random() < 0.1 else 0.3])
        result = {"training_iteration": epoch[key], "score": score}
        stop = asha.on_trial_result(None, trials[key], result) == TrialScheduler.STOP
        assert rungs.report(key, epoch[key], score) == stop, (key, epoch[key], score)
        stops += stop
        if stop or epoch[key] == quits[key]:  # Ray completes a trial it stops, and one that ends by itself
            asha.on_trial_complete(None, trials[key], result)
            rungs.complete(key, epoch[key], score)
            live.remove(key)
    theirs = asha._brackets[0]._rungs  # private, read here only: the records must be the same too
    assert [m for m, _ in theirs] == [m for m, _ in rungs.rungs]
    for (_, a), (_, b) in zip(theirs, rungs.rungs):
        assert a.keys() == b.keys()
        assert all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
    return stops


@pytest.mark.parametrize("grace,max_t,rf", [(1, 9, 3), (1, 16, 4), (2, 20, 2), (1, 5, 2), (3, 10, 3.5)])
@pytest.mark.parametrize("mode", ["max", "min"])
def test_rung_decisions_equal_ashas_for_the_same_reported_scores(grace, max_t, rf, mode):
    assert sum(_drive(seed, grace, max_t, rf, mode) for seed in range(6)) > 0


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_groups_epoch_decided_in_one_call_equals_its_members_reported_one_by_one(mode):
    # what a fused trial sends the rungs actor once an epoch, against the report-then-complete flow per member
    rng = random.Random(7)
    one_call, one_by_one = Rungs(1, 9, 3, mode), Rungs(1, 9, 3, mode)
    epoch, live, stops = {}, [f"m{i}" for i in range(10)], 0
    while live:
        batch = []
        for key in live:
            epoch[key] = epoch.get(key, 0) + 1
            score = None if rng.random() < 0.05 else rng.choice([rng.random(), 0.5, float("nan")])
            batch.append((key, epoch[key], score, epoch[key] >= 9 or rng.random() < 0.05))
        expected = []
        for key, e, score, done in batch:
            stopped = one_by_one.report(key, e, score) and not done
            if stopped or done:
                one_by_one.complete(key, e, score)
            expected.append(stopped)
        assert one_call.decide(batch) == expected
        assert one_call.state_dict() == one_by_one.state_dict() or repr(one_call.state_dict()) == repr(
            one_by_one.state_dict())  # NaN scores compare unequal to themselves
        stops += sum(expected)
        live = [key for (key, _, _, done), stopped in zip(batch, expected) if not (done or stopped)]
    assert stops > 0  # a run without a stop would prove little


def test_rung_records_survive_a_restart():
    a = Rungs(1, 9, 3)
    for i, s in enumerate([0.2, 0.9, 0.5, 0.7]):
        a.report(f"m{i}", 1, s)
    b = Rungs(1, 9, 3)
    b.load_state_dict(a.state_dict())
    assert b.report("late", 1, 0.6) == a.report("late", 1, 0.6) is True


# --------------------------------------------------------------------------- one-pass look-ups
def test_knn_configs_over_one_table_report_what_their_trials_alone_report(digits):
    knn = get_family("knn")
    grid = itertools.product((1, 7, 5000), ("euclidean", "cosine", "manhattan"), ("none", "l2"),
                             ("uniform", "distance"), ("loo", "holdout"))
    cfgs = [dict(k=k, metric=m, normalize=n, weights=w, validation=v) for k, m, n, w, v in grid]
    reports = evaluate(knn, [MemberSpec(str(i), c) for i, c in enumerate(cfgs)], digits, digits.info)
    assert [r.key for r in reports] == [str(i) for i in range(len(cfgs))]
    for r, cfg in zip(reports, cfgs):
        learner = knn.learner(cfg, digits.info)
        if cfg["k"] == 5000:
            with pytest.raises(Exception) as failed:
                list(learner.fit(digits, 1))
            assert r.metrics is None and r.error == str(failed.value)
            continue
        (alone,) = list(learner.fit(digits, 1))
        assert (r.metrics["val_loss"], r.metrics["val_accuracy"]) == (alone["val_loss"], alone["val_accuracy"])
        # and the size and speed its trial measures (trials.csv's columns; the pass measured them once)
        assert r.done and set(r.metrics) == set(alone) | {"num_params", "latency_ms", "latency_ms_b64"}
        assert r.metrics["num_params"] == learner.num_params and r.metrics["latency_ms"] > 0


def test_features_configs_over_one_embedding_report_what_their_trials_alone_report(digits):
    features = get_family("features")
    cfgs = [dict(classifier=c, C=C, normalize=n)
            for c, C, n in itertools.product(("svm", "knn"), (0.1, 1.0), ("none", "standard"))]
    reports = evaluate(features, [MemberSpec(str(i), c) for i, c in enumerate(cfgs)], digits, digits.info)
    timed = ("epoch_time_s", "latency_ms", "latency_ms_b64")
    for r, cfg in zip(reports, cfgs):
        learner = features.learner(cfg, digits.info)
        (alone,) = list(learner.fit(digits, 1))
        assert {k: v for k, v in r.metrics.items() if k not in timed} == \
            {k: v for k, v in alone.items() if k not in timed} | {"num_params": learner.num_params}
        assert r.metrics["latency_ms"] > 0 and r.metrics["latency_ms_b64"] > 0
