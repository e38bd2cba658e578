"""On a GPU: AMP + channels-last training, sharing one GPU, a real out-of-memory, the GPU KNN path, the same
answers as the CPU, and no warm-up storm. Skipped where CUDA is absent (`pytest -m gpu` runs them on a GPU)."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tuner import neighbours
from tuner import cli, embeddings, spaces
from tuner.data import prepare
from tuner.settings import cache_dir
from tuner.engine import Preprocess, amp_dtype, gpu_share, pick_device, resident_budget
from tuner.bundle import save_bundle
from tuner.predict import load
from tuner.families import RunContext, get_family

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
CNN = {"channels": 16, "blocks": 2, "pool": "gap", "lr": 3e-3, "batch_size": 64}


@pytest.fixture(scope="module")
def digits():
    exp = spaces.parse_experiment({"family": "cnn", "dataset": {"name": "digits"}})
    return prepare(exp.dataset, cache_dir=cache_dir())


def test_amp_and_channels_last_training_reaches_the_cpu_accuracy_band(digits):
    fam = get_family("cnn")
    gpu = fam.learner(CNN, digits.info, RunContext(device="cuda"))
    assert gpu.amp_dtype in (torch.bfloat16, torch.float16)
    conv = next(m for m in gpu.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    on_gpu = list(gpu.fit(digits, 6))[-1]["val_accuracy"]
    on_cpu = list(fam.learner(CNN, digits.info, RunContext(device="cpu")).fit(digits, 6))[-1]["val_accuracy"]
    assert on_gpu > 0.9 and abs(on_gpu - on_cpu) <= 0.03
    assert isinstance(gpu.resident[1][0], torch.Tensor) and gpu.resident[1][0].is_cuda  # digits fit: resident


def test_two_learners_share_one_gpu_each_within_its_share(digits):
    device = pick_device(0.5)
    assert device.type == "cuda" and gpu_share(0.5) == 0.5
    assert resident_budget(device, 0.5) <= torch.cuda.mem_get_info(device)[1] * 0.5 / 3
    fam = get_family("cnn")
    a = fam.learner(CNN, digits.info, RunContext(device=str(device), gpu_share=0.5))
    b = fam.learner({**CNN, "seed": 1}, digits.info, RunContext(device=str(device), gpu_share=0.5))
    last = list(zip(a.fit(digits, 4), b.fit(digits, 4)))[-1]  # interleaved epochs, one GPU
    assert all(m["val_accuracy"] > 0.8 for m in last)


@pytest.mark.slow
def test_a_real_cuda_out_of_memory_fails_that_trial_only(tmp_path, results):
    space = tmp_path / "oom.yaml"
    # ResNet152 at 448 px with a batch of every training image needs hundreds of GB of activations
    space.write_text(yaml.safe_dump({
        "name": "gpu_oom", "family": "transfer", "dataset": {"name": "digits", "image_size": 448},
        "search": {"algorithm": "grid", "max_concurrent": 1}, "scheduler": {"name": "fifo", "max_epochs": 1},
        "resources": {"cpu": 1, "gpu": 0.5},
        "fixed": {"arch": "resnet152", "weights": "none", "trainable_layers": "all", "optimizer": "sgd", "lr": 0.01},
        "space": {"batch_size": {"grid": [4096, 8]}}}))
    rc = cli.main(["search", "--space", str(space), "--results", str(results), "--no-dashboard", "--no-retrain"])
    assert rc == 0
    trials = pd.read_csv(results / "gpu_oom" / "trials.csv").set_index("batch_size")
    assert trials.loc[4096, "status"] == "ERROR"
    assert trials.loc[4096, "error"].startswith("CUDA out of memory (batch_size=4096")
    assert trials.loc[8, "status"] == "TERMINATED"  # after the failure, on the same GPU


@pytest.mark.parametrize("kind", ["euclidean-none", "cosine", "manhattan-none"])
def test_gpu_knn_finds_the_neighbours_scikit_learn_finds(kind):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 64)).astype(np.float32)  # continuous: no distance ties
    q = rng.standard_normal((500, 64)).astype(np.float32)
    ours = neighbours.neighbours(x, q, kind, 10, device="cuda")
    ref = neighbours.neighbours(x, q, kind, 10, backend="sklearn")
    np.testing.assert_array_equal(ours.idx, ref.idx)
    for metric, d in ref.dist.items():
        np.testing.assert_allclose(ours.dist[metric], d, rtol=1e-4, atol=1e-5)


def test_embeddings_are_the_same_on_the_gpu_and_the_cpu(digits):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.fc = torch.nn.Identity()
    net.eval()
    images = digits.x_test[:200]
    pre = Preprocess(digits.info.mean, digits.info.std, 1, 3)
    on_cpu = embeddings.compute(net, pre, images, "cpu")
    on_gpu = embeddings.compute(net.cuda(), pre.cuda(), images, "cuda")
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-4)  # float32 on both: rounding only


def test_a_bundle_reloaded_on_either_device_predicts_within_the_stated_tolerance(digits, tmp_path):
    exp = spaces.load(SPACES / "digits_cnn.yaml")
    learner = get_family("cnn").learner(CNN, digits.info, RunContext(device="cuda"))
    list(learner.fit(digits, 2))
    tested = learner.predict_proba(digits.x_test)  # what retrain's metrics.json is computed from
    save_bundle(tmp_path / "model.pt", exp, CNN, learner, digits)
    for device in ("cpu", "cuda"):
        p = load(tmp_path, device=device).learner.predict_proba(digits.x_test)
        assert np.abs(p - tested).max() <= 1e-3, device  # docs/running.md: "within 1e-3 on each probability"


def test_a_trials_first_epoch_is_within_1_5x_a_steady_epoch_plus_2_s():
    exp = spaces.parse_experiment({"family": "transfer", "dataset": {"name": "digits", "image_size": 64}})
    data = prepare(exp.dataset, cache_dir=cache_dir())
    torch.zeros(1, device="cuda")  # the CUDA start is not the trial's
    learner = get_family("transfer").learner({"arch": "resnet18", "weights": "none", "trainable_layers": "all",
                                              "batch_size": 96, "lr": 0.01, "optimizer": "sgd"}, data.info,
                                             RunContext(device="cuda"))
    times = [m["epoch_time_s"] for m in learner.fit(data, 4)]
    assert times[0] <= 1.5 * statistics.median(times[1:]) + 2.0, times
    assert amp_dtype("cuda") is not None
