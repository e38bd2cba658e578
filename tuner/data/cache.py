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
    <cache_dir>/images/parts/<hash>.npy   a part of the search (train, val or test) that is not one whole
                                          entry: its rows, end to end (`gather`), keyed by entry and rows

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuner.errors import UserError
from tuner.bounds import MAX_IMAGE_SIZE

CHUNK = 64            # images per decode task: big enough to amortise the thread hand-off
MAX_DEFAULT = 224     # image_size when the config gives none and the files are larger
VERSION = 5           # bump when decoding changes what an image becomes, so old entries are not reused
                      # (3: EXIF orientation applied; 5: torch's bilinear resize, within 1 level of PIL's)


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
    from PIL import ImageOps

    img = _open(item)
    if getattr(img, "format", None) == "JPEG":  # let libjpeg decode at 1/2, 1/4, 1/8 scale when that suffices
        img.draft("L" if channels == 1 else "RGB", (size, size))
    # upright as a viewer shows it: a phone stores a portrait photo landscape with an EXIF Orientation tag
    if img.getexif().get(0x0112, 1) != 1:  # (exif_transpose copies every image, turned or not)
        img = ImageOps.exif_transpose(img)
    img = convert(img, "L" if channels == 1 else "RGB")
    if img.size == (size, size):
        arr = np.asarray(img, dtype=np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr
    return resize(img, size)


def resize(img, size: int) -> np.ndarray:
    """An L or RGB PIL image -> size x size x channels uint8, bilinear and antialiased: PIL's BILINEAR resize
    within one grey level (two at most, in a few pixels), by torch's uint8 kernel, which is 2-2.5x faster
    than PIL's here (0.35 against 0.88 ms for a Cars photo drafted to about 440 x 330: a fifth of a decode)."""
    import torch
    import torch.nn.functional as F

    c = 1 if img.mode == "L" else 3
    w, h = img.size
    # PIL's bytes in a writable buffer: torch warns at a read-only one
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, h, w, c).permute(0, 3, 1, 2)
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def decode_chunk_into(out: np.ndarray, ok: np.ndarray, items: list, size: int, channels: int) -> None:
    """Decode `items` into the rows of `out` (a slice of the entry, so nothing is copied twice); `ok` is
    False where a file could not be decoded."""
    for j, item in enumerate(items):
        try:
            out[j] = to_array(item, size, channels)
        except Exception:  # noqa: BLE001 - any file PIL cannot read is skipped and counted, not fatal
            out[j] = 0
            ok[j] = False


def decode_chunk(items: list, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(items), size, size, channels), dtype=np.uint8)
    ok = np.ones(len(items), dtype=bool)
    decode_chunk_into(out, ok, items, size, channels)
    return out, ok


def _chunk_digest(block: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(block).data).digest()


def _combine(shape: tuple, digests: list[bytes], valid: np.ndarray | None) -> str:
    h = hashlib.sha256(str(tuple(shape)).encode())
    for d in digests:
        h.update(d)
    if valid is not None:
        h.update(np.asarray(valid, dtype=bool).tobytes())
    return h.hexdigest()


def content_hash(arr: np.ndarray, valid: np.ndarray | None = None) -> str:
    """Hash of decoded pixels (and which decoded): the sha256 of each CHUNK images' sha256. The decode
    threads hash each chunk as they write it (`_decode_into`), so building an entry needs no second pass
    over it; here, a memory-mapped entry is read a chunk at a time, never loaded whole."""
    return _combine(arr.shape, [_chunk_digest(arr[s:s + CHUNK]) for s in range(0, len(arr), CHUNK)], valid)


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


def check_memory(needed: int, free: int | None = None, cluster: bool = False) -> None:
    """Images held in memory (no cache folder, or sent to trials on other machines through Ray's object
    store): refuse before decoding when they cannot fit in what is free. On one machine with a cache they
    are memory-mapped instead, and need not fit (`tuner.data.prepare`)."""
    free = available_memory() if free is None else free
    if needed > free:
        where = (" (trials on a cluster get them through Ray's object store)" if cluster else "")
        other = ", or search on one machine (no --address), which reads them from the cache" if cluster else ""
        raise UserError(f"dataset.image_size: the decoded images need {_gb(needed)} of memory, {_gb(free)} "
                        f"available{where}: lower dataset.image_size or set dataset.limit{other}")


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
                 label: str, progress: bool) -> list[bytes]:
    """Decode images[rows] into `out` (and `valid`), CHUNK at a time in threads; the chunks' digests, in order."""
    from tuner.progress import bar as progress_bar

    # PIL and torch release the GIL while decoding and resizing (and hashlib while hashing), so threads use
    # every core without pickling images; each writes its chunk straight into the entry and hashes it there.
    # One thread more than cores: while one waits for the kernel (a file read, a page of the entry), another
    # decodes (the Cars-sized set on 2 cores: 3 threads about 3 % faster than 2; 4 and 5 no faster than 3)
    workers = max(1, min(8, (os.cpu_count() or 1) + 1))
    bar = progress_bar(len(rows), f"decoding {label}", progress)

    def work(start: int) -> bytes:
        end = min(start + CHUNK, len(rows))
        decode_chunk_into(out[start:end], valid[start:end], [images[i] for i in rows[start:end]], size, channels)
        return _chunk_digest(out[start:end])

    digests = []
    with ThreadPoolExecutor(workers) as pool, bar:  # the bar closed on Ctrl-C too: the next line starts clean
        for start, digest in zip(range(0, len(rows), CHUNK), pool.map(work, range(0, len(rows), CHUNK))):
            digests.append(digest)
            bar.update(min(CHUNK, len(rows) - start))
    return digests


def _build(e: Entry, folder: Path, images, progress: bool) -> None:
    """Decode entry `e` into `folder` (its folder on disk)."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:  # built in a folder beside it, then moved into place: whole or not at all, as tuner.atomic
        out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(e.rows), e.size, e.size, e.channels))
        valid = np.ones(len(e.rows), dtype=bool)
        content = _combine(out.shape, _decode_into(out, valid, images, e.rows, e.size, e.channels, e.label,
                                                   progress), valid)
        out.flush()
        del out
        np.save(tmp / "valid.npy", valid)
        (tmp / "meta.json").write_text(json.dumps(e.meta | {"count": int(len(e.rows)),
                                                            "invalid": int((~valid).sum()), "content": content},
                                                  indent=1))
        os.replace(tmp, folder)
    except BaseException:  # a full disk, Ctrl-C: no half-built folder stays to fill the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Decoded:
    """One shipped split's images as decoded: `arr` (a memory map of the cache entry, or an array in memory)
    holds the images asked for at rows `pos`, `ok` says which of them decoded, `digest` hashes `arr`."""

    arr: np.ndarray
    pos: np.ndarray
    ok: np.ndarray
    digest: str
    folder: Path | None = None   # the cache entry's folder (None: in memory)


def decode_split(cfg, split: str, src, needed: np.ndarray, cache_dir=None, progress: bool = True,
                 size: int | None = None) -> Decoded:
    """Images `needed` (sorted indices into `src.images`) as N x size x size x C uint8 rows of one array, a
    mask of the ones that decoded, and a hash of what the array holds. Arrays at their native size pass
    straight through; everything else is decoded once into the cache (or into memory when there is no
    cache_dir). Nothing is copied here: a full entry serves a subset by its row numbers.
    The caller checks the space first (`plan(...).nbytes`, `check_space`)."""
    images = src.images
    needed = np.asarray(needed, dtype=np.int64)
    e = plan(cfg, split, src, needed, cache_dir, size)
    if e is None:
        return Decoded(images, needed, np.ones(len(needed), dtype=bool), content_hash(images))
    if e.folder is None:
        out = np.zeros((len(needed), e.size, e.size, e.channels), dtype=np.uint8)
        valid = np.ones(len(needed), dtype=bool)
        digests = _decode_into(out, valid, images, needed, e.size, e.channels, e.label, progress)
        return Decoded(out, np.arange(len(needed)), valid, _combine(out.shape, digests, valid))

    from filelock import FileLock

    e.folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(e.folder) + ".lock"):
        if not e.built:
            _build(e, e.folder, images, progress)
    arr = np.load(e.folder / "images.npy", mmap_mode="r")
    valid = np.load(e.folder / "valid.npy")
    try:
        content = json.loads((e.folder / "meta.json").read_text())["content"]
    except (OSError, ValueError, KeyError):  # an entry someone edited by hand: hash what is there
        content = content_hash(arr, valid)
    pos = np.searchsorted(e.rows, needed)  # a full entry holds every image; a subset entry exactly these
    return Decoded(arr, pos, valid[pos], content, e.folder)


def part_file(cache_dir, pieces: list[tuple[str, np.ndarray]]) -> Path:
    """Where one part's images (train, val or test) lie end to end when they are not one whole entry: keyed
    by the entries they come from (folder names, which say which files at which size) and the rows taken."""
    h = hashlib.sha256()
    for name, rows in pieces:
        h.update(f"{name}|{len(rows)}|".encode())
        h.update(np.asarray(rows, dtype=np.int64).tobytes())
    return Path(cache_dir) / "images" / "parts" / f"{h.hexdigest()[:24]}.npy"


def gather(f: Path, pieces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Rows `pos` of each array, end to end, in the .npy file `f`: written once (file-locked, renamed into
    place), then memory-mapped. So a split carved out of an entry (val out of train) is one file every
    trial maps, as a whole entry is, instead of a copy in each process's memory. Copied 64 MB at a time."""
    from filelock import FileLock

    f.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(f) + ".lock"):
        if not f.is_file():
            first = pieces[0][0]
            tmp = f.with_name(f".{f.stem}.{os.getpid()}.npy")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype,
                                            shape=(sum(len(p) for _, p in pieces), *first.shape[1:]))
            at = 0
            for arr, pos in pieces:
                step = max(1, (64 << 20) // max(1, int(np.prod(arr.shape[1:])) * arr.itemsize))
                for s in range(0, len(pos), step):
                    rows = pos[s:s + step]
                    out[at:at + len(rows)] = arr[rows]
                    at += len(rows)
            out.flush()
            del out
            os.replace(tmp, f)
    return np.load(f, mmap_mode="r")
