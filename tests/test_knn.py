"""The knn family (the neighbour tables themselves: tests/test_neighbours.py) on pixels and on an exported
bundle's embeddings predicts what scikit-learn predicts, and runs end to end through the command line."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from test_neighbours import sklearn_predict

import tuner
from tuner.families import embedding
from tuner import spaces
from tuner.cli import main
from tuner.data import prepare
from tuner.engine import Preprocess
from tuner.metrics import classification_metrics
from tuner.errors import UserError
from tuner.bundle import save_bundle
from tuner.families import RunContext, get_family
from tuner.families import knn

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
SETTINGS = list(itertools.product(knn.METRICS, ("none", "l2")))


@pytest.fixture(scope="module")
def digits():
    return prepare(spaces.DatasetConfig(name="digits", split=spaces.SplitConfig(0.2, 0.2, 0)), progress=False)


@pytest.fixture(scope="module")
def cnn_bundle(digits, tmp_path_factory):
    """A real exported cnn bundle (the format `tuner best --export` writes), trained for one epoch."""
    exp = spaces.load(SPACES / "digits_cnn.yaml")
    fam = get_family("cnn")
    learner = fam.learner({"blocks": 2, "channels": 16, "pool": "gap", "lr": 3e-3}, digits.info)
    for _ in learner.fit(digits, 1):
        pass
    path = tmp_path_factory.mktemp("bundle") / "model.pt"
    save_bundle(path, exp, {"blocks": 2, "channels": 16, "pool": "gap", "lr": 3e-3}, learner, digits)
    return path



def test_knn_on_digits_pixels_matches_sklearn_on_the_same_embeddings(digits):
    fam = get_family("knn")
    pre = Preprocess(digits.info.mean, digits.info.std, digits.info.channels)
    embed = lambda a: pre(torch.from_numpy(a)).flatten(1).numpy()  # noqa: E731
    xtr, xva = embed(digits.x_train), embed(digits.x_val)
    for (metric, normalize), weights in zip(SETTINGS, itertools.cycle(("uniform", "distance"))):
        learner = fam.learner({"k": 5, "metric": metric, "normalize": normalize, "weights": weights,
                               "validation": "holdout"}, digits.info)
        (m,) = list(learner.fit(digits, 1))
        assert set(m) >= {"epoch", "val_loss", "val_accuracy"} and m["epoch"] == 1
        pred, _ = sklearn_predict(xtr, digits.y_train, xva, 5, metric, normalize, weights)
        agree = (learner.predict_proba(digits.x_val).argmax(1) == pred).mean()
        assert agree >= 0.99, (metric, normalize, agree)  # integer pixels: a few distance ties
        assert m["val_accuracy"] == pytest.approx((pred == digits.y_val).mean(), abs=0.01)
        assert m["val_accuracy"] > 0.95


@pytest.mark.parametrize("metric,normalize", SETTINGS)
def test_knn_on_an_exported_bundles_embeddings(digits, cnn_bundle, metric, normalize, tmp_path):
    cfg = {"backbone": str(cnn_bundle), "k": 3, "metric": metric, "normalize": normalize, "weights": "distance",
           "validation": "holdout"}
    learner = get_family("knn").learner(cfg, digits.info, RunContext(cache_dir=str(tmp_path)))
    (m,) = list(learner.fit(digits, 1))
    module, channels, _ = embedding.extractor(str(cnn_bundle), "none", digits.info)
    pre = Preprocess(digits.info.mean, digits.info.std, digits.info.channels, channels)
    with torch.no_grad():
        xtr, xva = (module(pre(torch.from_numpy(a))).numpy() for a in (digits.x_train, digits.x_val))
    assert xtr.shape[1] == learner.x_train.shape[1] and xtr.shape[1] != 64  # the cnn's features, not pixels
    pred, _ = sklearn_predict(xtr, digits.y_train, xva, 3, metric, normalize, "distance")
    assert m["val_accuracy"] == pytest.approx((pred == digits.y_val).mean(), abs=0.01)
    assert m["val_accuracy"] > 0.5  # far above chance (0.1) after one epoch of training


def test_bundle_of_a_knn_on_a_bundle_backbone_loads_and_predicts_the_same(digits, cnn_bundle, tmp_path):
    exp = spaces.load(SPACES / "digits_knn.yaml", [f"fixed.backbone={cnn_bundle}"])
    cfg = {"backbone": str(cnn_bundle), "k": 5, "metric": "cosine", "normalize": "l2", "weights": "uniform"}
    learner = get_family("knn").learner(cfg, digits.info, RunContext(cache_dir=str(tmp_path)))
    list(learner.fit(digits, 1))
    proba = learner.predict_proba(digits.x_test)
    save_bundle(tmp_path / "model.pt", exp, cfg, learner, digits)
    loaded = tuner.load(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(digits.x_test), proba, atol=1e-6)


@pytest.mark.parametrize("metric,normalize", SETTINGS)
def test_leave_one_out_scores_each_non_test_image_by_all_the_others_then_keeps_them_all(digits, metric, normalize):
    pre = Preprocess(digits.info.mean, digits.info.std, digits.info.channels)
    embed = lambda a: pre(torch.from_numpy(a)).flatten(1).numpy()  # noqa: E731
    x = np.concatenate([embed(digits.x_train), embed(digits.x_val)])
    y = np.concatenate([digits.y_train, digits.y_val])
    learner = get_family("knn").learner({"k": 3, "metric": metric, "normalize": normalize}, digits.info)
    (m,) = list(learner.fit(digits, 1))
    # scikit-learn's leave-one-out: k + 1 neighbours of each image among all, the image itself dropped
    xs = x / np.linalg.norm(x, axis=1, keepdims=True) if normalize == "l2" else x
    nn_idx = KNeighborsClassifier(4, metric=metric, algorithm="brute").fit(xs, y).kneighbors(xs)[1]
    own = nn_idx == np.arange(len(x))[:, None]
    own[~own.any(1), -1] = True
    votes = y[nn_idx[~own].reshape(len(x), 3)]
    loo = (np.array([np.bincount(v, minlength=10).argmax() for v in votes]) == y).mean()
    assert m["val_accuracy"] == pytest.approx(loo, abs=0.005)
    # then every non-test image is a reference image, exactly as a KNeighborsClassifier fitted on them all
    pred, _ = sklearn_predict(x, y, embed(digits.x_test), 3, metric, normalize, "uniform")
    assert (learner.predict_proba(digits.x_test).argmax(1) == pred).mean() >= 0.99


def test_k_larger_than_the_training_set_is_a_user_error(digits):
    learner = get_family("knn").learner({"k": 10_000}, digits.info)
    with pytest.raises(UserError, match="k: 10000"):
        list(learner.fit(digits, 1))


def test_backbone_weights_given_as_weights_says_where_they_go(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("family: knn\nfixed: {backbone: resnet18, weights: imagenet}\n")
    with pytest.raises(UserError, match="backbone_weights"):
        spaces.load(f)



def test_missing_bundle_backbone_passes_validate_but_search_stops_before_ray(tmp_path, capsys):
    # validate checks the file alone (the bundle may come from a search not run yet); search checks the machine
    f = tmp_path / "s.yaml"
    f.write_text("family: knn\nfixed: {backbone: no/such/bundle}\n")
    assert main(["validate", "--space", str(f)]) == 0
    capsys.readouterr()
    assert main(["search", "--space", str(f), "--results", str(tmp_path / "r"), "--no-dashboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no/such/bundle" in err[0] and "tuner best --export" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_search_digits_knn_then_export_and_load(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["search", "--space", str(SPACES / "digits_knn.yaml"), "--smoke", "--results", str(results),
                 "--no-dashboard", "--set", "search.algorithm=random", "--set", "search.num_samples=4"]) == 0
    d = results / "digits_knn"
    metrics = json.loads((d / "best" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8 and metrics["num_params"] > 0
    for f in ("trials.csv", "epochs.csv", "best.yaml", "best/confusion_matrix.csv", "best/model.pt"):
        assert (d / f).is_file(), f
    assert main(["best", "--experiment", str(d), "--results", str(results), "--export", str(tmp_path / "x")]) == 0
    predictor = tuner.load(tmp_path / "x")
    split = np.load(d / "split.npz")
    data = prepare(spaces.smoke(spaces.load(SPACES / "digits_knn.yaml")).dataset, progress=False)
    assert len(data.y_test) == len(split["test"])
    got = classification_metrics(data.y_test, predictor.predict_proba(data.x_test))
    assert got["accuracy"] == pytest.approx(metrics["accuracy"])
    assert predictor.predict(data.x_test[:3]) == [data.class_names[i] for i in
                                                  predictor.predict_proba(data.x_test[:3]).argmax(1)]


def test_knn_on_a_changed_image_folder_scores_the_new_images_not_the_cached_ones(tmp_path):
    # what a second search on the same root does: the same cache folder, trials in the same process
    from PIL import Image

    from tests.test_data import digit_images, write_class_folders

    x, y = digit_images(n_per_class=20, size=16)
    root = write_class_folders(tmp_path / "f", x, y)
    conf = spaces.DatasetConfig(name="imagefolder", root=str(root), image_size=16, normalize="half",
                                split=spaces.SplitConfig(0.25, 0.25, 0))

    def search(cache: Path) -> tuple[float, float]:
        data = prepare(conf, cache_dir=cache, progress=False)
        learner = get_family("knn").learner({"k": 1, "validation": "holdout"}, data.info,
                                            RunContext(cache_dir=str(cache)))
        val = list(learner.fit(data))[-1]["val_accuracy"]
        return val, float((learner.predict_proba(data.x_test).argmax(1) == data.y_test).mean())

    assert search(tmp_path / "c") == (1.0, 1.0)
    rng = np.random.default_rng(0)
    for f in sorted(root.rglob("*.*")):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(f)
    noise = search(tmp_path / "c")
    assert noise == search(tmp_path / "fresh1") and noise[0] < 0.7
    (root / "three").mkdir()
    for i in range(20):
        Image.fromarray(x[i]).save(root / "three" / f"{i}.png")
    grown = search(tmp_path / "c")  # no IndexError from a table of the smaller set
    assert grown == search(tmp_path / "fresh2")


def test_trials_in_one_process_share_the_built_backbone_until_its_weights_file_changes(tmp_path):
    # a reused actor's next KNN trial read its embeddings and tables from the cache but built the network again
    import os

    import torchvision

    from tuner.families.base import DataInfo
    from tuner.families.embedding import Backbone

    info = DataInfo(num_classes=3, channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    f = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18().state_dict(), f)
    a, b = Backbone("resnet18", str(f), info), Backbone("resnet18", str(f), info)
    assert a.module is b.module and a.key == b.key
    os.replace(_resave(f, tmp_path / "new.pt"), f)  # another file at the same path: built anew, other key
    c = Backbone("resnet18", str(f), info)
    assert c.module is not a.module and c.key != a.key


def _resave(f, other):
    import shutil

    shutil.copy(f, other)
    return other


def test_knn_trials_of_one_backbone_and_table_kind_share_one_latency_measurement(digits):
    # with the backbone's forward passes, latency was 2.7 s of a 2.8 s KNN trial (121 trials, shared 2 cores)
    from tuner.families import measure

    measure._LATENCY.clear()
    fam = get_family("knn")

    def fitted(**cfg):
        learner = fam.learner({"backbone": "pixels", **cfg}, digits.info)
        list(learner.fit(digits, 1))
        return learner

    first = measure.latencies(fitted(k=3, metric="cosine"), digits.x_val)
    assert measure.latencies(fitted(k=9, metric="cosine", weights="distance"), digits.x_val) is first
    other = measure.latencies(fitted(k=3, metric="manhattan"), digits.x_val)  # another neighbour search
    assert other is not first and len(measure._LATENCY) == 2 and all(v > 0 for v in first + other)
    mlp = get_family("mlp").learner({"hidden": [8]}, digits.info)  # a trained model: measured every trial
    measure.latencies(mlp, digits.x_val)
    assert len(measure._LATENCY) == 2
    measure._LATENCY.clear()
