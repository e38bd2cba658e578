"""scikit-learn's 1,797 8x8 handwritten digits: real images that ship with scikit-learn, no download."""
from __future__ import annotations

import contextlib
import zipfile
from importlib.metadata import version

import numpy as np

from tuner.atomic import writing
from tuner.data.base import Source, SplitSource, register_reader
from tuner.settings import cache_dir


@register_reader("digits")
def read_digits(cfg) -> Source:
    images, labels = _digits()
    # 0..16 grey levels -> 0..255 uint8, one channel, so digits go through the same path as photos
    images = np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Source(class_names=[str(c) for c in range(10)],
                  train=SplitSource(images=images, labels=labels.astype(np.int64)), value_range=(0, 16))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """load_digits()'s images (0..16) and labels, kept in tuner's cache after the first read: importing
    sklearn.datasets took 0.85 s of every search's start on digits. Keyed by scikit-learn's version, the
    package that ships them; a cache that cannot be written or read is only slower."""
    f = cache_dir() / "datasets" / f"digits-scikit-learn-{version('scikit-learn')}.npz"
    with contextlib.suppress(OSError, ValueError, KeyError, zipfile.BadZipFile), np.load(f) as saved:
        return saved["images"], saved["labels"]
    from sklearn.datasets import load_digits

    d = load_digits()
    with contextlib.suppress(OSError):
        f.parent.mkdir(parents=True, exist_ok=True)
        with writing(f) as tmp:
            np.savez(tmp, images=d.images, labels=d.target)
    return d.images, d.target
