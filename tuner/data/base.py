"""What a data-set reader returns, and what every trial receives.

Readers (one module per on-disk format) only find images and labels; `tuner.data.prepare` decodes
and resizes them once, splits them, and hands one `ImageData` of uint8 arrays to every trial (through
Ray's object store, which shares numpy arrays between the trials of a node without copying).
"""
from __future__ import annotations

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
    # dataset: one pass in chunks so a memory-mapped cache is never loaded whole
    total = np.zeros(c)
    total_sq = np.zeros(c)
    n = 0
    for start in range(0, len(x_train), 4096):
        chunk = x_train[start:start + 4096].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        total_sq += (chunk ** 2).sum(axis=(0, 1, 2))
        n += chunk.shape[0] * chunk.shape[1] * chunk.shape[2]
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(total_sq / max(n, 1) - mean ** 2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)
