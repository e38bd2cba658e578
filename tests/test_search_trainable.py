"""The Ray trainable: checkpoints that resume exactly, PBT's hyperparameters win over a checkpoint's, retries."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tuner import cli, spaces
from tuner.data import prepare
from tuner.settings import cache_dir
from tuner.engine import TorchLearner, pick_device
from tuner.families import get_family, register_family
from tuner.families.linear import Linear


@pytest.fixture(scope="module")
def digits():
    exp = spaces.parse_experiment({"family": "mlp", "dataset": {"name": "digits", "limit": 200}})
    return prepare(exp.dataset, cache_dir=cache_dir())


def _weights(learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.parameters()]


def test_checkpoint_loads_weights_only_and_resumes_bit_for_bit(digits, tmp_path):
    # dropout + shuffling + a step schedule: every piece of state (RNGs, optimiser, schedule) must be saved
    cfg = {"hidden": [32], "dropout": 0.3, "optimizer": "sgd", "lr": 0.1, "lr_schedule": "step", "lr_step": 1,
           "lr_gamma": 0.5, "batch_size": 32}
    family = get_family("mlp")
    straight = family.learner(cfg, digits.info)
    history = list(straight.fit(digits, 3))

    first = family.learner(cfg, digits.info)
    for _ in first.fit(digits, 1):
        torch.save({"learner": first.state_dict()}, tmp_path / "state.pt")
    torch.manual_seed(123)  # another trial ran in this process meanwhile
    saved = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    resumed = family.learner(cfg, digits.info)
    resumed.load_state_dict(saved["learner"])
    rest = list(resumed.fit(digits, 3))

    assert [m["epoch"] for m in rest] == [2, 3]
    assert [m["lr"] for m in rest] == [m["lr"] for m in history[1:]]
    assert rest[-1]["train_loss"] == pytest.approx(history[-1]["train_loss"], rel=1e-6)
    for a, b in zip(_weights(straight), _weights(resumed)):
        torch.testing.assert_close(a, b)


def test_adapt_state_gives_a_pbt_exploit_the_new_lr_momentum_and_keeps_the_schedule(digits):
    family = get_family("mlp")
    donor = family.learner({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "lr_schedule": "step", "lr_step": 1,
                            "lr_gamma": 0.5, "hidden": [16]}, digits.info)
    list(donor.fit(digits, 1))  # the step schedule has halved the lr: 0.05
    state = donor.state_dict()
    receiver = family.learner({"optimizer": "sgd", "lr": 0.02, "momentum": 0.5, "lr_schedule": "step",
                               "lr_step": 1, "lr_gamma": 0.5, "hidden": [16]}, digits.info)
    receiver.load_state_dict(receiver.adapt_state(state, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}))
    group = receiver.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.01)  # the new lr, halved once like the donor's
    assert group["momentum"] == 0.5
    m = next(iter(receiver.fit(digits, 3)))
    assert m["epoch"] == 2 and m["lr"] == pytest.approx(0.01)
    assert receiver.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)  # the schedule goes on from there


def test_adapt_state_leaves_a_plain_resume_alone(digits):
    learner = get_family("mlp").learner({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "hidden": [16]}, digits.info)
    state = {"optimizer": {"param_groups": [{"lr": 0.05, "momentum": 0.9}]}, "schedule": None}
    assert learner.adapt_state(state, learner.hparams())["optimizer"]["param_groups"][0]["lr"] == 0.05


def test_a_trial_given_no_gpu_share_stays_on_the_cpu():
    assert pick_device(0.0).type == "cpu"
    assert pick_device(0.5).type == ("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- a trial that crashes once
class CrashOnceLearner(TorchLearner):
    """Dies in the middle of its third epoch the first time (as a lost worker or a CUDA error would)."""

    marker: str = ""

    def fit(self, data, max_epochs):
        with open(Path(self.marker).with_suffix(".starts"), "a") as f:
            f.write(f"{self.epoch}\n")  # the epoch this attempt starts from
        yield from super().fit(data, max_epochs)

    def train_epoch(self, x, y, batch_size, via=None):
        if self.epoch == 2 and not Path(self.marker).exists():
            Path(self.marker).write_text("crashed")
            raise RuntimeError("simulated worker crash in epoch 3")
        return super().train_epoch(x, y, batch_size, via)


@register_family
class CrashOnce(Linear):
    name = "test_crash_once"
    learner_class = CrashOnceLearner


@pytest.mark.slow
def test_a_trial_that_raises_once_is_retried_from_its_checkpoint(tmp_path, results):
    import ray.cloudpickle

    # the family lives in this test module, which Ray's workers cannot import: send it by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    CrashOnceLearner.marker = str(tmp_path / "crashed")
    space = tmp_path / "crash.yaml"
    space.write_text(yaml.safe_dump({
        "name": "crash", "family": "test_crash_once", "dataset": {"name": "digits", "limit": 200},
        "search": {"algorithm": "random", "num_samples": 1, "max_concurrent": 1},
        "scheduler": {"name": "fifo", "max_epochs": 4}, "max_failures": 1,
        "fixed": {"optimizer": "sgd", "lr": 0.05}}))
    rc = cli.main(["search", "--space", str(space), "--results", str(results), "--no-dashboard", "--no-retrain"])
    assert rc == 0
    assert (tmp_path / "crashed").exists()
    starts = [int(s) for s in (tmp_path / "crashed.starts").read_text().split()]
    assert starts == [0, 2]  # the retry began from the epoch-2 checkpoint, not from scratch
    trials = pd.read_csv(results / "crash" / "trials.csv")
    assert list(trials["status"]) == ["TERMINATED"] and trials["epochs"].iloc[0] == 4
    epochs = pd.read_csv(results / "crash" / "epochs.csv")
    assert np.array_equal(np.sort(epochs["epoch"].unique()), [1, 2, 3, 4])
    assert (epochs["epoch"] == 1).sum() == 1


# --------------------------------------------------------------------------- a trial that runs out of GPU memory
class BigBatchOOMLearner(TorchLearner):
    """Raises what PyTorch raises when a batch does not fit on the GPU (this machine has none)."""

    def train_epoch(self, x, y, batch_size, via=None):
        if batch_size >= 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().train_epoch(x, y, batch_size, via)


@register_family
class BigBatchOOM(Linear):
    name = "test_big_batch_oom"
    learner_class = BigBatchOOMLearner


@pytest.mark.slow
def test_cuda_out_of_memory_fails_that_trial_only_with_a_reason_and_the_rest_finish(tmp_path, results, capsys):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    space = tmp_path / "oom.yaml"
    space.write_text(yaml.safe_dump({
        "name": "oom", "family": "test_big_batch_oom", "dataset": {"name": "digits", "limit": 200},
        "search": {"algorithm": "grid", "max_concurrent": 2}, "scheduler": {"name": "fifo", "max_epochs": 2},
        "fixed": {"optimizer": "adam", "lr": 0.01}, "space": {"batch_size": {"grid": [16, 64]}}}))
    rc = cli.main(["search", "--space", str(space), "--results", str(results), "--no-dashboard"])
    assert rc == 0
    trials = pd.read_csv(results / "oom" / "trials.csv").set_index("batch_size")
    assert trials.loc[64, "status"] == "ERROR"
    assert trials.loc[64, "error"].startswith("CUDA out of memory (batch_size=64")
    assert "lower batch_size" in trials.loc[64, "error"]
    assert trials.loc[16, "status"] == "TERMINATED" and trials.loc[16, "epochs"] == 2
    assert "1 of 2 trials failed" in capsys.readouterr().out
    assert (results / "oom" / "best" / "metrics.json").is_file()


def test_a_trial_and_a_fused_member_report_their_val_loss_at_their_best_epoch():
    """The console's tie-break after a --resume (metrics.BEST_LOSS): the loss of the first best epoch, kept
    while later epochs score lower or only tie, in a plain trial's reports as in a fused member's."""
    from tuner.metrics import BEST_LOSS
    from tuner.search.fused_trial import MemberState, _scored
    from tuner.search.trainable import TrialSpec, _with_best

    spec = TrialSpec(family=get_family("mlp"), max_epochs=3, augment=None, cpus=1, gpus=0)
    epochs = [(0.90, 0.5), (0.95, 0.4), (0.95, 0.1), (0.80, 0.05)]  # (val_accuracy, val_loss) per epoch
    best, at_best, member = None, {}, MemberState()
    for i, (acc, loss) in enumerate(epochs, 1):
        metrics = {"epoch": i, "val_accuracy": acc, "val_loss": loss}
        reported = dict(metrics)  # _with_best adds the running best to the epoch's report
        best, at_best = _with_best(reported, spec, best, at_best)
        scored = _scored(spec, member, dict(metrics))
    assert reported[BEST_LOSS] == 0.4 and reported["best_epoch"] == 2 and reported["best_val_accuracy"] == 0.95
    assert at_best["val_loss"] == 0.4  # kept in the trial's checkpoint, so it survives a --resume
    assert scored[BEST_LOSS] == 0.4 and scored["best_epoch"] == 2 and scored["best_val_accuracy"] == 0.95
    assert MemberState(**member.saved()).best_loss == 0.4  # kept in the group's checkpoint
