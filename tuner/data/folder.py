"""`imagefolder`: any folder of class sub-folders of images, as torchvision's ImageFolder reads it.

    root/cat/1.jpg, root/dog/2.png, ...                       one pool, split by dataset.split fractions
    root/train/cat/1.jpg, root/val/..., root/test/...         the data set's own splits (split.test: official)

Files whose extension is not an image one are skipped and counted (hidden files are ignored); files
that have an image extension but do not decode are dropped later, by the cache, and counted too.
Each image file is read once: symlinks are resolved, and one that loops, leads out of the root, or
reaches a file (or folder) already found is skipped and counted, so no image lands in two splits;
named pipes, sockets and devices are skipped without being opened (opening a pipe waits forever).
"""
from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path

import numpy as np

from tuner.data.base import IMAGE_EXTENSIONS, Source, SplitSource, register_reader
from tuner.errors import UserError

SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


# a data folder shows an image within its first few thousand entries; a walk that has seen this many files
# and folders without one is not in a data folder (dataset.root: /usr walked the whole tree for a minute)
SCAN_WITHOUT_IMAGE = 20_000


class NotADataFolder(Exception):
    """The walk gave up: SCAN_WITHOUT_IMAGE entries and no image."""


LOOP_OR_OUTSIDE = "symlinks that loop or lead out of the folder"
DUPLICATE = "duplicates (the same file twice)"
NOT_REGULAR = "pipes, sockets or devices"
UNREADABLE_DIR = "folders that could not be listed"


class Walk:
    """Finds the image files under a root, each folder once whatever the symlinks; counts what it skips.
    `files` lists every way a file is reached; `once` then keeps one path per file."""

    def __init__(self, root: Path):
        self.root = os.path.realpath(root)
        self.seen_dirs: set[tuple[int, int]] = set()
        self.other = 0                  # non-image files
        self.why: Counter[str] = Counter()
        self.scanned = 0                # entries looked at before the first image (then it stops counting)

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def enter(self, folder: Path) -> bool:
        """Whether a folder is new and inside the root (then it is marked as walked)."""
        real = os.path.realpath(folder)
        try:
            st = os.stat(real)
        except OSError:  # a symlink loop (ELOOP) or a dangling link
            self.why[LOOP_OR_OUTSIDE] += 1
            return False
        if not self._inside(real):
            self.why[LOOP_OR_OUTSIDE] += 1
            return False
        if (st.st_dev, st.st_ino) in self.seen_dirs:
            # a link to `.` or to a parent folder is a loop; to a folder walked elsewhere, a duplicate
            parent = os.path.realpath(folder.parent)
            loop = parent == real or parent.startswith(real.rstrip(os.sep) + os.sep)
            self.why[LOOP_OR_OUTSIDE if loop else DUPLICATE] += 1
            return False
        self.seen_dirs.add((st.st_dev, st.st_ino))
        return True

    def files(self, folder: Path) -> list[tuple[str, tuple[int, int], bool]]:
        """Image files under one class folder (recursively, sorted by name): (path, (dev, inode), is a link)."""
        if not self.enter(folder):
            return []
        found = []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            self.why[UNREADABLE_DIR] += 1
            return []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if self.scanned >= 0:
                self.scanned += 1
                if self.scanned > SCAN_WITHOUT_IMAGE:
                    raise NotADataFolder
            path = Path(entry.path)
            try:
                st = os.stat(path)  # follows links without opening anything
            except OSError:
                self.why[LOOP_OR_OUTSIDE if os.path.islink(path) else NOT_REGULAR] += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                found += self.files(path)
            elif not stat.S_ISREG(st.st_mode):
                self.why[NOT_REGULAR] += 1
            elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                self.other += 1
            elif entry.is_symlink() and not self._inside(os.path.realpath(path)):
                self.why[LOOP_OR_OUTSIDE] += 1
            else:
                found.append((str(path), (st.st_dev, st.st_ino), entry.is_symlink()))
                self.scanned = -1  # an image: this is a data folder, walk it all
        return found

    def once(self, found: list[tuple[str, tuple[int, int], bool]]) -> list[bool]:
        """Which of `found` to keep: one path per file, where it lives (not a link to it) when it is listed
        there, else the first; so a link never moves an image to another class or split."""
        keep = [False] * len(found)
        winner: dict[tuple[int, int], int] = {}
        for i, (_, fid, link) in enumerate(found):
            if fid not in winner or (found[winner[fid]][2] and not link):
                winner[fid] = i
        for i in winner.values():
            keep[i] = True
        self.why[DUPLICATE] += len(found) - len(winner)
        return keep


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


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
    real = Path(os.path.realpath(root))
    if real == Path(real.anchor) or real == Path(os.path.realpath(Path.home())):
        raise UserError(f"{key} {root}: is the {'file-system root' if real == Path(real.anchor) else 'home folder'}, "
                        f"not a data folder; give the folder that holds one sub-folder of images per class")
    try:
        return _read_class_folders(root, key)
    except NotADataFolder:
        raise UserError(f"{key} {root}: no image among the first {SCAN_WITHOUT_IMAGE} files and folders under it; "
                        f"give the folder that holds one sub-folder of images per class "
                        f"(e.g. {root}/cat/1.jpg)") from None


def _read_class_folders(root: Path, key: str) -> Source:
    splits = split_dirs(root) or {"train": root}
    names = sorted({d.name for folder in splits.values() for d in _class_dirs(folder)})
    if not names:
        folders = ", ".join(f"{p}/" for p in splits.values())
        raise UserError(f"{key} {root}: no class sub-folders in {folders}; put the images in one folder per class "
                        f"(e.g. {root}/cat/1.jpg, {root}/dog/2.jpg)")
    index = {n: i for i, n in enumerate(names)}
    walk = Walk(root)
    walk.seen_dirs.update(_dir_id(f) for f in {root, *splits.values()})  # a link back up to them is a loop
    found, where = [], []  # every file reached, and its (split, label)
    for split, folder in splits.items():
        for d in _class_dirs(folder):
            files = walk.files(d)
            found += files
            where += [(split, index[d.name])] * len(files)
    keep = walk.once(found)
    out: dict[str, SplitSource] = {}
    for split in splits:
        rows = [i for i, (s, _) in enumerate(where) if s == split and keep[i]]
        out[split] = SplitSource(images=[found[i][0] for i in rows],
                                 labels=np.asarray([where[i][1] for i in rows], dtype=np.int64))
    why = {k: walk.why[k] for k in (LOOP_OR_OUTSIDE, DUPLICATE, NOT_REGULAR, UNREADABLE_DIR) if walk.why[k]}
    return Source(class_names=names, train=out["train"], val=out.get("val"), test=out.get("test"),
                  skipped=walk.other + sum(why.values()), skipped_why=why)


def _dir_id(folder: Path) -> tuple[int, int]:
    st = os.stat(folder)
    return st.st_dev, st.st_ino


@register_reader("imagefolder")
def read_imagefolder(cfg) -> Source:
    if not cfg.root:
        raise UserError("dataset.root: imagefolder cannot be downloaded; set dataset.root to a folder with one "
                        "sub-folder of images per class")
    return read_class_folders(Path(cfg.root).expanduser())
