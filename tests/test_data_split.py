"""tuner's split is scikit-learn's train_test_split written out: the same images on each side for the same
seed, so results folders and caches made before (when tuner called scikit-learn) keep their splits."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from tuner.data.split import split_off, stratified_split


def _sklearn(idx: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """What tuner called before: stratified when every class can give one to each side."""
    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 and share * len(idx) >= len(counts[counts > 0]) else None
    kept, taken = train_test_split(idx, test_size=share, random_state=seed, stratify=strat)
    return kept, taken


def _cases():
    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(2, 400))
        classes = int(rng.integers(1, 30))
        # uneven classes (a few large, many small), as real folders are; some of one image, left unstratified
        y = rng.choice(classes, size=n, p=rng.dirichlet(np.full(classes, 0.7)))
        yield n, y, float(rng.choice([0.1, 0.15, 0.2, 0.25, 1 / 3, 0.5, 0.8])), int(rng.integers(0, 2**31 - 1))


@pytest.mark.parametrize("chunk", range(3))
def test_each_cut_takes_the_images_scikit_learns_train_test_split_takes(chunk):
    checked = 0
    for i, (n, y, share, seed) in enumerate(_cases()):
        if i % 3 != chunk:
            continue
        idx = np.arange(1000, 1000 + n)
        try:
            want = _sklearn(idx, y, share, seed)
        except ValueError:  # scikit-learn refuses a cut that leaves a side empty or too small to stratify
            continue
        got = split_off(idx, y, share, seed)
        assert [a.tolist() for a in got] == [a.tolist() for a in want], (n, share, seed, np.bincount(y))
        checked += 1
    assert checked > 60


def test_digits_splits_are_the_ones_scikit_learn_made():
    from sklearn.datasets import load_digits

    y = load_digits().target
    got = stratified_split(y, {"test": 0.2, "val": 0.2}, 0)
    rest = np.arange(len(y))
    kept, test = _sklearn(rest, y, 0.2, 0)
    train, val = _sklearn(kept, y[kept], 0.2 / 0.8, 0)
    assert got["test"].tolist() == sorted(test.tolist()) and got["val"].tolist() == sorted(val.tolist())
    assert got["train"].tolist() == sorted(train.tolist())


def test_a_cut_scikit_learn_refused_leaves_one_image_on_each_side():
    kept, taken = split_off(np.arange(2), np.array([0, 1]), 0.6, 0)  # ceil(1.2) = 2 would leave train empty
    assert len(kept) == 1 and len(taken) == 1


def test_digits_are_read_from_tuners_cache_after_the_first_time(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    from tuner.data.digits import read_digits

    monkeypatch.setenv("TUNER_CACHE", str(tmp_path))
    want = load_digits()
    first = read_digits(None)
    (kept,) = (tmp_path / "datasets").glob("digits-scikit-learn-*.npz")
    again = read_digits(None)
    for source in (first, again):
        assert np.array_equal(source.train.labels, want.target) and source.class_names == [str(c) for c in range(10)]
        assert np.array_equal(source.train.images[..., 0], np.round(want.images * 255 / 16).astype(np.uint8))
    kept.write_bytes(b"not a zip")  # a damaged cache entry is read again from scikit-learn and replaced
    assert np.array_equal(read_digits(None).train.labels, want.target)
    assert np.load(kept)["labels"].shape == (1797,)


@pytest.mark.slow  # a fresh interpreter
def test_preparing_digits_imports_scikit_learn_only_to_fill_the_cache(tmp_path):
    import subprocess
    import sys

    code = """
import sys
from tuner.data import prepare
from tuner.spaces import DatasetConfig
prepare(DatasetConfig(name="digits"), progress=False)
print("sklearn" in sys.modules, "scipy" in sys.modules)
"""
    env = {**__import__("os").environ, "TUNER_CACHE": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
            for _ in range(2)]
    assert runs == ["True True\n", "False False\n"], runs  # the first read fills the cache
