"""What a data-set reader returns, and what every trial receives.

Readers (one module per on-disk format) only find images and labels; `tuner.data.prepare` decodes
and resizes them once, splits them, and hands one `ImageData` of uint8 arrays to every trial. Its arrays
are memory maps of files in the cache, and it pickles as their paths: Ray's object store carries a few
hundred bytes, and every trial on the machine maps the same pages (the OS keeps one copy, or reads from
disk what does not fit). For trials on other machines (`by_path=False`) the arrays themselves travel,
through the object store, which shares them between the trials of a node without copying.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tuner.errors import UserError
from tuner.types import DataInfo

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SplitSource:
    """Images of one split as found on disk: each item an HWC uint8 array, a PIL image, a file path or the
    encoded bytes of one image (TFRecords). An `np.ndarray` of images is taken as already decoded."""

    images: Sequence[Any] | np.ndarray
    labels: np.ndarray


@dataclass
class Source:
    """A reader's answer: class names and the splits the data set ships with (train always)."""

    class_names: list[str]
    train: SplitSource
    test: SplitSource | None = None   # the data set's official test split, if it has one
    val: SplitSource | None = None    # an official validation split (image folders with val/)
    skipped: int = 0                  # files the reader passed over (non-image ones and those below)
    skipped_why: dict[str, int] = field(default_factory=dict)  # e.g. {"duplicate": 2}: part of `skipped`
    value_range: tuple[float, float] = (0, 255)  # the pixel values as the data set gives them (digits: 0-16)


@dataclass
class PrepareStats:
    """What `prepare` did (benchmarks and run.json read it)."""

    seconds: float = 0.0     # all of prepare: read, split, decode, parts, normalisation
    decode_s: float = 0.0    # of which decoding (0 when every image came from the cache)
    decoded: int = 0         # images decoded now
    skipped: int = 0         # images that did not decode
    nbytes: int = 0          # bytes of the train, val and test images


@dataclass(frozen=True)
class Mapped:
    """A memory-mapped .npy file, pickled by its path (see `ImageData.__getstate__`)."""

    path: str

    def open(self) -> np.ndarray:
        arr = _MAPS.get(self.path)
        if arr is None:  # once per process while one is alive: a reused trial actor maps it once
            arr = np.load(self.path, mmap_mode="r")
            _MAPS[self.path] = arr
        return arr


_MAPS: "weakref.WeakValueDictionary[str, np.ndarray]" = weakref.WeakValueDictionary()


def whole_file(a: np.ndarray) -> Mapped | None:
    """The file `a` maps when `a` is all of a .npy file (not a slice or a view of one), else None."""
    name = getattr(a, "filename", None)
    if not isinstance(a, np.memmap) or not name or not a.flags.c_contiguous:
        return None
    try:
        with open(name, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError):
        return None
    return Mapped(str(name)) if (shape, dtype, fortran, offset) == (a.shape, a.dtype, False, a.offset) else None


ARRAYS = ("x_train", "x_val", "x_test")


@dataclass
class ImageData:
    """Decoded, resized, split images as uint8 NHWC arrays, plus what it takes to normalise them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    key: str = ""                     # a hash of the decoded images, splits and labels (for feature caches)
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: int = 0                  # unreadable or non-image files left out
    value_range: tuple[float, float] = (0, 255)  # the source's pixel values (Source.value_range); the arrays are 0-255
    by_path: bool = True              # pickle memory-mapped arrays as their paths (trials on this machine)
    stats: PrepareStats = field(default_factory=PrepareStats)

    def __getstate__(self) -> dict:
        """What Ray's object store gets: a memory-mapped array as its file's path (`by_path`), or the array
        itself as a plain ndarray view (numpy pickles a memmap subclass in-band, a copy; a plain view goes
        out of band, straight from the pages into the store)."""
        state = dict(self.__dict__)
        for k in ARRAYS:
            a = state[k]
            if isinstance(a, np.memmap):
                state[k] = (self.by_path and whole_file(a)) or np.asarray(a).view(np.ndarray)
        return state

    def __setstate__(self, state: dict) -> None:
        for k in ARRAYS:
            if isinstance(state[k], Mapped):
                state[k] = state[k].open()
        self.__dict__.update(state)

    @property
    def info(self) -> DataInfo:
        n, h, w, c = self.x_train.shape
        return DataInfo(num_classes=len(self.class_names), channels=c, height=h, width=w, mean=tuple(self.mean),
                        std=tuple(self.std))

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


READERS: dict[str, Callable[..., Source]] = {}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def find_root(cfg, *names: str) -> Path | None:
    """The first of root/name, ... that exists (users point root at the folder or at its parent)."""
    root = Path(cfg.root).expanduser()
    for name in names:
        p = root / name if name else root
        if p.exists():
            return p
    return None


def missing(cfg, what: str, download: bool) -> UserError:
    """The one error for a data set that is not where dataset.root says."""
    hint = " or set dataset.download: true to fetch it" if download and not cfg.download else ""
    return UserError(f"dataset.root {cfg.root}: no {cfg.name} data there; put {what}{hint}")


def register_reader(name: str):
    def add(fn):
        if name in READERS:
            raise ValueError(f"reader {name!r} registered twice")
        READERS[name] = fn
        return fn
    return add


def get_reader(name: str) -> Callable[..., Source]:
    try:
        return READERS[name]
    except KeyError:
        known = ", ".join(sorted(READERS))
        raise UserError(f"dataset.name: unknown data set {name!r}; choose one of {known}") from None


def normalization(preset: str, x_train: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units for a preset; `dataset` is measured on the training split."""
    c = x_train.shape[-1]
    if preset == "imagenet":
        if c == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return (float(np.mean(IMAGENET_MEAN)),) * c, (float(np.mean(IMAGENET_STD)),) * c
    if preset == "half":
        return (0.5,) * c, (0.5,) * c
    if preset == "none":
        return (0.0,) * c, (1.0,) * c
    # dataset: exact integer sums in chunks of about 32 MB, so a memory-mapped cache is never loaded whole
    # and no float copy of it is made (float64 chunks of 4,096 images took 10 GB at 224 px)
    n, h, w = x_train.shape[:3]
    total, total_sq = np.zeros(c), np.zeros(c)
    step = max(1, (32 << 20) // max(1, h * w * c))
    for start in range(0, n, step):
        rows = np.asarray(x_train[start:start + step]).reshape(-1, w * c)  # image rows: a wide, fast reduction
        total += rows.sum(0, dtype=np.uint64).reshape(w, c).sum(0)
        sq = rows.astype(np.uint16)
        np.multiply(sq, sq, out=sq)  # 255^2 fits 16 bits
        total_sq += sq.sum(0, dtype=np.uint64).reshape(w, c).sum(0)
    count = max(n * h * w, 1)
    mean = total / count / 255.0
    std = np.sqrt(np.maximum(total_sq / count / 255.0 ** 2 - mean ** 2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)
