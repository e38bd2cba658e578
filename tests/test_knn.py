"""The knn family: vectorised neighbour tables that predict what scikit-learn predicts, cached so a trial is
a look-up, on pixels and on an exported bundle's embeddings, and end to end through the command line."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import normalize as sk_normalize

import tuner
from tuner.families import embedding
from tuner import neighbours
from tuner import backbones, spaces
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


def sklearn_predict(x_train, y_train, x_query, k, metric, normalize, weights):
    a, b = (sk_normalize(x_train), sk_normalize(x_query)) if normalize == "l2" else (x_train, x_query)
    clf = KNeighborsClassifier(n_neighbors=k, metric=metric, weights=weights, algorithm="brute").fit(a, y_train)
    return clf.predict(b), clf.predict_proba(b)


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


@pytest.mark.parametrize("backend", ["sklearn", "torch"])  # torch is what runs on a GPU
@pytest.mark.parametrize("metric,normalize", SETTINGS)
def test_vectorised_knn_predicts_what_sklearn_predicts(metric, normalize, backend):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((400, 24)) + 0.3).astype(np.float32)  # continuous: no distance ties
    y = rng.integers(0, 4, 400)
    q = (rng.standard_normal((150, 24)) + 0.3).astype(np.float32)
    table = neighbours.neighbours(x, q, neighbours.table_kind(metric, normalize), 40, backend=backend)
    for k, weights in itertools.product((1, 2, 5, 17, 40), ("uniform", "distance")):
        proba = neighbours.vote(table, y, k, metric, weights, 4)
        pred, sk_proba = sklearn_predict(x, y, q, k, metric, normalize, weights)
        np.testing.assert_array_equal(proba.argmax(1), pred, err_msg=f"k={k} {weights}")
        np.testing.assert_allclose(proba, sk_proba, atol=1e-5)


def test_distance_vote_lets_an_exact_match_win_as_sklearn_does():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [1.1, 0.0], [0.9, 0.0]], dtype=np.float32)
    y = np.array([0, 1, 1, 1])
    q = np.array([[0.0, 0.0]], dtype=np.float32)  # sits on a class-0 point; three class-1 points are near
    table = neighbours.neighbours(x, q, "euclidean-none", 4, backend="torch")
    proba = neighbours.vote(table, y, 4, "euclidean", "distance", 2)
    assert proba.tolist() == [[1.0, 0.0]]
    assert neighbours.vote(table, y, 4, "euclidean", "uniform", 2).argmax(1).tolist() == [1]
    np.testing.assert_array_equal(proba, sklearn_predict(x, y, q, 4, "euclidean", "none", "distance")[1])


def test_six_metric_normalisation_settings_need_four_searches():
    kinds = {neighbours.table_kind(m, n) for m, n in SETTINGS}
    assert kinds == {"cosine", "euclidean-none", "manhattan-none", "manhattan-l2"}


def test_one_search_serves_every_k_from_memory_and_from_disk(tmp_path):
    rng = np.random.default_rng(1)
    x, q = rng.random((300, 16), dtype=np.float32), rng.random((50, 16), dtype=np.float32)
    neighbours.TABLES.tables.clear()
    first = neighbours.TABLES.get("t", x, q, "manhattan-none", 3, cache_dir=str(tmp_path))
    assert first.k == neighbours.K_TABLE
    assert neighbours.TABLES.get("t", x, q, "manhattan-none", 50, cache_dir=str(tmp_path)) is first  # a look-up
    files = list((tmp_path / "knn").glob("*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    neighbours.TABLES.tables.clear()  # as another trial process would start
    again = neighbours.TABLES.get("t", x, q, "manhattan-none", 7, cache_dir=str(tmp_path))
    assert files[0].stat().st_mtime_ns == mtime  # read, not searched again
    np.testing.assert_array_equal(again.idx, first.idx)
    bigger = neighbours.TABLES.get("t", x, q, "manhattan-none", 100, cache_dir=str(tmp_path))
    assert bigger.k == 100  # beyond the table: searched once more, deeper
    np.testing.assert_array_equal(bigger.idx[:, :neighbours.K_TABLE], first.idx)


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
        learner = get_family("knn").learner({"k": 1, "validation": "holdout"}, data.info, RunContext(cache_dir=str(cache)))
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
