"""The transfer family and tuner.backbones: cutting torchvision models, loading weights, freezing, the frozen
feature cache, and the shipped transfer spaces run end to end (small arch, random weights, a small folder)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tuner.families import embedding
from tuner import backbones
from tuner.cli import main
from tuner.data import prepare
from tuner.errors import UserError
from tuner.families import RunContext, get_family
from tuner.families.base import DataInfo
from tuner.spaces import AugmentConfig, DatasetConfig, SplitConfig

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"


def write_folder(root: Path, n: int = 12, seed: int = 0, size: int = 40) -> Path:
    """A real image folder: one sub-folder of PNGs per class; each class tinted by one colour channel."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(["red", "green", "blue"]):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            a[..., c] += 150
            Image.fromarray(a).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("folder_a"))


@pytest.fixture(scope="module")
def data(folder):
    cfg = DatasetConfig(name="imagefolder", root=str(folder), image_size=32, normalize="imagenet",
                        split=SplitConfig(val=0.25, test=0.25, seed=0))
    return prepare(cfg, progress=False)


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache of our own, so results never depend on what this machine has downloaded."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def smoke_args(space: Path, root: Path, results: Path, *extra: str) -> list[str]:
    return ["search", "--space", str(space), "--smoke", "--results", str(results), "--no-dashboard",
            "--set", "dataset.name=imagefolder", "--set", f"dataset.root={root}", "--set", "dataset.download=false",
            "--set", "dataset.image_size=32", "--set", "dataset.split={val: 0.25, test: 0.25, seed: 0}",
            "--set", "fixed.arch=resnet18", *no_warm_start(space), *extra]


def no_warm_start(space: Path) -> list[str]:
    # the spaces' warm starts name their own arch (resnet50, vgg19): pinning fixed.arch=resnet18 conflicts
    # with them, which validation refuses (tests/test_hostile.py); these smoke runs need neither
    text = Path(space).read_text()
    return ["--set", "search.warm_start=[]"] if "warm_start" in text or "suite:" in text else []


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "mobilenet_v2", "efficientnet_b0", "regnet_x_400mf",
                                  "shufflenet_v2_x0_5", "squeezenet1_1", "mnasnet0_5"])
def test_body_units_cover_every_parameter_and_yield_a_feature_map(arch):
    body = backbones.make_body(arch)
    in_units = {id(p) for unit in body.units for m in unit for p in m.parameters()}
    assert in_units == {id(p) for p in body.module.parameters()}
    assert len(body.module(torch.zeros(1, 3, 64, 64)).shape) == 4


def test_unknown_or_unsupported_arch_is_a_user_error():
    with pytest.raises(UserError, match="not a supported torchvision"):
        backbones.check_arch("resnet51")
    with pytest.raises(UserError, match="not a feature map"):
        backbones.check_arch("vit_b_16")


def test_imagenet_weights_load_from_the_torch_hub_cache(hub):
    import torchvision.models as tvm

    arch = "squeezenet1_1"
    f, _ = backbones.imagenet_file(arch)
    assert f.parent == hub / "checkpoints"
    torch.manual_seed(1)
    reference = tvm.get_model(arch)  # a state dict in torchvision's own format, 1000-class classifier included
    f.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), f)
    torch.manual_seed(2)
    body = backbones.make_body(arch)
    backbones.load_weights(body, "imagenet")
    for k, v in body.module.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k]), k


def test_frozen_features_are_keyed_by_the_imagenet_file_not_the_word_imagenet(hub, data, tmp_path):
    # a replaced ImageNet file (another download, a fine-tuned copy put in its place) is other features
    import torchvision.models as tvm

    arch = "squeezenet1_1"
    f, _ = backbones.imagenet_file(arch)
    f.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(tvm.get_model(arch).state_dict(), f)
    learner = get_family("transfer").learner({"arch": arch, "weights": "imagenet"}, data.info,
                                             RunContext(cache_dir=str(tmp_path / "c")))
    before = learner.feature_key()
    assert before == learner.feature_key() and str(f) in before
    torch.manual_seed(2)
    torch.save(tvm.get_model(arch).state_dict(), f.with_suffix(".new"))
    f.with_suffix(".new").replace(f)
    assert learner.feature_key() != before


def test_a_state_dict_for_another_arch_is_refused_by_name(tmp_path):
    import torchvision.models as tvm

    f = tmp_path / "other.pth"
    torch.save(tvm.get_model("squeezenet1_1").state_dict(), f)
    body = backbones.make_body("resnet18")
    with pytest.raises(UserError, match=r"other.pth does not fit resnet18"):
        backbones.load_weights(body, str(f))


def test_imagenet_offline_exits_2_naming_the_file_and_folder(hub, folder, tmp_path, capsys):
    code = main(smoke_args(SPACES / "stl10_mobilenet_frozen.yaml", folder, tmp_path / "r",
                           "--set", "fixed.weights=imagenet"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    f, _ = backbones.imagenet_file("resnet18")
    assert len(err) == 1 and err[0].startswith("error:")
    assert f.name in err[0] and str(hub / "checkpoints") in err[0]
    assert not (tmp_path / "r").exists()  # stopped before anything ran


# --------------------------------------------------------------------------- freezing and the frozen cache
def test_trainable_layers_trains_only_the_last_stages_and_frozen_batchnorm_stays_put(data):
    fam = get_family("transfer")
    learner = fam.learner({"arch": "resnet18", "weights": "none", "trainable_layers": 1, "lr": 1e-2,
                           "backbone_lr_mult": 0.1, "batch_size": 8}, data.info)
    model = learner.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    list(learner.fit(data, 1))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("body.layer4.") for k in changed)
    assert not any(k.startswith(("body.layer1.", "body.layer3.", "body.bn1.", "body.conv1.")) for k in changed)
    assert any(k.startswith("head.") for k in changed)
    assert [g["lr"] for g in learner.optimizer.param_groups] == pytest.approx([1e-2, 1e-3])


def test_frozen_head_trains_on_features_computed_once_and_shared(data, tmp_path):
    fam = get_family("transfer")
    calls = []
    learners = []
    for cfg in ({"hidden": [16], "lr": 1e-2}, {"hidden": [], "dropout": 0.2, "lr": 3e-3}):
        lr = fam.learner({"arch": "resnet18", "weights": "none", "trainable_layers": 0, "batch_size": 8, **cfg},
                         data.info, RunContext(cache_dir=str(tmp_path)))
        lr.model.body.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
        history = list(lr.fit(data, 2))
        assert [h["epoch"] for h in history] == [1, 2]
        learners.append(lr)
    # the first learner embedded train + val once; the second read the cache and never ran the body
    assert sum(calls) == len(data.y_train) + len(data.y_val)
    assert len(list((tmp_path / "embeddings").iterdir())) == 1
    # the head on cached features and the whole model on images agree
    lr = learners[0]
    _, _, on_features = lr.evaluate(lr.feature_set.x_val, lr.feature_set.y_val, via=lr.on_features)
    assert np.allclose(on_features, lr.predict_proba(data.x_val), atol=1e-4)
    _, _, on_images = lr.evaluate(data.x_val, data.y_val)  # outside its training loop it takes images, as any learner
    assert np.allclose(on_images, on_features, atol=1e-4)


def test_frozen_checkpoints_hold_the_head_only_and_resume_exactly(data, tmp_path):
    fam = get_family("transfer")
    cfg = {"arch": "resnet18", "weights": "none", "trainable_layers": 0, "hidden": [8], "batch_size": 8}
    a = fam.learner(cfg, data.info, RunContext(cache_dir=str(tmp_path)))
    list(a.fit(data, 1))
    state = a.state_dict()
    assert state["model"] and not any(k.startswith("body.") for k in state["model"])
    b = fam.learner(cfg, data.info, RunContext(cache_dir=str(tmp_path)))
    b.load_state_dict(state)
    assert np.allclose(a.predict_proba(data.x_test), b.predict_proba(data.x_test), atol=1e-6)
    assert [h["epoch"] for h in b.fit(data, 2)] == [2]


def test_cached_views_add_fixed_augmented_copies_of_the_training_set(data, tmp_path):
    fam = get_family("transfer")
    aug = AugmentConfig(hflip=True, rotation=10)
    lr = fam.learner({"arch": "resnet18", "weights": "none", "cached_views": 2, "batch_size": 8}, data.info,
                     RunContext(augment=aug, cache_dir=str(tmp_path)))
    list(lr.fit(data, 1))
    n = len(data.y_train)
    assert len(lr.feature_set.x_train) == 3 * n
    assert not np.allclose(lr.feature_set.x_train[:n], lr.feature_set.x_train[n:2 * n])


def test_drop_stages_cuts_vgg_like_the_cifar_seed():
    fam = get_family("transfer")
    info = DataInfo(num_classes=10, channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = fam.build(fam.resolve({"arch": "vgg11", "weights": "none", "drop_stages": 1, "pool": "flatten"}), info)
    assert model.head[-1].in_features == 512 * 2 * 2  # block 4's 2x2x512 map, flattened


@pytest.mark.parametrize("key, value, message", [
    ("fixed.arch", "resnet51", "not a supported torchvision"),
    ("fixed.trainable_layers", "some", "trainable_layers"),
    ("fixed.head", "{pool: gap, width: 3}", "head.width"),
    ("fixed.head", "{pool: avg}", "head.pool"),
    ("fixed.weights", "no/such/file.pt", "does not exist"),
])
def test_bad_transfer_settings_fail_validation_with_exit_2(key, value, message, capsys):
    code = main(["validate", "--space", str(SPACES / "stl10_mobilenet_finetune.yaml"), "--set", f"{key}={value}"])
    assert code == 2 and message in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end, through the CLI
TRANSFER_SPACES = sorted(p.name for p in SPACES.glob("*.yaml")
                         if (yaml.safe_load(p.read_text()) or {}).get("family") == "transfer")


def test_every_shipped_transfer_space_is_covered_here():
    assert set(TRANSFER_SPACES) == {"cars_transfer.yaml", "cars_scratch.yaml", "cifar10_vgg19.yaml",
                                    "flowers104_scratch.yaml", "flowers104_pretrained.yaml",
                                    "stl10_mobilenet_frozen.yaml", "stl10_mobilenet_finetune.yaml"}


@pytest.mark.slow
def test_every_transfer_space_runs_smoke_on_an_image_folder(folder, tmp_path):
    # cars_scratch and stl10_mobilenet_frozen run (with retrain and export) in the export-chain test below;
    # the others run here as one suite: one command, one Ray start-up
    members = [str(SPACES / s) for s in TRANSFER_SPACES
               if s not in ("cars_scratch.yaml", "stl10_mobilenet_frozen.yaml")]
    suite = tmp_path / "transfer_smoke.yaml"
    suite.write_text(yaml.safe_dump({"name": "transfer_smoke", "suite": members}))
    code = main(smoke_args(suite, folder, tmp_path / "r", "--set", "fixed.weights=none", "--no-retrain"))
    assert code == 0
    for m in members:
        name = yaml.safe_load(Path(m).read_text())["name"]
        trials = (tmp_path / "r" / name / "trials.csv").read_text()
        assert trials.count("TERMINATED") == 2 and "ERROR" not in trials, name


@pytest.mark.slow
def test_export_chain_fine_tune_export_then_transfer_frozen_to_another_folder(folder, tmp_path):
    import tuner

    # 1. fine-tune a small arch from scratch on folder A (the cars_scratch space) and export it
    assert main(smoke_args(SPACES / "cars_scratch.yaml", folder, tmp_path / "a")) == 0
    export = tmp_path / "export"
    assert main(["best", "--results", str(tmp_path / "a"), "--experiment", "cars_scratch",
                 "--export", str(export)]) == 0
    # 2. its body, frozen, under a new head on folder B (the stl10_mobilenet_frozen space)
    other = write_folder(tmp_path / "folder_b", n=10, seed=7)
    assert main(smoke_args(SPACES / "stl10_mobilenet_frozen.yaml", other, tmp_path / "b",
                           "--set", f"fixed.weights={export}")) == 0
    best = tmp_path / "b" / "stl10_mobilenet_frozen" / "best" / "model.pt"
    chained = torch.load(best, weights_only=True)
    source = torch.load(export / "model.pt", weights_only=True)
    for k, v in source["weights"]["model"].items():
        if k.startswith("body.") and v.dtype.is_floating_point:
            assert torch.equal(v, chained["weights"]["model"][k]), k  # frozen: the exported body, unchanged
    # the chained bundle loads on its own, without the source bundle
    (export / "model.pt").unlink()
    pred = tuner.load(best.parent).predict(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    assert len(pred) == 2


def test_extractor_takes_a_bundle_minus_its_head(tmp_path, data):
    from tuner.bundle import save_bundle
    from types import SimpleNamespace

    fam = get_family("transfer")
    cfg = {"arch": "resnet18", "weights": "none", "trainable_layers": "all", "hidden": [8]}
    learner = fam.learner(cfg, data.info)
    save_bundle(tmp_path / "model.pt", SimpleNamespace(family="transfer", name="t"), cfg, learner, data)
    module, channels, key = embedding.extractor(str(tmp_path), "ignored", data.info)
    x = torch.randn(2, 3, 32, 32)
    assert channels == 3 and key.startswith("bundle:")
    assert torch.allclose(module(x), learner.model.eval().features(x), atol=1e-5)
    tv, _, tv_key = backbones.extractor("resnet18", "none", data.info)
    assert tv(x).shape == (2, 512) and tv_key != key


# --------------------------------------------------------------------------- fetching missing ImageNet weights
@pytest.fixture()
def weights_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served; records every path asked for."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", served, asked
    server.shutdown()
    server.server_close()


def test_search_preflight_fetches_missing_imagenet_weights_once_and_validate_never(weights_server, tmp_path,
                                                                                   monkeypatch, capsys):
    import hashlib

    base, served, asked = weights_server
    torch.manual_seed(0)
    sd = torch.nn.Linear(4, 2).state_dict()
    torch.save(sd, served / "tiny.pth")
    # torchvision's naming: the first 8 hex digits of the file's SHA-256 after the name, checked on download
    name = f"tiny-{hashlib.sha256((served / 'tiny.pth').read_bytes()).hexdigest()[:8]}.pth"
    (served / "tiny.pth").rename(served / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # undo any set_dir of another test: TORCH_HOME decides
    monkeypatch.setattr(backbones, "imagenet_url", lambda arch: f"{base}/{name}")
    landed = tmp_path / "torch_home" / "hub" / "checkpoints" / name

    assert main(["validate", "--space", str(SPACES / "stl10_mobilenet_frozen.yaml")]) == 0
    assert asked == [] and not landed.exists()

    transfer = get_family("transfer")
    transfer.preflight({"arch": "mobilenet_v2", "weights": "imagenet"}, {}, "space.yaml")
    assert asked == [f"/{name}"] and landed.is_file()
    got = torch.load(landed, weights_only=True)
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    assert f"fetching imagenet weights for mobilenet_v2: {base}/{name}" in capsys.readouterr().err

    transfer.preflight({"arch": "mobilenet_v2", "weights": "imagenet"}, {}, "space.yaml")
    assert asked == [f"/{name}"]  # there now: not fetched again
    assert sorted(p.name for p in landed.parent.iterdir()) == [name]  # no .partial left behind


def test_a_fetched_file_whose_hash_does_not_match_its_name_is_refused_and_not_kept(weights_server, hub,
                                                                                   monkeypatch):
    base, served, asked = weights_server
    f, _ = backbones.imagenet_file("squeezenet1_1")  # torchvision's own name, with the real file's hash
    torch.save(torch.nn.Linear(4, 2).state_dict(), served / f.name)  # the same name, other bytes
    monkeypatch.setenv("TUNER_WEIGHTS_URL", base)  # a mirror: torchvision's file names under another host
    with pytest.raises(UserError, match="invalid hash value") as e:
        backbones.check_weights("squeezenet1_1", "imagenet", "space.yaml: weights", fetch=True)
    assert asked == [f"/{f.name}"] and f.name in str(e.value)
    assert not f.parent.exists() or list(f.parent.iterdir()) == []


def test_offline_fetch_is_one_user_error_naming_the_file_the_folder_and_the_url(hub, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TUNER_WEIGHTS_URL", f"http://127.0.0.1:{port}")
    f, url = backbones.imagenet_file("resnet18")
    with pytest.raises(UserError) as e:
        backbones.check_weights("resnet18", "imagenet", "space.yaml: weights", fetch=True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("space.yaml: weights: imagenet weights for resnet18")
    assert f.name in msg and str(hub / "checkpoints") in msg and url in msg
    assert not f.exists()
