"""Data sets: find (readers) -> decode and resize once (cache) -> split -> one `ImageData` for all trials."""
from __future__ import annotations

import numpy as np

from tuner.data.base import READERS, ImageData, Source, SplitSource, get_reader, normalization, register_reader
from tuner.data import digits as _digits  # noqa: F401  (registers the reader)
from tuner.errors import UserError

__all__ = ["ImageData", "Source", "SplitSource", "READERS", "register_reader", "prepare", "stratified_split"]


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded, stratified index split. `fractions` are of the whole; the rest is `train`."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    out: dict[str, np.ndarray] = {}
    rest, rest_y = idx, labels
    remaining = 1.0
    for name, frac in fractions.items():
        if frac <= 0:
            out[name] = np.array([], dtype=np.int64)
            continue
        share = frac / remaining
        counts = np.bincount(rest_y)
        strat = rest_y if counts[counts > 0].min() >= 2 and share * len(rest) >= len(counts[counts > 0]) else None
        rest, taken, rest_y, _ = train_test_split(rest, rest_y, test_size=share, random_state=seed, stratify=strat)
        out[name] = np.sort(taken)
        remaining -= frac
    out["train"] = np.sort(rest)
    return out


def _limit(idx: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(idx) <= limit:
        return idx
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, size=limit, replace=False))


def prepare(cfg, cache_dir=None, progress: bool = True) -> ImageData:
    """Read, decode once, split and normalise the data set a `DatasetConfig` describes."""
    from tuner.data.cache import decode_split  # the decode-once cache

    source = get_reader(cfg.name)(cfg)
    if len(source.class_names) < 2:
        raise UserError(f"dataset.root {cfg.root}: only {len(source.class_names)} class found; "
                        f"a classifier needs at least 2 class folders")
    if len(source.train.labels) == 0:
        raise UserError(f"dataset.root {cfg.root}: no images found; put images in one folder per class")
    sp = cfg.split
    seed = sp.seed
    parts: dict[str, tuple[SplitSource, np.ndarray]] = {}
    if sp.test == "official":
        if source.test is None:
            raise UserError(f"dataset.split.test: {cfg.name} has no official test split here; "
                            f"set dataset.split.test to a fraction such as 0.2")
        if source.val is not None:
            pool = {"train": np.arange(len(source.train.labels))}
            parts["val"] = (source.val, np.arange(len(source.val.labels)))
        else:
            frac = {"val": sp.val}
            pool = stratified_split(source.train.labels, frac, seed)
            parts["val"] = (source.train, pool["val"])
        parts["train"] = (source.train, pool["train"])
        parts["test"] = (source.test, np.arange(len(source.test.labels)))
    else:
        # fractions are of everything the data set has: pool its splits first
        pooled = _pool([s for s in (source.train, source.val, source.test) if s is not None])
        idx = stratified_split(pooled.labels, {"test": sp.test, "val": sp.val}, seed)
        for name in ("train", "val", "test"):
            parts[name] = (pooled, idx[name])

    arrays = {}
    indices = {}
    for name in ("train", "val", "test"):
        src, idx = parts[name]
        idx = _limit(idx, cfg.limit, seed)
        indices[name] = idx
        arrays[name] = decode_split(cfg, name, src, idx, cache_dir=cache_dir, progress=progress)
    if len(arrays["val"]) == 0:
        raise UserError("dataset.split.val is 0: the search needs a validation split; set it to e.g. 0.2")
    mean, std = normalization(cfg.normalize, arrays["train"])
    return ImageData(
        x_train=arrays["train"], y_train=parts["train"][0].labels[indices["train"]].astype(np.int64),
        x_val=arrays["val"], y_val=parts["val"][0].labels[indices["val"]].astype(np.int64),
        x_test=arrays["test"], y_test=parts["test"][0].labels[indices["test"]].astype(np.int64),
        class_names=list(source.class_names), mean=mean, std=std, name=cfg.name,
        key=f"{cfg.name}:{cfg.root}:{cfg.image_size}:{sp.val}:{sp.test}:{seed}:{cfg.limit}", indices=indices)


def _pool(splits: list[SplitSource]) -> SplitSource:
    if len(splits) == 1:
        return splits[0]
    labels = np.concatenate([s.labels for s in splits])
    if all(isinstance(s.images, np.ndarray) for s in splits):
        return SplitSource(images=np.concatenate([s.images for s in splits]), labels=labels)
    images: list = []
    for s in splits:
        images.extend(list(s.images))
    return SplitSource(images=images, labels=labels)
