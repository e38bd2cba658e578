"""scikit-learn's 1,797 8x8 handwritten digits: real images that ship with scikit-learn, no download."""
from __future__ import annotations

import numpy as np

from tuner.data.base import Source, SplitSource, register_reader


@register_reader("digits")
def read_digits(cfg) -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 grey levels -> 0..255 uint8, one channel, so digits go through the same path as photos
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Source(class_names=[str(c) for c in d.target_names],
                  train=SplitSource(images=images, labels=d.target.astype(np.int64)), value_range=(0, 16))
