"""The seeded, stratified train / val / test split of a data set's images.

Each cut is scikit-learn's `train_test_split` (StratifiedShuffleSplit, or ShuffleSplit when a class is too
small to stratify) written out step for step on numpy's RandomState(seed): the same draws, so every split
made before stays the image for image the same (tests/test_data_split.py compares them), while a search's
driver no longer imports scikit-learn to make it (0.85 s of every search's start, scipy.stats included).
"""
from __future__ import annotations

import math

import numpy as np


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded, stratified index split. `fractions` are of the whole; the rest is `train`. An image whose class
    has no other image left to split stays in train: a class seen only in val or test cannot be learned (and a
    single image cannot be stratified)."""
    out: dict[str, np.ndarray] = {}
    rest = np.arange(len(labels))
    remaining = 1.0
    for name, frac in fractions.items():
        if frac <= 0:
            out[name] = np.array([], dtype=np.int64)
            continue
        alone = np.bincount(labels[rest])[labels[rest]] < 2
        kept, taken = split_off(rest[~alone], labels[rest[~alone]], frac / remaining, seed)
        rest = np.concatenate([kept, rest[alone]])
        out[name] = np.sort(taken)
        remaining -= frac
    out["train"] = np.sort(rest)
    return out


def split_off(idx: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, taken): `share` of idx taken, stratified by y when every class can give one to each side."""
    n = len(idx)
    if n < 2:
        return idx, idx[:0]
    # train_test_split's sizes; it refused a cut that left one side empty, where this takes n - 1
    n_test = min(math.ceil(share * n), n - 1)
    n_train = n - n_test
    rng = np.random.RandomState(seed)
    _, y_index, counts = np.unique(y, return_inverse=True, return_counts=True)
    classes = len(counts)
    if counts.min() >= 2 and share * n >= classes and n_train >= classes:
        train, test = _stratified(y_index.ravel(), counts, n_train, n_test, rng)
    else:  # ShuffleSplit
        order = rng.permutation(n)
        test, train = order[:n_test], order[n_test:]
    return idx[train], idx[test]


def _stratified(y_index: np.ndarray, counts: np.ndarray, n_train: int, n_test: int,
                rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """StratifiedShuffleSplit's one split: each class's share of each side, then its images drawn."""
    by_class = np.split(np.argsort(y_index, kind="stable"), np.cumsum(counts)[:-1])
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, members in enumerate(by_class):
        drawn = members.take(rng.permutation(counts[i]), mode="clip")
        train.extend(drawn[: n_i[i]])
        test.extend(drawn[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `draws` each class gets: its share rounded down, then one more to the classes with the
    largest remainders, ties broken at random (the draws are scikit-learn's, so the splits match)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), need)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)
