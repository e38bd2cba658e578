"""Data sets: find (readers) -> split -> decode and resize once (cache) -> one `ImageData` for all trials.

Each on-disk format is one module that registers a reader; a reader only lists images (paths, bytes or
arrays) and labels per split the data set ships with. `prepare` splits them (stratified, seeded), has
the cache decode what the splits need, drops files that would not decode, and normalises.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np

from tuner.data.base import READERS, ImageData, Source, SplitSource, get_reader, normalization, register_reader
from tuner.data import digits as _digits  # noqa: F401  (each import registers its reader)
from tuner.data import folder as _folder  # noqa: F401
from tuner.data import torchvision_sets as _torchvision_sets  # noqa: F401
from tuner.data import tfrecords as _tfrecords  # noqa: F401
from tuner.errors import UserError

__all__ = ["ImageData", "Source", "SplitSource", "READERS", "register_reader", "prepare", "stratified_split"]

PARTS = ("train", "val", "test")


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
        kept, taken = _split_off(rest[~alone], labels[rest[~alone]], frac / remaining, seed)
        rest = np.concatenate([kept, rest[alone]])
        out[name] = np.sort(taken)
        remaining -= frac
    out["train"] = np.sort(rest)
    return out


def _split_off(idx: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, taken): `share` of idx taken, stratified by y when every class can give one to each side."""
    from sklearn.model_selection import train_test_split

    if len(idx) < 2:
        return idx, idx[:0]
    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 and share * len(idx) >= len(counts[counts > 0]) else None
    kept, taken = train_test_split(idx, test_size=share, random_state=seed, stratify=strat)
    return kept, taken


def _limit(idx: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(idx) <= limit:
        return idx
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, size=limit, replace=False))


def plan_splits(source: Source, cfg) -> tuple[dict[str, SplitSource], dict[str, np.ndarray]]:
    """Which images go to train/val/test, as indices into the reader's splits laid end to end."""
    shipped = {k: getattr(source, k) for k in PARTS if getattr(source, k) is not None}
    offsets, start = {}, 0
    for k, s in shipped.items():
        offsets[k] = start
        start += len(s.labels)
    sp = cfg.split
    parts: dict[str, np.ndarray] = {}
    if sp.test == "official":
        if source.test is None:
            raise UserError(f"dataset.split.test: {cfg.name} has no official test split here; "
                            f"set dataset.split.test to a fraction such as 0.2")
        parts["test"] = offsets["test"] + np.arange(len(source.test.labels))
        if source.val is not None:  # an official validation split too: keep it
            parts["val"] = offsets["val"] + np.arange(len(source.val.labels))
            parts["train"] = offsets["train"] + np.arange(len(source.train.labels))
        else:
            idx = stratified_split(source.train.labels, {"val": sp.val}, sp.seed)
            parts["val"], parts["train"] = idx["val"], idx["train"]
    else:
        # fractions are of everything the data set has: pool its splits first
        pooled = np.concatenate([s.labels for s in shipped.values()])
        parts = stratified_split(pooled, {"test": sp.test, "val": sp.val}, sp.seed)
    return shipped, {k: _limit(parts[k], cfg.limit, sp.seed) for k in PARTS}


def _check_classes(cfg, labels: np.ndarray, class_names: list[str], where: str) -> None:
    present = np.unique(labels)
    if len(labels) == 0:
        raise UserError(f"dataset.root {cfg.root}: no readable images found{where}; "
                        f"put images in one folder per class (e.g. {cfg.root}/cat/1.jpg, {cfg.root}/dog/2.jpg)")
    if len(present) < 2:
        only = class_names[int(present[0])] if len(class_names) > int(present[0]) else str(present[0])
        raise UserError(f"dataset.root {cfg.root}: only 1 class ({only!r}) found{where}; "
                        f"a classifier needs images of at least 2 classes, one folder per class")


def prepare(cfg, cache_dir=None, progress: bool = True) -> ImageData:
    """Read, split, decode once and normalise the data set a `DatasetConfig` describes."""
    from tuner.data.cache import check_image_size, check_memory, check_space, decode_split, plan

    check_image_size(cfg.image_size)
    if not cfg.root and cfg.download and cfg.name != "digits":  # torchvision needs a folder to download into
        base = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "tuner"
        cfg = dataclasses.replace(cfg, root=str(base / "datasets" / cfg.name))
    source = get_reader(cfg.name)(cfg)
    all_labels = np.concatenate([s.labels for s in (source.train, source.val, source.test) if s is not None])
    _check_classes(cfg, all_labels, source.class_names, "")
    shipped, parts = plan_splits(source, cfg)

    # decode, per shipped split, the images some part needs (all of them unless dataset.limit / --smoke)
    offsets = np.cumsum([0] + [len(s.labels) for s in shipped.values()])
    decoded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    used = np.unique(np.concatenate(list(parts.values())))
    locals_ = {k: used[(used >= offsets[j]) & (used < offsets[j + 1])] - offsets[j] for j, k in enumerate(shipped)}
    # everything that will be written, against the free space, before the first byte is
    entries = {k: plan(cfg, k, shipped[k], local, cache_dir, cfg.image_size)
               for k, local in locals_.items() if len(local)}
    check_space(sum(e.nbytes for e in entries.values() if e is not None and not e.built), cache_dir)
    if cache_dir is not None:  # the images used are also copied into memory (without a cache: checked above)
        check_memory(sum(len(locals_[k]) * e.size * e.size * e.channels for k, e in entries.items() if e is not None))
    content = hashlib.sha256(f"{cfg.name}|{cfg.image_size}".encode())
    for k, local in locals_.items():
        if len(local):
            arr, ok, digest = decode_split(cfg, k, shipped[k], local, cache_dir=cache_dir, progress=progress,
                                           size=cfg.image_size)
            decoded[k] = (local, arr, ok)
            content.update(f"|{k}:{digest}".encode())
    skipped = source.skipped + sum(int((~ok).sum()) for _, _, ok in decoded.values())
    if skipped:
        plural = "s" if skipped != 1 else ""
        unreadable = skipped - sum(source.skipped_why.values())
        why = ([f"{unreadable} unreadable or non-image"] if unreadable else []) + \
              [f"{n} {reason}" for reason, n in source.skipped_why.items() if n]
        what = f"file{plural}: {', '.join(why)}" if source.skipped_why else f"unreadable or non-image file{plural}"
        print(f"warning: dataset.root {cfg.root}: skipped {skipped} {what}", file=sys.stderr)

    arrays, labels, indices = {}, {}, {}
    for part in PARTS:
        xs, ys, keep_idx = [], [], []
        for j, (k, s) in enumerate(shipped.items()):
            g = parts[part][(parts[part] >= offsets[j]) & (parts[part] < offsets[j + 1])]
            if not len(g):
                continue
            local, arr, ok = decoded[k]
            pos = np.searchsorted(local, g - offsets[j])
            good = ok[pos]
            pos, g = pos[good], g[good]
            # the whole entry in order: keep the memory map instead of copying it
            whole = len(pos) == len(arr) and (len(pos) == 0 or (pos[0] == 0 and pos[-1] == len(arr) - 1))
            xs.append(arr if whole else np.ascontiguousarray(arr[pos]))
            ys.append(s.labels[g - offsets[j]].astype(np.int64))
            keep_idx.append(g)
        if not xs:  # an empty part (split.test: 0); keep the shape of the others
            ref = next(iter(decoded.values()))[1]
            xs, ys, keep_idx = [ref[:0]], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        arrays[part] = xs[0] if len(xs) == 1 else np.concatenate(xs)
        labels[part] = np.concatenate(ys)
        indices[part] = np.concatenate(keep_idx)
    _check_classes(cfg, labels["train"], source.class_names, " in the training split")
    if len(arrays["val"]) == 0:
        raise UserError("dataset.split.val is 0: the search needs a validation split; set it to e.g. 0.2")
    mean, std = normalization(cfg.normalize, arrays["train"])
    # the feature caches downstream are keyed by this: the decoded pixels, which of them each part holds,
    # and the labels, so a changed, grown or shrunk folder never meets a stale embedding or neighbour table
    for part in PARTS:
        content.update(f"|{part}|".encode())
        content.update(indices[part].astype(np.int64).tobytes())
        content.update(labels[part].tobytes())
    return ImageData(
        x_train=arrays["train"], y_train=labels["train"], x_val=arrays["val"], y_val=labels["val"],
        x_test=arrays["test"], y_test=labels["test"], class_names=list(source.class_names), mean=mean, std=std,
        name=cfg.name, key=f"{cfg.name}:{content.hexdigest()[:32]}",
        indices=indices, skipped=skipped, value_range=source.value_range)
