"""ONNX export: a learner trained on digits (no Ray), saved through the bundle path, exported, and run through
onnxruntime; its probabilities must be tuner.load's."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from tuner import load
from tuner.cli import main
from tuner.data import prepare
from tuner.bundle import save_bundle
from tuner.families import RunContext, get_family
from tuner.onnx_export import export_onnx, onnx_proba
from tuner.spaces import DatasetConfig

pytest.importorskip("onnxruntime")


def trained_bundle(folder: Path, family: str, config: dict, data, epochs: int = 1) -> Path:
    """A few epochs of the family's learner on the data, saved as the retrain saves it."""
    learner = get_family(family).learner(config, data.info, RunContext(device="cpu"))
    for _ in learner.fit(data, epochs):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    save_bundle(folder / "model.pt", SimpleNamespace(family=family, name=f"digits_{family}"), config, learner, data)
    return folder


def assert_onnx_matches_load(folder: Path, data) -> None:
    model = export_onnx(folder)
    assert model == folder / "model.onnx" and model.is_file()
    predictor = load(folder, device="cpu")
    images = predictor.images(data.x_test)  # uint8 NHWC, what preprocessing.json promises the model takes
    expected = predictor.predict_proba(data.x_test)
    got = onnx_proba(model, images)
    assert got.shape == expected.shape == (len(data.y_test), len(data.class_names))
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-4
    assert len(np.unique(expected.argmax(1))) >= 3  # a model whose answer depends on the image
    pre = json.loads((folder / "preprocessing.json").read_text())
    info = data.info
    assert pre["input"] == {"name": "images", "dtype": "uint8", "layout": "NHWC",
                            "shape": ["batch", info.height, info.width, info.channels], "range": [0, 255]}
    assert pre["class_names"] == list(data.class_names) and pre["mean"] == list(info.mean)
    assert pre["std"] == list(info.std) and (pre["height"], pre["width"]) == (info.height, info.width)
    # the training images' own range (digits: 0-16 grey levels) and how such images become the input
    assert pre["value_range"] == [0, 16] and "round((x - lo) * 255 / (hi - lo))" in pre["to_input"]
    if (info.height, info.width) == (8, 8):  # the images as scikit-learn gives them, not resized
        from sklearn.datasets import load_digits

        raw = load_digits().images[data.indices["test"]]  # floats 0-16
        assert np.abs(onnx_proba(model, predictor.images(raw)) - expected).max() < 1e-4


@pytest.fixture(scope="module")
def digits():
    return prepare(DatasetConfig(name="digits"), progress=False)


@pytest.mark.slow  # an ONNX export and a trained model: tens of seconds on 2 cores
def test_cnn_onnx_predicts_what_tuner_load_predicts(digits, tmp_path):
    cfg = {"blocks": 2, "channels": 8, "batchnorm": True, "dropout": 0.1, "fc": [16], "lr": 3e-3}
    assert_onnx_matches_load(trained_bundle(tmp_path / "cnn", "cnn", cfg, digits, epochs=2), digits)


def test_mlp_and_linear_export_too(digits, tmp_path):
    bundle = trained_bundle(tmp_path / "mlp", "mlp", {"hidden": [32], "batchnorm": True}, digits)
    assert_onnx_matches_load(bundle, digits)
    assert_onnx_matches_load(trained_bundle(tmp_path / "lin", "linear", {"lr": 1e-2}, digits), digits)


@pytest.mark.slow  # an ONNX export and a trained model: tens of seconds on 2 cores
def test_transfer_resnet18_on_grey_digits_exports_with_its_rgb_repeat(tmp_path):
    # digits are one channel; the backbone wants three: the grey -> RGB repeat must be inside the graph
    data = prepare(DatasetConfig(name="digits", image_size=32, limit=200), progress=False)
    cfg = {"arch": "resnet18", "weights": "none", "trainable_layers": "all", "lr": 1e-3, "batch_size": 32}
    assert_onnx_matches_load(trained_bundle(tmp_path / "tr", "transfer", cfg, data), data)


def _experiment(d: Path, family: str) -> Path:
    d.mkdir(parents=True)
    (d / "space.yaml").write_text(yaml.safe_dump({"name": d.name, "family": family}))
    (d / "best.yaml").write_text(yaml.safe_dump({"experiment": d.name, "family": family, "trial_id": "t0",
                                                 "config": {}, "metrics": {"val_accuracy": 0.9}}))
    return d


@pytest.mark.slow  # an ONNX export and a trained model: tens of seconds on 2 cores
def test_best_format_onnx_exports_beside_the_bundle(digits, tmp_path, capsys):
    d = _experiment(tmp_path / "results" / "digits_cnn", "cnn")
    trained_bundle(d / "best", "cnn", {"blocks": 1, "channels": 4}, digits)
    assert main(["best", "--experiment", str(d), "--format", "onnx"]) == 0  # --format onnx implies --export
    for f in ("model.pt", "model.onnx", "preprocessing.json"):
        assert (d / "export" / f).is_file()
    assert "model.onnx" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["knn", "features"])
def test_onnx_of_knn_or_features_exits_2(tmp_path, capsys, family):
    d = _experiment(tmp_path / "results" / family, family)
    assert main(["best", "--experiment", str(d), "--export", "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "ONNX export supports linear, mlp, cnn and transfer" in err
    assert "tuner.load" in err and len(err.splitlines()) == 1
    assert not (d / "export").exists()


def test_missing_onnx_package_exits_2_with_the_pip_command(tmp_path, capsys, monkeypatch):
    d = _experiment(tmp_path / "results" / "c", "cnn")
    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` meets where it is not installed
    assert main(["best", "--experiment", str(d), "--format", "onnx"]) == 2
    assert "pip install 'tuner-hpo[onnx]'" in capsys.readouterr().err
