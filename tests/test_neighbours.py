"""tuner/neighbours.py: vectorised neighbour tables that predict what scikit-learn predicts, one search a
table kind serving every k, cached in memory and on disk so a trial is a look-up."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import normalize as sk_normalize

from tuner import neighbours
from tuner.families import knn

SETTINGS = list(itertools.product(knn.METRICS, ("none", "l2")))


def sklearn_predict(x_train, y_train, x_query, k, metric, normalize, weights):
    a, b = (sk_normalize(x_train), sk_normalize(x_query)) if normalize == "l2" else (x_train, x_query)
    clf = KNeighborsClassifier(n_neighbors=k, metric=metric, weights=weights, algorithm="brute").fit(a, y_train)
    return clf.predict(b), clf.predict_proba(b)



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
