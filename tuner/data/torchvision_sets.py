"""cifar10, stl10, flowers102, stanford_cars in torchvision's on-disk layouts.

The files are read here directly (they are simple formats), not through torchvision's dataset classes:
those check every file's md5 and load PIL images one by one, where the cache wants paths or arrays.
torchvision is used for what it is good at here: `download: true` fetches and unpacks into the same
layout (where the data set still allows it), and Flowers-102's class names.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from tuner.data.base import Source, SplitSource, find_root, missing, register_reader
from tuner.data.folder import read_class_folders, split_dirs
from tuner.errors import UserError


def _download(cfg, fetch) -> None:
    """Let torchvision download into dataset.root; offline that fails, which is the user's to fix."""
    Path(cfg.root).expanduser().mkdir(parents=True, exist_ok=True)
    try:
        fetch(str(Path(cfg.root).expanduser()))
    except Exception as exc:  # noqa: BLE001 - URLError, RuntimeError, ...: all mean "not fetched"
        raise UserError(f"dataset.download: could not download {cfg.name} into {cfg.root} ({exc.__class__.__name__}: "
                        f"{str(exc)[:120]}); put the files there by hand and set dataset.download: false") from None


# --------------------------------------------------------------------------- CIFAR-10
CIFAR_LAYOUT = "the python version (cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta) in it"


class _Refused(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold: dicts, lists, strings, numbers and uint8 numpy arrays. A
    pickle may name any callable to run while loading; these are the only ones a batch names (numpy's array
    reconstruction, and _codecs.encode for bytes in a protocol-2 pickle written by Python 3)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"{module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own, wherever this numpy keeps it
        if module == "_codecs":
            import _codecs

            return _codecs.encode
        return getattr(np, name)


def _unpickle(path: Path, keys: tuple[str, ...]) -> dict:
    """A CIFAR-10 python file, read without running code from it; anything else is the user's to replace."""
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
        if not isinstance(entry, dict):
            raise ValueError(f"a {type(entry).__name__}, not a dict")
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
        missing_keys = [k for k in keys if k not in entry]
        if missing_keys:
            raise ValueError(f"no {', '.join(missing_keys)} in it")
        return entry
    except _Refused as exc:
        raise UserError(f"dataset.root: {path} is not a CIFAR-10 file: it asks to run {exc} when read, which "
                        f"a data file never needs (nothing was run); replace it with the original "
                        f"(delete cifar-10-batches-py/ and set dataset.download: true)") from None
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, ValueError...: a damaged file
        raise UserError(f"dataset.root: {path} is truncated or corrupt ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120] if str(exc) else 'cannot be read'}); delete "
                        f"cifar-10-batches-py/ and download it again (dataset.download: true)") from None


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(path, ("data", "labels"))
    data = entry["data"]
    try:
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except (TypeError, ValueError):
        labels = None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels is None or labels.shape != (len(data),):
        raise UserError(f"dataset.root: {path} is truncated or corrupt (data is not N x 3072 bytes with a label "
                        f"each); delete cifar-10-batches-py/ and download it again (dataset.download: true)")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), labels


@register_reader("cifar10")
def read_cifar10(cfg) -> Source:
    base = find_root(cfg, "cifar-10-batches-py", "")
    if (base is None or not (base / "test_batch").is_file()) and cfg.download:
        from torchvision.datasets import CIFAR10

        _download(cfg, lambda root: CIFAR10(root, train=True, download=True))
        base = find_root(cfg, "cifar-10-batches-py")
    if base is None or not (base / "test_batch").is_file() or not (base / "data_batch_1").is_file():
        raise missing(cfg, CIFAR_LAYOUT, download=True)
    train = [_cifar_batch(p) for p in sorted(base.glob("data_batch_*"))]
    test = _cifar_batch(base / "test_batch")
    names = [str(i) for i in range(10)]
    if (base / "batches.meta").is_file():
        names = [str(n) for n in _unpickle(base / "batches.meta", ("label_names",))["label_names"]]
    return Source(class_names=names,
                  train=SplitSource(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
                  test=SplitSource(*test))


# --------------------------------------------------------------------------- STL-10
STL_LAYOUT = "the binary version (stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin) in it"


def _stl_split(base: Path, split: str) -> SplitSource:
    # column-major 3 x 96 x 96 per image, labels 1..10
    x = np.fromfile(base / f"{split}_X.bin", dtype=np.uint8).reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    y = np.fromfile(base / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
    if len(x) != len(y):
        raise UserError(f"dataset.root {base}: {split}_X.bin has {len(x)} images but {split}_y.bin {len(y)} labels; "
                        f"the files are truncated, copy them again")
    return SplitSource(np.ascontiguousarray(x), y)


@register_reader("stl10")
def read_stl10(cfg) -> Source:
    base = find_root(cfg, "stl10_binary", "")
    if (base is None or not (base / "test_X.bin").is_file()) and cfg.download:
        from torchvision.datasets import STL10

        _download(cfg, lambda root: STL10(root, split="train", download=True))
        base = find_root(cfg, "stl10_binary")
    files = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
    if base is None or not all((base / f).is_file() for f in files):
        raise missing(cfg, STL_LAYOUT, download=True)
    names = [str(i) for i in range(10)]
    if (base / "class_names.txt").is_file():
        names = [n.strip() for n in (base / "class_names.txt").read_text().splitlines() if n.strip()]
    return Source(class_names=names, train=_stl_split(base, "train"), test=_stl_split(base, "test"))


# --------------------------------------------------------------------------- Flowers-102
FLOWERS_LAYOUT = "flowers-102/ with jpg/image_00001.jpg..., imagelabels.mat and setid.mat in it"


@register_reader("flowers102")
def read_flowers102(cfg) -> Source:
    from scipy.io import loadmat
    from torchvision.datasets import Flowers102

    base = find_root(cfg, "flowers-102", "")
    if (base is None or not (base / "setid.mat").is_file()) and cfg.download:
        _download(cfg, lambda root: Flowers102(root, split="train", download=True))
        base = find_root(cfg, "flowers-102")
    if base is None or not all((base / f).exists() for f in ("jpg", "imagelabels.mat", "setid.mat")):
        raise missing(cfg, FLOWERS_LAYOUT, download=True)
    labels = loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"].astype(np.int64).ravel() - 1
    ids = loadmat(base / "setid.mat", squeeze_me=True)

    def split(key: str) -> SplitSource:
        image_ids = np.atleast_1d(ids[key]).astype(np.int64)
        return SplitSource([str(base / "jpg" / f"image_{i:05d}.jpg") for i in image_ids], labels[image_ids - 1])

    names = list(Flowers102.classes) if len(Flowers102.classes) > labels.max() else [str(i + 1) for i in range(102)]
    return Source(class_names=names, train=split("trnid"), val=split("valid"), test=split("tstid"))


# --------------------------------------------------------------------------- Stanford Cars
CARS_LAYOUT = ("torchvision's layout (stanford_cars/ with devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
               "cars_train/, cars_test_annos_withlabels.mat, cars_test/) or class folders under train/ and test/")
# the original host (ai.stanford.edu/~jkrause/cars) is gone and torchvision cannot fetch it any more
CARS_SOURCES = ("get the images from Kaggle (jessicali9530/stanford-cars-dataset; devkit/ and "
                "cars_test_annos_withlabels.mat as linked in github.com/pytorch/vision/issues/7545), or the "
                "class-folder copy (Kaggle jutrera/stanford-car-dataset-by-classes-folder)")


@register_reader("stanford_cars")
def read_stanford_cars(cfg) -> Source:
    from scipy.io import loadmat

    if cfg.download:
        raise UserError("dataset.download: Stanford Cars can no longer be downloaded (its original host is gone): "
                        f"{CARS_SOURCES}; put {CARS_LAYOUT} in dataset.root and set dataset.download: false")
    # the common re-packaging: class folders under train/ and test/ (Kaggle's car_data/car_data/...)
    for sub in ("", "car_data", "car_data/car_data"):
        folder = find_root(cfg, sub)
        if folder is not None and split_dirs(folder):
            return read_class_folders(folder)
    base = find_root(cfg, "stanford_cars", "")
    if base is None:
        raise missing(cfg, f"{CARS_LAYOUT} ({CARS_SOURCES})", download=False)
    devkit = base / "devkit"
    annos = "cars_test_annos_withlabels.mat"
    test_annos = next((p for p in (base / annos, devkit / annos) if p.is_file()), None)
    if test_annos is None or not all(
            p.exists() for p in (devkit / "cars_meta.mat", devkit / "cars_train_annos.mat", base / "cars_train",
                                 base / "cars_test")):
        raise missing(cfg, f"{CARS_LAYOUT} ({CARS_SOURCES})", download=False)

    def split(annos: Path, images: Path) -> SplitSource:
        a = np.atleast_1d(loadmat(annos, squeeze_me=True)["annotations"])
        return SplitSource([str(images / str(r["fname"])) for r in a],
                           np.asarray([int(r["class"]) - 1 for r in a], dtype=np.int64))

    names = [str(n) for n in np.atleast_1d(loadmat(devkit / "cars_meta.mat", squeeze_me=True)["class_names"])]
    return Source(class_names=names, train=split(devkit / "cars_train_annos.mat", base / "cars_train"),
                  test=split(test_annos, base / "cars_test"))
