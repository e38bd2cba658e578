"""Fused trials (tuner.fused): a member trained in a group is its configuration trained alone, with the same seed
and batch order: the same weights after 2 epochs (within 1e-5; at most 7e-7 on the 2-core AMD EPYC at one thread), the
same epoch reports, the same checkpoints, whatever the other members' optimiser, lr, schedule, loss or dropout."""
from __future__ import annotations

import io
import math

import pytest
import torch

from tuner import spaces
from tuner.data import prepare
from tuner.errors import TrialFailed
from tuner.families import RunContext, get_family
from tuner.fused.group import FusedGroup, MemberSpec
from tuner.fused.net import NotFusable
from tuner.types import EPOCH_KEYS, TRAINED_KEYS

TOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    """Trials run with the threads they were given (`engine.set_threads`), most often one. The thread count is
    part of "the same arithmetic": a plain learner's own weights differ between 1 and 2 threads by 5e-3 in
    directions whose true gradient is 0 (a bias before a batch norm, a constant pixel's weights), where Adam
    turns rounding into lr-sized steps. The learners now zero the one such gradient that reaches a parameter
    (tuner.engine.optim.shadowed_biases); at one thread what is left is rounding, well under TOL."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return prepare(spaces.DatasetConfig(name="digits", split=spaces.SplitConfig(0.2, 0.2, 0)), progress=False)


def alone(family: str, cfg: dict, data, epochs: int, ctx: RunContext | None = None):
    learner = get_family(family).learner(cfg, data.info, ctx)
    return learner, list(learner.fit(data, epochs))


def fused(family: str, cfgs: dict[str, dict], data, epochs: int, ctx: RunContext | None = None):
    group = FusedGroup(get_family(family), [MemberSpec(k, c) for k, c in cfgs.items()], data.info, ctx)
    reports: dict[str, list] = {k: [] for k in cfgs}
    for epoch in group.fit(data, epochs):
        for r in epoch:
            reports[r.key].append(r)
    return group, reports


def through_a_file(state: dict) -> dict:
    """A checkpoint saved and loaded as the trainable does (`torch.load(weights_only=True)`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_weights(fused_model: dict, alone_model: dict, tol: float = TOL) -> None:
    assert fused_model.keys() == alone_model.keys()
    for k, v in alone_model.items():
        assert (fused_model[k].double() - v.double()).abs().max().item() <= tol, k


def assert_same_reports(fused_reports: list, alone_reports: list) -> None:
    assert [r.metrics["epoch"] for r in fused_reports] == [m["epoch"] for m in alone_reports]
    for r, m in zip(fused_reports, alone_reports):
        assert set(EPOCH_KEYS + TRAINED_KEYS) <= set(r.metrics) == set(m)
        assert r.metrics["val_accuracy"] == m["val_accuracy"] and r.metrics["lr"] == m["lr"]
        for k in ("train_loss", "train_accuracy", "val_loss"):
            assert r.metrics[k] == pytest.approx(m[k], abs=1e-6), k


def check_group(family: str, base: dict, variants: dict[str, dict], data, epochs: int = 2, ctx=None):
    cfgs = {k: {**base, **v} for k, v in variants.items()}
    group, reports = fused(family, cfgs, data, epochs, ctx)
    for key, cfg in cfgs.items():
        learner, alone_reports = alone(family, cfg, data, epochs, ctx)
        assert_same_weights(group.member_state(key)["model"], learner.state_dict()["model"])
        assert_same_reports(reports[key], alone_reports)
    return group


# each group mixes optimisers, lrs, weight decays, momenta, schedules, losses and seeds
MIXED = {
    "adam": {"optimizer": "adam", "lr": 1e-3, "seed": 1},
    "sgd": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.5, "weight_decay": 1e-3, "seed": 2},
    "nesterov": {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": True, "lr_schedule": "step",
                 "lr_step": 1, "label_smoothing": 0.1, "seed": 3},
    "adamw": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "lr_schedule": "cosine", "seed": 4},
    "rmsprop": {"optimizer": "rmsprop", "lr": 1e-3, "momentum": 0.9, "eps": 1e-6, "loss": "focal",
                "focal_gamma": 1.0, "lr_schedule": "plateau", "seed": 5},
}


def test_linear_members_equal_their_trials_alone(digits):
    check_group("linear", {}, MIXED, digits)


def test_mlp_members_with_batchnorm_and_their_own_dropout_equal_their_trials_alone(digits):
    dropouts = {"adam": 0.0, "sgd": 0.2, "nesterov": 0.5, "adamw": 0.0, "rmsprop": 0.3}
    variants = {k: {**v, "dropout": dropouts[k]} for k, v in MIXED.items()}
    check_group("mlp", {"hidden": [32, 16], "batchnorm": True}, variants, digits)


def test_cnn_members_with_batchnorm_equal_their_trials_alone(digits):
    variants = {k: {**v, "dropout": 0.3 * (i % 2), "spatial_dropout": 0.2 * (i % 3 == 1)}
                for i, (k, v) in enumerate(MIXED.items()) if k != "rmsprop"}
    check_group("cnn", {"blocks": 2, "channels": 8, "fc": [16], "batchnorm": True}, variants, digits)


def test_frozen_heads_on_cached_features_equal_their_trials_alone(digits, tmp_path):
    import torchvision.models as tvm

    weights = tmp_path / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(tvm.get_model("resnet18").state_dict(), weights)  # a "pretrained" file that needs no download
    ctx = RunContext(cache_dir=str(tmp_path / "cache"))
    base = {"arch": "resnet18", "weights": str(weights), "hidden": [32], "batchnorm": True}
    variants = {"adam": MIXED["adam"], "sgd": {**MIXED["sgd"], "dropout": 0.3}, "adamw": MIXED["adamw"]}
    group = check_group("transfer", base, variants, digits, ctx=ctx)
    assert all(not k.startswith("body.") for k in group.member_state("sgd")["model"])  # heads only, as alone


def test_a_stopped_member_keeps_its_weights_while_the_others_go_on(digits):
    cfgs = {k: {"hidden": [32], "batchnorm": True, **MIXED[k]} for k in ("adam", "sgd", "adamw")}
    group = FusedGroup(get_family("mlp"), [MemberSpec(k, c) for k, c in cfgs.items()], digits.info)
    seen = []
    for epoch in group.fit(digits, 3):
        seen.append([r.key for r in epoch])
        if len(seen) == 1:
            group.stop("sgd")  # a scheduler's decision after epoch 1
    assert seen == [["adam", "sgd", "adamw"], ["adam", "adamw"], ["adam", "adamw"]]
    one_epoch, _ = alone("mlp", cfgs["sgd"], digits, 1)
    assert_same_weights(group.member_state("sgd")["model"], one_epoch.state_dict()["model"], tol=0)
    for key in ("adam", "adamw"):  # the compacted group trains them on, as if "sgd" had never been there
        learner, _ = alone("mlp", cfgs[key], digits, 3)
        assert_same_weights(group.member_state(key)["model"], learner.state_dict()["model"])


def test_early_stopping_and_a_diverging_member_end_alone(digits):
    cfgs = {"patient": {"lr": 0.0, "early_stopping": 1, "seed": 1},  # never improves: stops after epoch 2
            "diverges": {"optimizer": "sgd", "lr": 1e38, "seed": 2},
            "fine": {"lr": 1e-2, "seed": 3}}
    group, reports = fused("linear", cfgs, digits, 4)
    assert [r.metrics["epoch"] for r in reports["patient"]] == [m["epoch"] for m in alone("linear", cfgs["patient"],
                                                                                             digits, 4)[1]] == [1, 2]
    assert reports["patient"][-1].done
    with pytest.raises(TrialFailed) as failed:
        alone("linear", cfgs["diverges"], digits, 4)
    assert len(reports["diverges"]) == 1 and reports["diverges"][0].metrics is None
    assert reports["diverges"][0].error == str(failed.value) and "train_loss is nan" in str(failed.value)
    learner, fine = alone("linear", cfgs["fine"], digits, 4)
    assert_same_reports(reports["fine"], fine)
    assert_same_weights(group.member_state("fine")["model"], learner.state_dict()["model"])


def test_a_member_resumes_exactly_from_its_own_checkpoint_in_a_group_or_alone(digits):
    cfgs = {k: {"hidden": [32], "batchnorm": True, "dropout": 0.3, **MIXED[k]} for k in ("adam", "nesterov")}
    whole, _ = fused("mlp", cfgs, digits, 3)
    first, _ = fused("mlp", cfgs, digits, 1)
    states = {k: through_a_file(first.member_state(k)) for k in cfgs}
    resumed = FusedGroup(get_family("mlp"), [MemberSpec(k, c) for k, c in cfgs.items()], digits.info)
    for key, state in states.items():
        resumed.load_member_state(key, state)
    epochs = [[r.metrics["epoch"] for r in epoch] for epoch in resumed.fit(digits, 3)]
    assert epochs == [[2, 2], [3, 3]]
    for key in cfgs:
        assert_same_weights(resumed.member_state(key)["model"], whole.member_state(key)["model"], tol=0)
        plain = get_family("mlp").learner(cfgs[key], digits.info)  # a trial alone takes the member's checkpoint
        plain.load_state_dict(states[key])
        list(plain.fit(digits, 3))
        assert_same_weights(plain.state_dict()["model"], whole.member_state(key)["model"])


def test_a_member_continues_a_plain_trials_checkpoint(digits):
    cfg = {"hidden": [16], "dropout": 0.2, **MIXED["sgd"]}
    plain, _ = alone("mlp", cfg, digits, 1)
    state = through_a_file(plain.state_dict())  # as the trainable saves it (the live dict aliases the optimiser's)
    list(plain.fit(digits, 2))
    group = FusedGroup(get_family("mlp"), [MemberSpec("a", cfg), MemberSpec("b", {**cfg, "seed": 9})], digits.info)
    group.load_member_state("a", state)
    list(group.fit(digits, 2))
    assert_same_weights(group.member_state("a")["model"], plain.state_dict()["model"])


def test_an_exported_member_predicts_as_its_trial_alone(digits):
    cfgs = {"a": {"channels": 4, "blocks": 1, **MIXED["adam"]}, "b": {"channels": 4, "blocks": 1, **MIXED["sgd"]}}
    group, _ = fused("cnn", cfgs, digits, 1)
    learner, _ = alone("cnn", cfgs["b"], digits, 1)
    exported = group.export("b")
    assert type(exported) is type(learner)
    got, want = exported.predict_proba(digits.x_test), learner.predict_proba(digits.x_test)
    assert abs(got - want).max() <= 1e-6
    assert_same_weights(exported.weights()["model"], learner.weights()["model"])


def test_members_of_different_shapes_do_not_fuse(digits):
    group = FusedGroup(get_family("mlp"), [MemberSpec("a", {"hidden": [16]}), MemberSpec("b", {"hidden": [8]})],
                       digits.info)
    with pytest.raises(NotFusable):
        next(group.fit(digits, 1))


def test_epoch_time_is_each_members_share_of_the_group_epoch(digits):
    _, reports = fused("linear", {"a": {}, "b": {"seed": 1}}, digits, 1)
    times = [reports[k][0].metrics["epoch_time_s"] for k in ("a", "b")]
    assert times[0] == times[1] > 0 and not math.isnan(times[0])
