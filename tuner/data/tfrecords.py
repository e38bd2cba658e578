"""`flowers104`: Kaggle's "Petals to the Metal" TFRecords, read without TensorFlow (the `tfrecord` package).

    root/tfrecords-jpeg-224x224/train/*.tfrec   image (JPEG bytes), class (int64), id (string)
                               /val/*.tfrec     the same, labelled
                               /test/*.tfrec    image and id only: unlabelled (the competition's), not used
    (also 192x192, 331x331, 512x512; root may also be one of these folders)

The competition's test set has no labels, so its labelled `val` records are this data set's official
test split (split.test: official); validation is then taken from train by split.val.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tuner.data.base import Source, SplitSource, register_reader
from tuner.errors import UserError

LAYOUT = "the Kaggle folders (tfrecords-jpeg-224x224/train/*.tfrec and val/*.tfrec) in it"

# the competition's class order (label i is CLASSES[i])
CLASSES = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "wild geranium", "tiger lily",
    "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot", "king protea",
    "spear thistle", "yellow iris", "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
    "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william", "carnation",
    "garden phlox", "love in the mist", "cosmos", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barberton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "daisy", "common dandelion", "petunia", "wild pansy",
    "primula", "sunflower", "lilac hibiscus", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink-yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush",
    "californian poppy", "osteospermum", "spring crocus", "iris", "windflower", "tree poppy", "gazania", "azalea",
    "water lily", "rose", "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium",
    "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia", "cyclamen",
    "watercress", "canna lily", "hippeastrum", "bee balm", "pink quill", "foxglove", "bougainvillea", "camellia",
    "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily", "common tulip",
    "wild rose",
]


def _pick_folder(root: Path, size: int | None) -> Path | None:
    """The resolution folder to read: the smallest at least image_size, else the largest; 224 by default."""
    if (root / "train").is_dir():
        return root
    found = {}
    for d in root.glob("tfrecords-jpeg-*x*"):
        m = re.fullmatch(r"tfrecords-jpeg-(\d+)x(\d+)", d.name)
        if m and (d / "train").is_dir():
            found[int(m.group(1))] = d
    if not found:
        return None
    if size is None:
        return found.get(224) or found[max(found)]
    bigger = [s for s in found if s >= size]
    return found[min(bigger)] if bigger else found[max(found)]


def _read(files: list[Path]) -> tuple[list[bytes], np.ndarray]:
    from tfrecord.reader import tfrecord_loader

    images, labels = [], []
    for f in files:
        for rec in tfrecord_loader(str(f), None, {"image": "byte", "class": "int"}):
            images.append(bytes(rec["image"]))  # bytes, or a uint8 array in older versions of the package
            labels.append(int(np.asarray(rec["class"]).ravel()[0]))
    return images, np.asarray(labels, dtype=np.int64)


@register_reader("flowers104")
def read_flowers104(cfg) -> Source:
    if cfg.download:
        raise UserError("dataset.download: flowers104 is Kaggle competition data and cannot be downloaded here; "
                        f"set dataset.download: false and put {LAYOUT} in dataset.root")
    root = Path(cfg.root).expanduser()
    folder = _pick_folder(root, cfg.image_size) if root.is_dir() else None
    train_files = sorted((folder / "train").glob("*.tfrec")) if folder else []
    if folder is None or not train_files:
        raise UserError(f"dataset.root {cfg.root}: no flowers104 TFRecords there; put {LAYOUT}")
    x_train, y_train = _read(train_files)
    val_files = sorted((folder / "val").glob("*.tfrec")) if (folder / "val").is_dir() else []
    test = SplitSource(*_read(val_files)) if val_files else None
    top = int(max(y_train.max(initial=0), test.labels.max(initial=0) if test else 0))
    names = CLASSES if top < len(CLASSES) else CLASSES + [str(i) for i in range(len(CLASSES), top + 1)]
    return Source(class_names=list(names), train=SplitSource(x_train, y_train), test=test)
