"""The decode-once cache: every image decoded and resized once into a memory-mapped uint8 array on disk.

One cache entry is one split as the data set ships it (train, val or test of the reader), at one
image size, keyed by data set, root, size, split and a fingerprint of the files (names, sizes, mtimes),
so a changed folder is decoded again and everything else is reused: by every trial, by the retrain,
and by a second experiment on the same data with other split fractions or seeds.

    <cache_dir>/images/<key>/images.npy   N x H x W x C uint8 (np.load(mmap_mode="r"))
                             valid.npy    N bools: False where the file could not be decoded
                             meta.json    what the key was made of, for people looking at the folder

Entries are written to a temporary folder and renamed into place under a file lock, so concurrent
experiments wait for the first instead of decoding twice, and a killed build leaves nothing half-done.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CHUNK = 64          # images per decode task: big enough to amortise the thread hand-off
MAX_DEFAULT = 224   # image_size when the config gives none and the files are larger


def _open(item):
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        return Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(item)))
    return Image.open(item)


def _to_array(item, size: int, channels: int) -> np.ndarray:
    """Decode one image to size x size x channels uint8 (squashed, as the export's predict does)."""
    from PIL import Image

    img = _open(item)
    if getattr(img, "format", None) == "JPEG":  # let libjpeg decode at 1/2, 1/4, 1/8 scale when that suffices
        img.draft("L" if channels == 1 else "RGB", (size, size))
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _decode_chunk(items: list, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(items), size, size, channels), dtype=np.uint8)
    ok = np.ones(len(items), dtype=bool)
    for j, item in enumerate(items):
        try:
            out[j] = _to_array(item, size, channels)
        except Exception:  # noqa: BLE001 - any file PIL cannot read is skipped and counted, not fatal
            ok[j] = False
    return out, ok


def _fingerprint(images) -> str:
    """Cheap identity of a split's contents: file names, sizes and mtimes; or array shape and a sample."""
    h = hashlib.sha1()
    if isinstance(images, np.ndarray):
        h.update(str(images.shape).encode())
        h.update(np.ascontiguousarray(images[:: max(1, len(images) // 64)]).tobytes())
        return h.hexdigest()
    h.update(str(len(images)).encode())
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            try:
                st = os.stat(item)
                h.update(f"{item}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{item}|missing\n".encode())
        elif isinstance(item, (bytes, bytearray, memoryview)):
            h.update(len(item).to_bytes(8, "little"))
            h.update(bytes(item[-64:]))
        else:
            h.update(repr(type(item)).encode())
    return h.hexdigest()


def default_size(images) -> int:
    """No image_size given: the first readable image's longer side, at most 224."""
    for item in list(images[:16]):
        try:
            return min(MAX_DEFAULT, max(_open(item).size))
        except Exception:  # noqa: BLE001
            continue
    return MAX_DEFAULT


def _build(folder: Path, images, needed: np.ndarray, size: int, channels: int, meta: dict, label: str,
           progress: bool) -> None:
    from tqdm import tqdm

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                    shape=(len(needed), size, size, channels))
    valid = np.ones(len(needed), dtype=bool)
    chunks = [needed[s:s + CHUNK] for s in range(0, len(needed), CHUNK)]
    # PIL releases the GIL while decoding and resizing, so threads use every core without pickling images
    workers = max(1, min(8, os.cpu_count() or 1))
    bar = tqdm(total=len(needed), desc=f"decoding {label}", unit="img", disable=not progress, file=sys.stderr,
               mininterval=0.5, leave=True)
    start = 0
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(lambda c: _decode_chunk([images[i] for i in c], size, channels), chunks)
        for arr, ok in jobs:
            out[start:start + len(arr)] = arr
            valid[start:start + len(arr)] = ok
            start += len(arr)
            bar.update(len(arr))
    bar.close()
    out.flush()
    del out
    np.save(tmp / "valid.npy", valid)
    (tmp / "meta.json").write_text(json.dumps(meta | {"count": int(len(needed)), "invalid": int((~valid).sum())},
                                              indent=1))
    os.replace(tmp, folder)


def decode_split(cfg, split: str, src, needed: np.ndarray, cache_dir=None, progress: bool = True,
                 size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images `needed` (sorted indices into `src.images`) as N x size x size x C uint8, and a mask of the
    ones that decoded. Arrays at their native size pass straight through; everything else is decoded
    once into the cache (or into memory when there is no cache_dir)."""
    images = src.images
    needed = np.asarray(needed, dtype=np.int64)
    if isinstance(images, np.ndarray):
        channels = images.shape[-1]
        if size is None or images.shape[1:3] == (size, size):
            arr = images if len(needed) == len(images) else np.ascontiguousarray(images[needed])
            return arr, np.ones(len(needed), dtype=bool)
    else:
        channels = 3  # photos decode to RGB; the models take 3 channels (grey files are repeated)
    size = size or default_size(images)
    label = f"{cfg.name} {split} at {size}px"
    if cache_dir is None:
        out = np.zeros((len(needed), size, size, channels), dtype=np.uint8)
        valid = np.ones(len(needed), dtype=bool)
        for s in range(0, len(needed), CHUNK):
            out[s:s + CHUNK], valid[s:s + CHUNK] = _decode_chunk([images[i] for i in needed[s:s + CHUNK]],
                                                                 size, channels)
        return out, valid

    from filelock import FileLock

    meta = {"dataset": cfg.name, "root": str(Path(cfg.root).expanduser().resolve()) if cfg.root else None,
            "size": size, "channels": channels, "split": split, "fingerprint": _fingerprint(images)}
    key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
    base = Path(cache_dir) / "images"
    base.mkdir(parents=True, exist_ok=True)
    full = base / key
    everything = np.arange(len(images))
    if not (full / "valid.npy").is_file() and len(needed) < len(images):
        # a subset (--smoke, dataset.limit) gets its own small entry instead of decoding all of a big set;
        # a full entry, when one exists, serves subsets too
        sub = hashlib.sha1(needed.tobytes()).hexdigest()[:12]
        folder, rows, meta = base / f"{key}-{sub}", needed, meta | {"subset": sub}
    else:
        folder, rows = full, everything
    with FileLock(str(folder) + ".lock"):
        if not (folder / "valid.npy").is_file():
            _build(folder, images, rows, size, channels, meta, label, progress)
    arr = np.load(folder / "images.npy", mmap_mode="r")
    valid = np.load(folder / "valid.npy")
    if rows is everything and len(needed) < len(images):
        return np.ascontiguousarray(arr[needed]), valid[needed]
    return arr, valid  # the whole entry: stays memory-mapped, pages come from the OS cache
