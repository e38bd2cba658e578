"""`imagefolder`: any folder of class sub-folders of images, as torchvision's ImageFolder reads it.

    root/cat/1.jpg, root/dog/2.png, ...                       one pool, split by dataset.split fractions
    root/train/cat/1.jpg, root/val/..., root/test/...         the data set's own splits (split.test: official)

Files whose extension is not an image one are skipped and counted (hidden files are ignored); files
that have an image extension but do not decode are dropped later, by the cache, and counted too.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tuner.data.base import IMAGE_EXTENSIONS, Source, SplitSource, register_reader
from tuner.errors import UserError

SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _files(folder: Path) -> tuple[list[str], int]:
    """Image files under one class folder (recursively, sorted), and how many other files there were."""
    found, other = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, name))
            else:
                other += 1
    return found, other


def split_dirs(root: Path) -> dict[str, Path]:
    """train/, val/, test/ (or their common spellings) when the folder is already split."""
    out = {}
    for split, names in SPLIT_DIRS.items():
        for name in names:
            if (root / name).is_dir():
                out[split] = root / name
                break
    return out if "train" in out else {}


def read_class_folders(root: Path, key: str = "dataset.root") -> Source:
    """Class folders, or train/ val/ test/ each holding the same class folders."""
    if not root.is_dir():
        raise UserError(f"{key} {root}: no such folder; put the images there in one folder per class "
                        f"(e.g. {root}/cat/1.jpg, {root}/dog/2.jpg)")
    splits = split_dirs(root) or {"train": root}
    names = sorted({d.name for folder in splits.values() for d in _class_dirs(folder)})
    if not names:
        where = ", ".join(f"{p}/" for p in splits.values())
        raise UserError(f"{key} {root}: no class sub-folders in {where}; put the images in one folder per class "
                        f"(e.g. {root}/cat/1.jpg, {root}/dog/2.jpg)")
    index = {n: i for i, n in enumerate(names)}
    skipped = 0
    out: dict[str, SplitSource] = {}
    for split, folder in splits.items():
        paths, labels = [], []
        for d in _class_dirs(folder):
            files, other = _files(d)
            skipped += other
            paths += files
            labels += [index[d.name]] * len(files)
        out[split] = SplitSource(images=paths, labels=np.asarray(labels, dtype=np.int64))
    return Source(class_names=names, train=out["train"], val=out.get("val"), test=out.get("test"), skipped=skipped)


@register_reader("imagefolder")
def read_imagefolder(cfg) -> Source:
    if not cfg.root:
        raise UserError("dataset.root: imagefolder cannot be downloaded; set dataset.root to a folder with one "
                        "sub-folder of images per class")
    return read_class_folders(Path(cfg.root).expanduser())
