"""timm backbones (`timm/<name>`) wherever a torchvision arch goes: transfer's arch, knn/features' backbone, the
frozen-feature cache, the bundle and ONNX. Offline and real: the pretrained file is one the test writes (a
timm model made with pretrained=False, its state dict saved where tuner looks), never a download."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from tuner import backbones, timm_backbones
from tuner.cli import main
from tuner.data import prepare
from tuner.errors import UserError
from tuner.families import RunContext, get_family
from tuner.spaces import DatasetConfig

ARCH = "timm/test_convnext"  # timm's own tiny test models: real architectures, seconds on a CPU


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches of our own (also for Ray's workers, through the environment), and
    a hub endpoint that refuses at once: nothing here depends on what this machine has downloaded."""
    old = torch.hub.get_dir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    yield tmp_path
    torch.hub.set_dir(old)


def write_weights(arch: str = ARCH, suffix: str = ".pth", seed: int = 1) -> dict:
    """timm's model of that name, classifier included, saved as the weights file tuner reads offline."""
    import timm  # in the test extra: these tests must run, not skip (imported here: 2 s a collecting worker)

    torch.manual_seed(seed)
    reference = timm.create_model(timm_backbones.model_name(arch), pretrained=False)
    f = next(p for p in timm_backbones.local_files(arch) if p.suffix == suffix)
    f.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(f))
    else:
        torch.save(reference.state_dict(), f)
    return reference.state_dict()


def assert_loaded(module: torch.nn.Module, reference: dict) -> None:
    own = module.state_dict()
    assert own, "an empty body"
    for k, v in own.items():
        assert torch.equal(v, reference[k]), k


@pytest.mark.parametrize("arch", ["timm/test_convnext", "timm/test_efficientnet", "timm/test_resnet"])
def test_timm_body_stages_cover_every_parameter_and_yield_a_feature_map(arch):
    body = backbones.make_body(arch)
    in_units = {id(p) for unit in body.units for m in unit for p in m.parameters()}
    assert in_units == {id(p) for p in body.module.parameters()}
    assert len(body.units) >= 3
    assert body.module(torch.zeros(1, 3, 64, 64)).dim() == 4


def test_names_timm_does_not_have_and_transformers_are_user_errors():
    with pytest.raises(UserError, match="not a timm model"):
        backbones.check_arch("timm/convnext_tinyy")
    with pytest.raises(UserError, match="outputs tokens, not a feature map"):
        backbones.check_arch("timm/test_vit")
    backbones.check_arch("timm/convnext_tiny")  # the real names are fine
    backbones.check_arch("timm/efficientnetv2_s")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_local_weights_file_loads_into_the_body(hub, suffix):
    reference = write_weights(suffix=suffix)
    torch.manual_seed(2)
    body = backbones.make_body(ARCH)
    backbones.load_weights(body, "imagenet")
    assert_loaded(body.module, reference)


def test_weights_in_the_hugging_face_cache_are_found_there(hub):
    # the layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/file}
    repo, filename = timm_backbones.hub_source(ARCH)
    assert repo.startswith("timm/test_convnext") and filename == "model.safetensors"
    import timm

    torch.manual_seed(3)
    reference = timm.create_model("test_convnext", pretrained=False).state_dict()
    folder = hub / "hf" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(reference, str(folder / "snapshots" / ("0" * 40) / filename))
    assert timm_backbones.pretrained_file(ARCH) == folder / "snapshots" / ("0" * 40) / filename
    body = backbones.make_body(ARCH)
    backbones.load_weights(body, "imagenet")
    assert_loaded(body.module, reference)


def test_offline_without_the_file_search_exits_2_naming_the_file_and_where_it_goes(hub, tmp_path, capsys):
    space = tmp_path / "t.yaml"
    space.write_text(yaml.safe_dump({"name": "t", "family": "transfer", "dataset": {"name": "digits"},
                                     "fixed": {"arch": ARCH, "weights": "imagenet"}}))
    assert main(["validate", "--space", str(space)]) == 0  # validate checks the name, not this machine's files
    capsys.readouterr()
    code = main(["search", "--space", str(space), "--results", str(tmp_path / "r"), "--no-dashboard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    local = timm_backbones.local_files(ARCH)[0]
    assert str(local) in err[0] and "huggingface.co/timm/test_convnext" in err[0]
    assert local.parent == hub / "torch" / "hub" / "checkpoints" / "timm"
    assert not (tmp_path / "r").exists()  # stopped before anything ran


def test_without_timm_installed_it_is_exit_2_with_the_install_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where it is not installed
    space = tmp_path / "t.yaml"
    space.write_text(yaml.safe_dump({"name": "t", "family": "transfer", "fixed": {"arch": ARCH}}))
    assert main(["validate", "--space", str(space)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'tuner-hpo[timm]'" in err[0], err


def test_transfer_trains_from_the_file_and_the_frozen_cache_is_keyed_by_it(hub, tmp_path):
    reference = write_weights()
    data = prepare(DatasetConfig(name="digits", image_size=32, limit=150), progress=False)
    fam = get_family("transfer")
    cfg = {"arch": ARCH, "weights": "imagenet", "trainable_layers": 0, "lr": 3e-3, "batch_size": 32}
    learner = fam.learner(cfg, data.info, RunContext(device="cpu", cache_dir=str(tmp_path / "cache")))
    losses = [m["train_loss"] for m in learner.fit(data, 3)]
    assert_loaded(learner.model.body, reference)  # frozen: the file's weights, unchanged by training
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    key = learner.feature_key()
    assert str(timm_backbones.local_files(ARCH)[1]) in key and ARCH in key
    assert any((tmp_path / "cache").rglob("*")), "the frozen features were not cached"


def test_transfer_bundle_and_onnx_of_a_timm_model(hub, tmp_path):
    pytest.importorskip("onnxruntime")
    from types import SimpleNamespace

    import tuner
    from tuner.bundle import save_bundle
    from tuner.onnx_export import export_onnx, onnx_proba

    write_weights()
    data = prepare(DatasetConfig(name="digits", image_size=32, limit=150), progress=False)
    cfg = {"arch": ARCH, "weights": "imagenet", "trainable_layers": "all", "lr": 1e-3, "batch_size": 32}
    learner = get_family("transfer").learner(cfg, data.info, RunContext(device="cpu"))
    for _ in learner.fit(data, 1):
        pass
    folder = tmp_path / "export"
    folder.mkdir()
    save_bundle(folder / "model.pt", SimpleNamespace(family="transfer", name="timm_digits"), cfg, learner, data)
    for f in timm_backbones.local_files(ARCH):  # the bundle holds every weight: no weights file needed to load it
        f.unlink(missing_ok=True)
    predictor = tuner.load(folder, device="cpu")
    expected = predictor.predict_proba(data.x_test)
    got = onnx_proba(export_onnx(folder), predictor.images(data.x_test))
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
    assert json.loads((folder / "preprocessing.json").read_text())["class_names"] == list(data.class_names)


@pytest.mark.slow
def test_search_transfer_and_knn_with_timm_backbones_end_to_end(hub, tmp_path):
    """One suite through the CLI and Ray: transfer (frozen and fine-tuned) and knn on a timm backbone, both
    from the weights file the test wrote; then the export loads."""
    import tuner

    write_weights()
    transfer = {"name": "timm_transfer", "family": "transfer",
                "dataset": {"name": "digits", "image_size": 32, "normalize": "imagenet"},
                "fixed": {"arch": ARCH, "weights": "imagenet", "batch_size": 32},
                "space": {"trainable_layers": {"choice": [0, "all"]}, "lr": {"loguniform": [1e-3, 1e-2]}}}
    knn = {"name": "timm_knn", "family": "knn",
           "dataset": {"name": "digits", "image_size": 32, "normalize": "imagenet"},
           "fixed": {"backbone": ARCH, "backbone_weights": "imagenet"}, "space": {"k": {"choice": [1, 3]}}}
    for spec in (transfer, knn):
        (tmp_path / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"name": "timm", "suite": ["timm_transfer.yaml",
                                                                                  "timm_knn.yaml"]}))
    results = tmp_path / "r"
    # a process of its own: its Ray workers get this test's caches through the environment (a Ray already
    # running in this process would have started its workers without them)
    run = subprocess.run([sys.executable, "-m", "tuner", "search", "--space", str(tmp_path / "suite.yaml"), "--smoke",
                          "--results", str(results), "--no-dashboard"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("timm_transfer", "timm_knn"):
        trials = (results / name / "trials.csv").read_text()
        assert trials.count("TERMINATED") == 2 and "ERROR" not in trials, trials
        assert main(["best", "--results", str(results), "--experiment", name, "--export"]) == 0
        pred = tuner.load(results / name / "export").predict(np.zeros((2, 8, 8), dtype=np.uint8), value_range=(0, 16))
        assert len(pred) == 2
