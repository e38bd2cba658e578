"""The features family: scikit-learn classifiers on cached embeddings, each predicting what the same
classifier fitted directly predicts, reloadable from a bundle, and searchable from the command line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tuner
from tuner import spaces
from tuner.cli import main
from tuner.data import prepare
from tuner.engine import Preprocess
from tuner.errors import UserError
from tuner.bundle import save_bundle
from tuner.families import RunContext, get_family

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"

CASES = {  # each classifier's params in the space
    "logreg": {"C": 0.5},
    "random_forest": {"n_estimators": 30, "max_depth": 6, "min_samples_leaf": 3, "criterion": "entropy"},
    "svm": {"C": 2.0, "kernel": "rbf"},
    "knn": {"k": 3},
}


def sklearn_reference(classifier: str):
    """The same classifier as scikit-learn builds it from those params (imported here, not at collection:
    sklearn.ensemble alone costs every pytest worker a second)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    return {"logreg": lambda: LogisticRegression(C=0.5, max_iter=1000, random_state=0),
            "random_forest": lambda: RandomForestClassifier(n_estimators=30, max_depth=6, min_samples_leaf=3,
                                                            criterion="entropy", random_state=0),
            "svm": lambda: SVC(C=2.0, kernel="rbf", break_ties=True, random_state=0),
            "knn": lambda: KNeighborsClassifier(n_neighbors=3)}[classifier]()


@pytest.fixture(scope="module")
def digits():
    return prepare(spaces.DatasetConfig(name="digits", split=spaces.SplitConfig(0.2, 0.2, 0)), progress=False)


def pixels(data, x):
    pre = Preprocess(data.info.mean, data.info.std, data.info.channels)
    return pre(torch.from_numpy(x)).flatten(1).numpy()


@pytest.mark.parametrize("classifier", list(CASES))
def test_each_classifier_predicts_what_sklearn_fitted_directly_predicts(digits, classifier, tmp_path):
    params, reference = CASES[classifier], sklearn_reference(classifier)
    learner = get_family("features").learner({"classifier": classifier, **params}, digits.info,
                                             RunContext(cache_dir=str(tmp_path)))
    (m,) = list(learner.fit(digits, 1))
    assert m["epoch"] == 1 and {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(m)
    reference.fit(pixels(digits, digits.x_train), digits.y_train)
    expected = reference.predict(pixels(digits, digits.x_val))
    np.testing.assert_array_equal(learner.predict_proba(digits.x_val).argmax(1), expected)
    assert m["val_accuracy"] == pytest.approx((expected == digits.y_val).mean())
    assert m["val_accuracy"] > 0.85


def test_standard_normalisation_uses_training_statistics_only(digits):
    learner = get_family("features").learner({"classifier": "logreg", "normalize": "standard"}, digits.info)
    list(learner.fit(digits, 1))
    x = pixels(digits, digits.x_train).astype(np.float64)
    np.testing.assert_allclose(learner.mean, x.mean(0), atol=1e-5)
    # val scaled by train stats
    expected = (pixels(digits, digits.x_val) - x.mean(0)) / np.where(x.std(0) < 1e-5, 1.0, x.std(0))
    np.testing.assert_allclose(learner.transform(learner.query(digits.x_val)[0]), expected, atol=1e-3)


@pytest.mark.parametrize("classifier", ["random_forest", "svm"])
def test_a_bundle_reloads_and_predicts_exactly_what_was_tested(digits, classifier, tmp_path):
    params = CASES[classifier]
    cfg = {"classifier": classifier, "normalize": "l2", **params}
    learner = get_family("features").learner(cfg, digits.info)
    list(learner.fit(digits, 1))
    exp = spaces.load(SPACES / "digits_knn.yaml")  # any digits experiment: save_bundle needs its name
    exp.family = "features"
    save_bundle(tmp_path / "model.pt", exp, cfg, learner, digits)
    loaded = tuner.load(tmp_path, device=str(learner.device))  # across devices: tests/test_gpu.py (1e-3)
    np.testing.assert_array_equal(loaded.predict_proba(digits.x_test), learner.predict_proba(digits.x_test))


def test_bad_gamma_and_vote_weights_are_user_errors(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("family: features\nfixed: {classifier: svm, gamma: often}\n")
    with pytest.raises(UserError, match="gamma"):
        spaces.load(f)
    f.write_text("family: features\nfixed: {classifier: trees}\n")
    assert main(["validate", "--space", str(f)]) == 2


def test_cifar10_features_space_validates_offline_and_search_names_the_missing_vgg19_file(tmp_path, capsys):
    import torch

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))  # a machine with no ImageNet files
    try:
        assert main(["validate", "--space", str(SPACES / "cifar10_features.yaml")]) == 0
        capsys.readouterr()
        code = main(["search", "--space", str(SPACES / "cifar10_features.yaml"), "--results", str(tmp_path / "r"),
                     "--no-dashboard"])
    finally:
        torch.hub.set_dir(old)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vgg19" in err[0] and str(tmp_path / "hub") in err[0]


@pytest.mark.slow
def test_search_features_on_digits_from_the_command_line(tmp_path):
    space = tmp_path / "digits_features.yaml"
    space.write_text(
        "name: digits_features\n"
        "dataset: {name: digits, split: {val: 0.2, test: 0.2, seed: 0}}\n"
        "family: features\n"
        "search: {algorithm: random, num_samples: 3, max_concurrent: 2, seed: 0}\n"
        "scheduler: {name: fifo, max_epochs: 1}\n"
        "space:\n"
        "  classifier: {choice: [logreg, random_forest, svm, knn]}\n"
        "  normalize: {choice: [none, l2, standard]}\n"
        "  C: {loguniform: [0.01, 10.0]}\n"
        "  n_estimators: {int: [10, 50]}\n"
        "  k: {int: [1, 9]}\n")
    results = tmp_path / "results"
    assert main(["search", "--space", str(space), "--results", str(results), "--no-dashboard"]) == 0
    metrics = json.loads((results / "digits_features" / "best" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.9 and metrics["num_test"] == 360
    assert (results / "digits_features" / "best" / "confusion_matrix.csv").is_file()
