"""The decode-once cache: every image decoded and resized once into a memory-mapped uint8 array on disk.

One cache entry is one split as the data set ships it (train, val or test of the reader), at one
image size, keyed by data set, root, size, split, the decoder's version and a fingerprint of the files
(names, sizes, nanosecond mtimes, inodes and ctimes: a file replaced by another of the same size and
mtime still has a new inode or ctime), so a changed folder is decoded again and everything else is
reused: by every trial, by the retrain, and by a second experiment on the same data with other split
fractions or seeds. Each entry also records a hash of its decoded pixels (`content`), which is what
the caches downstream (embeddings, neighbour tables) are keyed by: they follow the data, not its path.

    <cache_dir>/images/<key>/images.npy   N x H x W x C uint8 (np.load(mmap_mode="r"))
                             valid.npy    N bools: False where the file could not be decoded
                             meta.json    what the key was made of, and the content hash

Entries are written to a temporary folder and renamed into place under a file lock, so concurrent
experiments wait for the first instead of decoding twice, and a killed build leaves nothing half-done.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuner.errors import UserError
from tuner.bounds import MAX_IMAGE_SIZE

CHUNK = 64            # images per decode task: big enough to amortise the thread hand-off
MAX_DEFAULT = 224     # image_size when the config gives none and the files are larger
VERSION = 3           # bump when decoding changes what an image becomes, so old entries are not reused
                      # (3: EXIF orientation applied)


def _open(item):
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        return Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(item)))
    if not stat.S_ISREG(os.stat(item).st_mode):  # a named pipe would block open() forever
        raise ValueError(f"{item} is not a regular file")
    return Image.open(item)


def convert(img, mode: str):
    """A PIL image of any mode -> 8-bit `mode` (L or RGB). PIL's own convert clips 16- and 32-bit grey to
    255 (a 16-bit PNG became all white), so those are scaled here: I;16* by 1/257, I the same when its
    values fit 16 bits (0..255 taken as 8-bit already); floats and other I ranges are ambiguous and
    refused (the caller skips and counts the file). Alpha is dropped, as torchvision's loader does."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.int64)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"{img.mode} image with values {lo}..{hi}: not 8- or 16-bit")
        if img.mode.startswith("I;16") or hi > 255:
            a = (a * 255 + 32767) // 65535  # round(a / 257): 65535 -> 255, 0 -> 0
        img = Image.fromarray(a.astype(np.uint8))
    elif img.mode == "F":
        raise ValueError("floating-point image: its range is unknown")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a palette image with transparency goes straight to RGB
    return img if img.mode == mode else img.convert(mode)


def to_array(item, size: int, channels: int) -> np.ndarray:
    """Decode one image to size x size x channels uint8 (squashed, as the export's predict does)."""
    from PIL import Image, ImageOps

    img = _open(item)
    if getattr(img, "format", None) == "JPEG":  # let libjpeg decode at 1/2, 1/4, 1/8 scale when that suffices
        img.draft("L" if channels == 1 else "RGB", (size, size))
    # upright as a viewer shows it: a phone stores a portrait photo landscape with an EXIF Orientation tag
    if img.getexif().get(0x0112, 1) != 1:  # (exif_transpose copies every image, turned or not)
        img = ImageOps.exif_transpose(img)
    img = convert(img, "L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_chunk(items: list, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(items), size, size, channels), dtype=np.uint8)
    ok = np.ones(len(items), dtype=bool)
    for j, item in enumerate(items):
        try:
            out[j] = to_array(item, size, channels)
        except Exception:  # noqa: BLE001 - any file PIL cannot read is skipped and counted, not fatal
            ok[j] = False
    return out, ok


def content_hash(arr: np.ndarray, valid: np.ndarray | None = None) -> str:
    """Hash of decoded pixels (and which decoded), in chunks so a memory-mapped entry is never loaded whole."""
    h = hashlib.sha256(str(arr.shape).encode())
    for s in range(0, len(arr), 1024):
        h.update(np.ascontiguousarray(arr[s:s + 1024]).data)
    if valid is not None:
        h.update(np.asarray(valid, dtype=bool).tobytes())
    return h.hexdigest()


def _fingerprint(images) -> str:
    """Cheap identity of a split's files: names, sizes, ns mtimes, inodes and ctimes (a replaced file gets a
    new inode or ctime even when cp -p / rsync -t keep its size and mtime); arrays are hashed whole."""
    h = hashlib.sha1()
    if isinstance(images, np.ndarray):
        return content_hash(images)
    h.update(str(len(images)).encode())
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            try:
                st = os.stat(item)
                h.update(f"{item}|{st.st_size}|{st.st_mtime_ns}|{st.st_dev}:{st.st_ino}|{st.st_ctime_ns}\n".encode())
            except OSError:
                h.update(f"{item}|missing\n".encode())
        elif isinstance(item, (bytes, bytearray, memoryview)):
            h.update(len(item).to_bytes(8, "little"))
            h.update(hashlib.sha256(item).digest())  # the whole encoded image: a sample misses edits
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


def check_image_size(size: int | None) -> None:
    if size is not None and not 1 <= int(size) <= MAX_IMAGE_SIZE:
        raise UserError(f"dataset.image_size: {size} is out of range; give 1 to {MAX_IMAGE_SIZE} pixels "
                        f"(224 is what ImageNet backbones were trained at)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def available_memory() -> int:
    """Bytes of memory the OS can give without swapping (MemAvailable), or free pages where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(needed: int, free: int | None = None) -> None:
    """The images a search uses are held in memory (the training, validation and test arrays, shared with
    the trials), with a cache folder too: refuse before decoding when they cannot fit in what is free."""
    free = available_memory() if free is None else free
    if needed > free:
        raise UserError(f"dataset.image_size: the decoded images need {_gb(needed)} of memory, {_gb(free)} "
                        f"available: lower dataset.image_size or set dataset.limit")


def check_space(needed: int, cache_dir, free: int | None = None) -> None:
    """Refuse to start decoding what cannot fit: `needed` bytes against the free disk under cache_dir
    (or, with no cache_dir, against free memory). `free` is the measured figure, read here when None."""
    if cache_dir is None:
        check_memory(needed, free)
        return
    where = Path(cache_dir)
    probe = next((q for q in (where, *where.parents) if q.exists()), Path("/"))
    free = shutil.disk_usage(probe).free if free is None else free
    if needed > free:
        raise UserError(f"dataset.image_size: the image cache needs {_gb(needed)}, {_gb(free)} free in {where}: "
                        f"set TUNER_CACHE to a folder on a larger disk or lower dataset.image_size")


@dataclass
class Entry:
    """Where one split's decoded images live (or would), and what building it takes."""

    folder: Path | None  # None: decode into memory
    rows: np.ndarray     # indices of src.images the entry holds
    meta: dict
    size: int
    channels: int
    label: str

    @property
    def built(self) -> bool:
        return self.folder is not None and (self.folder / "valid.npy").is_file()

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.size * self.size * self.channels


def plan(cfg, split: str, src, needed: np.ndarray, cache_dir=None, size: int | None = None) -> Entry | None:
    """The cache entry that serves `needed` images of one split; None when the arrays pass straight through."""
    check_image_size(size)
    images = src.images
    needed = np.asarray(needed, dtype=np.int64)
    if isinstance(images, np.ndarray):
        channels = images.shape[-1]
        if size is None or images.shape[1:3] == (size, size):
            return None
    else:
        channels = 3  # photos decode to RGB; the models take 3 channels (grey files are repeated)
    size = size or default_size(images)
    label = f"{cfg.name} {split} at {size}px"
    if cache_dir is None:
        return Entry(None, needed, {}, size, channels, label)
    meta = {"dataset": cfg.name, "root": str(Path(cfg.root).expanduser().resolve()) if cfg.root else None,
            "size": size, "channels": channels, "split": split, "version": VERSION,
            "fingerprint": _fingerprint(images)}
    key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
    base = Path(cache_dir) / "images"
    full = base / key
    if not (full / "valid.npy").is_file() and len(needed) < len(images):
        # a subset (--smoke, dataset.limit) gets its own small entry instead of decoding all of a big set;
        # a full entry, when one exists, serves subsets too
        sub = hashlib.sha1(needed.tobytes()).hexdigest()[:12]
        return Entry(base / f"{key}-{sub}", needed, meta | {"subset": sub}, size, channels, label)
    return Entry(full, np.arange(len(images)), meta, size, channels, label)


def _decode_into(out: np.ndarray, valid: np.ndarray, images, rows: np.ndarray, size: int, channels: int,
                 label: str, progress: bool) -> None:
    from tqdm import tqdm

    chunks = [rows[s:s + CHUNK] for s in range(0, len(rows), CHUNK)]
    # PIL releases the GIL while decoding and resizing, so threads use every core without pickling images
    workers = max(1, min(8, os.cpu_count() or 1))
    bar = tqdm(total=len(rows), desc=f"decoding {label}", unit="img", disable=not progress, file=sys.stderr,
               mininterval=0.5, leave=True)
    start = 0
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(lambda c: decode_chunk([images[i] for i in c], size, channels), chunks)
        for arr, ok in jobs:
            out[start:start + len(arr)] = arr
            valid[start:start + len(arr)] = ok
            start += len(arr)
            bar.update(len(arr))
    bar.close()


def _build(e: Entry, images, progress: bool) -> None:
    folder = e.folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:  # built in a folder beside it, then moved into place: whole or not at all, as tuner.atomic
        out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(e.rows), e.size, e.size, e.channels))
        valid = np.ones(len(e.rows), dtype=bool)
        _decode_into(out, valid, images, e.rows, e.size, e.channels, e.label, progress)
        out.flush()
        content = content_hash(out, valid)
        del out
        np.save(tmp / "valid.npy", valid)
        (tmp / "meta.json").write_text(json.dumps(e.meta | {"count": int(len(e.rows)),
                                                            "invalid": int((~valid).sum()), "content": content},
                                                  indent=1))
        os.replace(tmp, folder)
    except BaseException:  # a full disk, Ctrl-C: no half-built folder stays to fill the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def decode_split(cfg, split: str, src, needed: np.ndarray, cache_dir=None, progress: bool = True,
                 size: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Images `needed` (sorted indices into `src.images`) as N x size x size x C uint8, a mask of the
    ones that decoded, and a hash of what they hold. Arrays at their native size pass straight through;
    everything else is decoded once into the cache (or into memory when there is no cache_dir).
    The caller checks the space first (`plan(...).nbytes`, `check_space`)."""
    images = src.images
    needed = np.asarray(needed, dtype=np.int64)
    e = plan(cfg, split, src, needed, cache_dir, size)
    if e is None:
        arr = images if len(needed) == len(images) else np.ascontiguousarray(images[needed])
        return arr, np.ones(len(needed), dtype=bool), content_hash(arr)
    if e.folder is None:
        out = np.zeros((len(needed), e.size, e.size, e.channels), dtype=np.uint8)
        valid = np.ones(len(needed), dtype=bool)
        _decode_into(out, valid, images, needed, e.size, e.channels, e.label, progress)
        return out, valid, content_hash(out, valid)

    from filelock import FileLock

    e.folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(e.folder) + ".lock"):
        if not e.built:
            _build(e, images, progress)
    arr = np.load(e.folder / "images.npy", mmap_mode="r")
    valid = np.load(e.folder / "valid.npy")
    try:
        content = json.loads((e.folder / "meta.json").read_text())["content"]
    except (OSError, ValueError, KeyError):  # an entry someone edited by hand: hash what is there
        content = content_hash(arr, valid)
    if len(e.rows) == len(images) and len(needed) < len(images):
        sub = hashlib.sha256(needed.tobytes()).hexdigest()
        return np.ascontiguousarray(arr[needed]), valid[needed], hashlib.sha256(f"{content}|{sub}".encode()).hexdigest()
    return arr, valid, content  # the whole entry: stays memory-mapped, pages come from the OS cache
