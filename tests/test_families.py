"""Each trained family learns digits in a few epochs, with every common option, and without Ray."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tuner.data import prepare
from tuner.errors import TrialFailed
from tuner.families import RunContext, FAMILIES, get_family
from tuner.spaces import AugmentConfig, DatasetConfig


@pytest.fixture(scope="module")
def digits():
    return prepare(DatasetConfig(name="digits"), progress=False)


CONTRACT_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"}


@pytest.mark.parametrize("name, cfg, floor", [
    ("linear", {"lr": 0.05, "optimizer": "sgd"}, 0.85),
    ("mlp", {"hidden": [128, 64], "dropout": 0.1, "batchnorm": True, "activation": "gelu"}, 0.85),
    ("cnn", {"blocks": 2, "channels": 16, "lr": 3e-3}, 0.85),
])
def test_family_learns_digits_and_reports_contract_metrics(digits, name, cfg, floor):
    learner = get_family(name).learner(cfg, digits.info)
    history = list(learner.fit(digits, 4))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert CONTRACT_KEYS <= set(history[-1])
    assert history[-1]["val_accuracy"] >= floor
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    proba = learner.predict_proba(digits.x_test)
    assert proba.shape == (len(digits.y_test), 10) and np.allclose(proba.sum(1), 1, atol=1e-4)


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("schedule", ["none", "step", "plateau", "cosine"])
def test_every_optimizer_and_schedule_trains(digits, opt, schedule):
    cfg = {"optimizer": opt, "lr_schedule": schedule, "lr": 0.01 if opt == "sgd" else 1e-3, "lr_step": 1}
    history = list(get_family("linear").learner(cfg, digits.info).fit(digits, 2))
    assert all(math.isfinite(h["train_loss"]) for h in history)
    if schedule == "step":
        assert history[1]["lr"] == pytest.approx(history[0]["lr"] * 0.1)


def test_focal_loss_and_label_smoothing_train(digits):
    cfg = {"loss": "focal", "focal_gamma": 2.0, "label_smoothing": 0.1, "lr": 0.01}
    history = list(get_family("mlp").learner(cfg, digits.info).fit(digits, 3))
    assert history[-1]["val_accuracy"] > 0.8


def test_early_stopping_ends_training_after_patience(digits):
    # an lr of 0 never improves on the first epoch, so patience 2 stops at epoch 3
    history = list(get_family("linear").learner({"lr": 0.0, "early_stopping": 2}, digits.info).fit(digits, 10))
    assert len(history) == 3


def test_same_seed_gives_same_run_and_other_seed_differs(digits):
    def run(seed):
        return [h["train_loss"] for h in get_family("cnn").learner({"seed": seed, "channels": 8}, digits.info)
                .fit(digits, 2)]
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_checkpoint_resumes_exactly_where_it_stopped(digits):
    fam = get_family("cnn")
    cfg = {"channels": 8, "lr_schedule": "cosine", "dropout": 0.2}
    straight = [h["train_loss"] for h in fam.learner(cfg, digits.info).fit(digits, 3)]
    first = fam.learner(cfg, digits.info)
    gen = first.fit(digits, 3)
    next(gen)
    state = first.state_dict()
    torch.save(state, "/tmp/_tuner_ckpt.pt")
    second = fam.learner(cfg, digits.info)
    second.load_state_dict(torch.load("/tmp/_tuner_ckpt.pt", weights_only=True))
    resumed = [h["train_loss"] for h in second.fit(digits, 3)]
    assert resumed == pytest.approx(straight[1:], rel=1e-5)


def test_nan_loss_fails_the_trial_with_a_reason(digits):
    with pytest.raises(TrialFailed, match="train_loss is nan"):
        list(get_family("mlp").learner({"lr": 1e30, "optimizer": "sgd", "momentum": 0.0}, digits.info).fit(digits, 3))


def test_augmentation_runs_on_training_batches_only(digits):
    aug = AugmentConfig(rotation=10, translate=0.05, color_jitter=0.1)
    learner = get_family("cnn").learner({"channels": 16, "lr": 3e-3}, digits.info, RunContext(augment=aug))
    a = learner.predict_proba(digits.x_val[:16])
    b = learner.predict_proba(digits.x_val[:16])
    assert np.array_equal(a, b)  # evaluation is never augmented
    x = learner.inputs(digits.x_train[:16], train=False)
    assert not torch.equal(learner.inputs(digits.x_train[:16], train=True), x)  # training batches are
    assert list(learner.fit(digits, 4))[-1]["val_accuracy"] > 0.8


def test_cnn_flatten_pool_and_fc_head_build(digits):
    cfg = {"blocks": 3, "pool": "flatten", "fc": [64, 32], "spatial_dropout": 0.1, "activation": "leaky_relu"}
    learner = get_family("cnn").learner(cfg, digits.info)
    assert learner.predict_proba(digits.x_val[:4]).shape == (4, 10)


def test_registry_lists_the_contract_families():
    assert {"linear", "mlp", "cnn"} <= set(FAMILIES)
