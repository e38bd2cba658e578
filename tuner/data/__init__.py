"""Data sets: find (readers) -> split -> decode and resize once (cache) -> one `ImageData` for all trials.

Each on-disk format is one module that registers a reader; a reader only lists images (paths, bytes or
arrays) and labels per split the data set ships with. `prepare` splits them (stratified, seeded), has
the cache decode what the splits need, drops files that would not decode, and normalises. Each part
(train, val, test) ends up a memory map of one file in the cache: a whole entry, or the part's own file
when it is carved out of one (val out of the official train split), so no process holds a copy.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from tuner.data.base import (READERS, ImageData, PrepareStats, Source, SplitSource, get_reader, normalization,
                             register_reader)
from tuner.data import digits as _digits  # noqa: F401  (each import registers its reader)
from tuner.data import folder as _folder  # noqa: F401
from tuner.data import torchvision_sets as _torchvision_sets  # noqa: F401
from tuner.data import tfrecords as _tfrecords  # noqa: F401
from tuner.data.split import stratified_split
from tuner.errors import UserError

__all__ = ["ImageData", "Source", "SplitSource", "READERS", "register_reader", "prepare", "stratified_split"]

PARTS = ("train", "val", "test")


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


def _layout(parts: dict[str, np.ndarray], shipped: dict,
            offsets: np.ndarray) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Each part (train, val, test) as pieces (shipped split, indices into that split), in order."""
    out = {}
    for part in PARTS:
        pieces = []
        for j, k in enumerate(shipped):
            g = parts[part][(parts[part] >= offsets[j]) & (parts[part] < offsets[j + 1])]
            if len(g):
                pieces.append((k, g - offsets[j]))
        out[part] = pieces
    return out


def _whole(pieces: list, entries: dict) -> bool:
    """A part that is one cache entry, every row in order: it is used as it is, not copied."""
    if len(pieces) != 1 or entries.get(pieces[0][0]) is None:
        return False
    k, local = pieces[0]
    rows = entries[k].rows
    return len(local) == len(rows) and bool(np.array_equal(local, rows))


def _part_files(layout: dict, entries: dict, cache_dir) -> dict[str, Path]:
    """The cache file of each part that is not one whole entry (with a cache; else parts are in memory)."""
    from tuner.data.cache import part_file

    out = {}
    for part, pieces in layout.items():
        if cache_dir is None or not pieces or _whole(pieces, entries):
            continue
        if all(entries.get(k) is not None and entries[k].folder is not None for k, _ in pieces):
            out[part] = part_file(cache_dir, [(entries[k].folder.name, local) for k, local in pieces])
    return out


def _check_room(entries: dict, files: dict, layout: dict, locals_: dict, cache_dir, by_path: bool) -> None:
    """Before the first image is decoded: the disk for what will be written, and memory where the images
    must be held in it (no cache, or trials on other machines that get them through Ray's object store)."""
    from tuner.data.cache import _gb, available_memory, check_memory, check_space

    built = [e for e in entries.values() if e is not None and not e.built]
    held = sum(len(locals_[k]) * e.size * e.size * e.channels for k, e in entries.items() if e is not None)
    per_image = next((e.size * e.size * e.channels for e in entries.values() if e is not None), 0)
    new_parts = sum(per_image * sum(len(local) for _, local in layout[part])
                    for part, f in files.items() if not f.is_file())
    check_space(sum(e.nbytes for e in built) + new_parts, cache_dir)
    if cache_dir is None:
        return  # check_space has compared them with the free memory
    if not by_path:
        check_memory(held, cluster=True)
    elif held > available_memory():
        print(f"note: the decoded images ({_gb(held)}) are more than the free memory ({_gb(available_memory())}): "
              f"trials read them from the cache as batches need them; epochs are slower than from memory",
              file=sys.stderr)


def _decode(cfg, shipped: dict, locals_: dict, entries: dict, cache_dir, progress: bool):
    """Each shipped split's images, decoded (or found in the cache), and what that took."""
    from tuner.data.cache import decode_split

    stats = PrepareStats()
    decoded = {}
    for k, local in locals_.items():
        if not len(local):
            continue
        e = entries.get(k)
        fresh = e if e is not None and not e.built else None  # decoded now, not found in the cache
        t = time.perf_counter()
        decoded[k] = decode_split(cfg, k, shipped[k], local, cache_dir=cache_dir, progress=progress,
                                  size=cfg.image_size)
        if fresh is not None:
            stats.decode_s += time.perf_counter() - t
            stats.decoded += len(fresh.rows)
        stats.skipped += int((~decoded[k].ok).sum())
    return decoded, stats


def _assemble(layout: dict, decoded: dict, locals_: dict, shipped: dict, offsets: dict, files: dict):
    """Each part's images, labels and indices into the reader's splits laid end to end. Images that did
    not decode are left out."""
    arrays, labels, indices = {}, {}, {}
    for part, pieces in layout.items():
        taken, ys, keep_idx = [], [], []
        for k, local in pieces:
            d = decoded[k]
            sel = np.searchsorted(locals_[k], local)
            good = d.ok[sel]
            taken.append((d.arr, d.pos[sel][good]))
            ys.append(shipped[k].labels[local[good]].astype(np.int64))
            keep_idx.append(local[good] + offsets[k])
        if not taken:  # an empty part (split.test: 0); keep the shape of the others
            taken = [(next(iter(decoded.values())).arr, np.zeros(0, np.int64))]
            ys, keep_idx = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        arrays[part] = _images(taken, files.get(part))
        labels[part] = np.concatenate(ys)
        indices[part] = np.concatenate(keep_idx)
    return arrays, labels, indices


def _images(taken: list[tuple[np.ndarray, np.ndarray]], file: Path | None) -> np.ndarray:
    """Rows of one or more arrays as one array: a whole array as it is (a memory-mapped entry stays
    mapped), else the part's file in the cache (written once, then mapped), else (no cache) a copy."""
    from tuner.data.cache import gather

    if len(taken) == 1 and np.array_equal(taken[0][1], np.arange(len(taken[0][0]))):
        return taken[0][0]
    if file is not None and sum(len(rows) for _, rows in taken) > 0:
        return gather(file, taken)
    xs = [np.ascontiguousarray(arr[rows]) for arr, rows in taken]
    return xs[0] if len(xs) == 1 else np.concatenate(xs)


def _warn_skipped(cfg, source: Source, skipped: int) -> None:
    skipped += source.skipped
    if not skipped:
        return
    plural = "s" if skipped != 1 else ""
    unreadable = skipped - sum(source.skipped_why.values())
    why = ([f"{unreadable} unreadable or non-image"] if unreadable else []) + \
          [f"{n} {reason}" for reason, n in source.skipped_why.items() if n]
    what = f"file{plural}: {', '.join(why)}" if source.skipped_why else f"unreadable or non-image file{plural}"
    print(f"warning: dataset.root {cfg.root}: skipped {skipped} {what}", file=sys.stderr)


def prepare(cfg, cache_dir=None, progress: bool = True, by_path: bool = True) -> ImageData:
    """Read, split, decode once and normalise the data set a `DatasetConfig` describes.

    With a cache_dir every part (train, val, test) is a memory map of one file in the cache, and the
    `ImageData` pickles as those files' paths (`by_path`): every trial on this machine maps the same pages
    and none holds a copy, and a set larger than memory still runs, read from disk as batches need it.
    by_path=False (trials on other machines, which may not see this cache): the arrays themselves travel,
    through Ray's object store, so they must fit in memory; that is checked before anything is decoded.
    """
    from tuner.data.cache import check_image_size, plan

    t0 = time.perf_counter()
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
    used = np.unique(np.concatenate(list(parts.values())))
    locals_ = {k: used[(used >= offsets[j]) & (used < offsets[j + 1])] - offsets[j] for j, k in enumerate(shipped)}
    entries = {k: plan(cfg, k, shipped[k], local, cache_dir, cfg.image_size)
               for k, local in locals_.items() if len(local)}
    layout = _layout(parts, shipped, offsets)
    files = _part_files(layout, entries, cache_dir)
    _check_room(entries, files, layout, locals_, cache_dir, by_path)
    decoded, stats = _decode(cfg, shipped, locals_, entries, cache_dir, progress)
    arrays, labels, indices = _assemble(layout, decoded, locals_, shipped, dict(zip(shipped, offsets)), files)
    _warn_skipped(cfg, source, stats.skipped)
    _check_classes(cfg, labels["train"], source.class_names, " in the training split")
    if len(arrays["val"]) == 0:
        raise UserError("dataset.split.val is 0: the search needs a validation split; set it to e.g. 0.2")
    mean, std = normalization(cfg.normalize, arrays["train"])
    # the feature caches downstream are keyed by this: the decoded pixels, which of them each part holds,
    # and the labels, so a changed, grown or shrunk folder never meets a stale embedding or neighbour table
    content = hashlib.sha256(f"{cfg.name}|{cfg.image_size}".encode())
    for k, d in decoded.items():
        content.update(f"|{k}:{d.digest}".encode())
    for part in PARTS:
        content.update(f"|{part}|".encode())
        content.update(indices[part].astype(np.int64).tobytes())
        content.update(labels[part].tobytes())
    stats.seconds = time.perf_counter() - t0
    stats.nbytes = int(sum(a.nbytes for a in arrays.values()))
    return ImageData(
        x_train=arrays["train"], y_train=labels["train"], x_val=arrays["val"], y_val=labels["val"],
        x_test=arrays["test"], y_test=labels["test"], class_names=list(source.class_names), mean=mean, std=std,
        name=cfg.name, key=f"{cfg.name}:{content.hexdigest()[:32]}",
        indices=indices, skipped=stats.skipped + source.skipped, by_path=by_path, stats=stats,
        value_range=source.value_range)
