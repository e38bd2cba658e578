"""tuner.data: readers of each on-disk format, splits, bad data, and the errors a user can fix.

Every test writes small files in the data set's real format (CIFAR-10 python pickles, STL-10 binaries,
Flowers-102 and Stanford Cars .mat layouts, class folders of JPEG/PNG, Kaggle TFRecords) from real
images (scikit-learn's digits), and reads them through `prepare`, as a search does.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuner.data import prepare
from tuner.errors import UserError
from tuner.spaces import DatasetConfig, SplitConfig


# --------------------------------------------------------------------------- real images, real formats
def digit_images(n_per_class: int = 12, classes: int = 3, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 images of real handwritten digits (scikit-learn's), upscaled and tinted per image."""
    from sklearn.datasets import load_digits

    d = load_digits()
    xs, ys = [], []
    rng = np.random.default_rng(0)
    for c in range(classes):
        for img in d.images[d.target == c][:n_per_class]:
            grey = Image.fromarray(np.round(img * 255 / 16).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            tint = rng.uniform(0.6, 1.0, 3)
            xs.append((np.asarray(grey)[..., None] * tint).astype(np.uint8))
            ys.append(c)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_class_folders(root: Path, x: np.ndarray, y: np.ndarray, names=("zero", "one", "two")) -> Path:
    for i, (a, c) in enumerate(zip(x, y)):
        d = root / names[c]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / (f"{i:04d}.png" if i % 2 else f"{i:04d}.jpg"))
    return root


def write_cifar10(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # the pickles hold N x 3072, channel-major rows
    order = np.random.default_rng(1).permutation(len(x))
    train, test = order[: len(x) * 3 // 4], order[len(x) * 3 // 4:]
    for k, part in enumerate(np.array_split(train, 5), start=1):
        (base / f"data_batch_{k}").write_bytes(pickle.dumps({"data": flat[part], "labels": y[part].tolist()}))
    (base / "test_batch").write_bytes(pickle.dumps({"data": flat[test], "labels": y[test].tolist()}))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": ["airplane", "automobile", "bird"]}))
    return root


def write_stl10(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    half = len(x) // 2
    order = np.random.default_rng(1).permutation(len(x))
    for split, part in (("train", order[:half]), ("test", order[half:])):
        np.ascontiguousarray(x[part].transpose(0, 3, 2, 1)).tofile(base / f"{split}_X.bin")  # column-major
        (y[part] + 1).astype(np.uint8).tofile(base / f"{split}_y.bin")
    (base / "class_names.txt").write_text("airplane\nbird\ncar\n")
    return root


def write_flowers102(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    from scipy.io import savemat

    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    for i, a in enumerate(x, start=1):
        (base / "jpg" / f"image_{i:05d}.jpg").write_bytes(jpeg(a))
    savemat(base / "imagelabels.mat", {"labels": (y + 1)[None, :]})
    ids = np.arange(1, len(x) + 1)
    savemat(base / "setid.mat", {"trnid": ids[0::3][None], "valid": ids[1::3][None], "tstid": ids[2::3][None]})
    return root


def write_stanford_cars(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for split, part in (("train", np.arange(0, len(x), 2)), ("test", np.arange(1, len(x), 2))):
        (base / f"cars_{split}").mkdir()
        rows = []
        for j, i in enumerate(part):
            name = f"{j + 1:05d}.jpg"
            (base / f"cars_{split}" / name).write_bytes(jpeg(x[i]))
            rows.append((1, 1, x.shape[2], x.shape[1], int(y[i]) + 1, name))
        annos = {"annotations": np.array(rows, dtype=dtype)[None, :]}
        savemat(base / ("devkit/cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"), annos)
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"], dtype=object)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names[None, :]})
    return root


def write_flowers104(root: Path, x: np.ndarray, y: np.ndarray, px: int = 224) -> Path:
    from tfrecord.writer import TFRecordWriter

    folder = root / f"tfrecords-jpeg-{px}x{px}"
    for split, part in (("train", np.arange(len(x))[np.arange(len(x)) % 4 != 0]), ("val", np.arange(0, len(x), 4))):
        (folder / split).mkdir(parents=True)
        for shard, chunk in enumerate(np.array_split(part, 2)):
            w = TFRecordWriter(str(folder / split / f"{shard:02d}-{px}x{px}-{len(chunk)}.tfrec"))
            for i in chunk:
                w.write({"image": (jpeg(x[i]), "byte"), "class": (int(y[i]), "int"), "id": (f"id{i}".encode(), "byte")})
            w.close()
    # the competition's unlabelled test records: present in the real download, must be ignored
    (folder / "test").mkdir()
    w = TFRecordWriter(str(folder / "test" / "00-test.tfrec"))
    w.write({"image": (jpeg(x[0]), "byte"), "id": (b"t0", "byte")})
    w.close()
    return root


WRITERS = {"imagefolder": write_class_folders, "cifar10": write_cifar10, "stl10": write_stl10,
           "flowers102": write_flowers102, "stanford_cars": write_stanford_cars, "flowers104": write_flowers104}


def cfg(name: str, root, **kw) -> DatasetConfig:
    return DatasetConfig(name=name, root=str(root), **kw)


# --------------------------------------------------------------------------- each format
@pytest.mark.parametrize("name,native", [("cifar10", 32), ("stl10", 96)])
def test_array_formats_read_every_image_with_its_label(tmp_path, name, native):
    x, y = digit_images(size=native)
    root = WRITERS[name](tmp_path / name, x, y)
    data = prepare(cfg(name, root, split=SplitConfig(val=0.25, test="official")), cache_dir=tmp_path / "c")
    got = np.concatenate([data.x_train, data.x_val, data.x_test])
    assert got.shape == (len(x), native, native, 3)
    # every written image comes back pixel for pixel with its own label (the layout transposes are right)
    want = {a.tobytes(): int(c) for a, c in zip(x, y)}
    labels = np.concatenate([data.y_train, data.y_val, data.y_test])
    assert all(want[a.tobytes()] == int(c) for a, c in zip(got, labels))
    assert len(data.class_names) == 3 and data.class_names[0] == "airplane"


def test_cifar10_resized_goes_through_the_cache(tmp_path):
    x, y = digit_images(size=32)
    root = write_cifar10(tmp_path / "cifar", x, y)
    data = prepare(cfg("cifar10", root, image_size=16), cache_dir=tmp_path / "c")
    assert data.x_train.shape[1:] == (16, 16, 3)
    assert len(list((tmp_path / "c" / "images").glob("*/images.npy"))) == 2  # train and test batches


def test_flowers102_keeps_its_official_train_val_test_and_class_names(tmp_path):
    x, y = digit_images()
    root = write_flowers102(tmp_path / "f", x, y)
    data = prepare(cfg("flowers102", root, image_size=24, split=SplitConfig(test="official")), cache_dir=tmp_path / "c")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (12, 12, 12)
    assert np.array_equal(data.y_train, y[0::3]) and np.array_equal(data.y_test, y[2::3])
    assert data.class_names[:2] == ["pink primrose", "hard-leaved pocket orchid"]


def test_stanford_cars_reads_torchvision_layout_like_torchvision(tmp_path):
    from torchvision.datasets import StanfordCars

    x, y = digit_images()
    root = write_stanford_cars(tmp_path / "cars", x, y)
    data = prepare(cfg("stanford_cars", root, image_size=24, split=SplitConfig(test="official")),
                   cache_dir=tmp_path / "c")
    tv = StanfordCars(str(root), split="test")  # the same files through torchvision's own class
    assert data.class_names == tv.classes
    assert np.array_equal(data.y_test, [t for _, t in tv._samples])
    assert len(data.y_train) + len(data.y_val) == len(x) // 2


def test_stanford_cars_reads_class_folders_under_train_and_test(tmp_path):
    x, y = digit_images()
    write_class_folders(tmp_path / "cars" / "train", x[0::2], y[0::2], names=("Audi A4", "BMW M3", "Fiat 500"))
    write_class_folders(tmp_path / "cars" / "test", x[1::2], y[1::2], names=("Audi A4", "BMW M3", "Fiat 500"))
    data = prepare(cfg("stanford_cars", tmp_path / "cars", image_size=16, split=SplitConfig(test="official")),
                   cache_dir=tmp_path / "c")
    assert data.class_names == ["Audi A4", "BMW M3", "Fiat 500"]
    assert len(data.y_test) == len(x) // 2


def test_flowers104_reads_kaggle_tfrecords_and_uses_labelled_val_as_test(tmp_path):
    x, y = digit_images()
    root = write_flowers104(tmp_path / "k", x, y)
    data = prepare(cfg("flowers104", root, image_size=32, split=SplitConfig(test="official")), cache_dir=tmp_path / "c")
    assert len(data.y_test) == len(x) // 4  # every 4th record was written to val/
    assert len(data.y_train) + len(data.y_val) == len(x) - len(x) // 4  # test/ (unlabelled) is not used
    assert data.class_names[0] == "pink primrose" and len(data.class_names) == 104
    # the JPEG bytes decode to the image that was written (JPEG is lossy: close, not equal)
    i = int(np.argmax(data.y_test == 1))
    assert np.abs(data.x_test[i].astype(int) - x[4 * i].astype(int)).mean() < 8


def test_imagefolder_with_train_val_test_folders_uses_them_as_official_splits(tmp_path):
    x, y = digit_images()
    for split, part in (("train", slice(0, None, 3)), ("val", slice(1, None, 3)), ("test", slice(2, None, 3))):
        write_class_folders(tmp_path / "f" / split, x[part], y[part])
    data = prepare(cfg("imagefolder", tmp_path / "f", image_size=16, split=SplitConfig(test="official")),
                   cache_dir=tmp_path / "c")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (12, 12, 12)
    # with fractions the three folders are pooled and split again
    data = prepare(cfg("imagefolder", tmp_path / "f", image_size=16, split=SplitConfig(val=0.25, test=0.25)),
                   cache_dir=tmp_path / "c")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (18, 9, 9)


# --------------------------------------------------------------------------- one copy, shared
def test_every_part_is_a_memory_map_of_the_cache_and_pickles_as_its_path(tmp_path):
    """What Ray's object store gets for the trials: paths, not pixels (a Cars-sized set was 2.4 GB there and
    again in the driver); a trial maps the same files. For a cluster (`by_path=False`) the pixels travel."""
    x, y = digit_images(n_per_class=20)
    for split, part in (("train", slice(0, None, 2)), ("test", slice(1, None, 2))):
        write_class_folders(tmp_path / "f" / split, x[part], y[part])
    conf = cfg("imagefolder", tmp_path / "f", image_size=32, split=SplitConfig(val=0.25, test="official"))
    d = prepare(conf, cache_dir=tmp_path / "c")
    # val carved out of train/: train and val are files of their own; test/ is its whole cache entry
    files = {k: str(getattr(d, f"x_{k}").filename) for k in ("train", "val", "test")}
    assert len(set(files.values())) == 3 and "parts" in files["train"] and "parts" in files["val"]
    sent = pickle.dumps(d, protocol=5)
    assert len(sent) < 10_000 < d.x_train.nbytes
    back = pickle.loads(sent)
    for k in ("train", "val", "test"):
        a = getattr(back, f"x_{k}")
        assert isinstance(a, np.memmap) and str(a.filename) == files[k] and np.array_equal(a, getattr(d, f"x_{k}"))
        assert np.array_equal(getattr(back, f"y_{k}"), getattr(d, f"y_{k}"))
    # the same set again: the parts are found, not written again
    again = prepare(conf, cache_dir=tmp_path / "c")
    assert again.key == d.key and again.stats.decoded == 0 and str(again.x_train.filename) == files["train"]
    far = prepare(conf, cache_dir=tmp_path / "c", by_path=False)
    sent = pickle.dumps(far, protocol=5)
    assert len(sent) > far.x_train.nbytes + far.x_val.nbytes + far.x_test.nbytes
    back = pickle.loads(sent)
    assert not isinstance(back.x_train, np.memmap) and np.array_equal(back.x_train, d.x_train)


def test_a_slice_of_a_mapped_part_pickles_as_pixels_not_as_the_whole_file(tmp_path):
    x, y = digit_images(n_per_class=6)
    d = prepare(cfg("imagefolder", write_class_folders(tmp_path / "f", x, y), image_size=16), cache_dir=tmp_path / "c")
    import dataclasses

    half = dataclasses.replace(d, x_train=d.x_train[: len(d.x_train) // 2])
    back = pickle.loads(pickle.dumps(half))
    assert np.array_equal(back.x_train, d.x_train[: len(d.x_train) // 2])


# --------------------------------------------------------------------------- splits
def test_fraction_split_is_stratified_seeded_and_disjoint(tmp_path):
    x, y = digit_images(n_per_class=20)
    root = write_class_folders(tmp_path / "f", x, y)
    a = prepare(cfg("imagefolder", root, image_size=8, split=SplitConfig(val=0.25, test=0.25, seed=3)), cache_dir=None)
    b = prepare(cfg("imagefolder", root, image_size=8, split=SplitConfig(val=0.25, test=0.25, seed=3)), cache_dir=None)
    c = prepare(cfg("imagefolder", root, image_size=8, split=SplitConfig(val=0.25, test=0.25, seed=4)), cache_dir=None)
    assert all(np.array_equal(a.indices[k], b.indices[k]) for k in ("train", "val", "test"))
    assert not np.array_equal(a.indices["val"], c.indices["val"])
    assert np.bincount(a.y_val).tolist() == [5, 5, 5] and np.bincount(a.y_test).tolist() == [5, 5, 5]
    together = np.concatenate([a.indices[k] for k in ("train", "val", "test")])
    assert len(np.unique(together)) == len(x)


@pytest.mark.parametrize("preset,mean", [("imagenet", 0.485), ("half", 0.5)])
def test_normalize_presets(tmp_path, preset, mean):
    x, y = digit_images()
    data = prepare(cfg("imagefolder", write_class_folders(tmp_path / "f", x, y), image_size=8, normalize=preset))
    assert data.mean[0] == pytest.approx(mean)


def test_normalize_dataset_is_measured_on_the_training_split(tmp_path):
    x, y = digit_images()
    data = prepare(cfg("imagefolder", write_class_folders(tmp_path / "f", x, y), image_size=8, normalize="dataset"))
    t = data.x_train.astype(np.float64) / 255
    assert data.mean == pytest.approx(tuple(t.mean(axis=(0, 1, 2))), abs=1e-6)
    assert data.std == pytest.approx(tuple(t.std(axis=(0, 1, 2))), abs=1e-6)


# --------------------------------------------------------------------------- bad data and user errors
def test_corrupt_and_non_image_files_are_skipped_and_counted_in_one_warning(tmp_path, capsys):
    x, y = digit_images()
    root = write_class_folders(tmp_path / "f", x, y)
    (root / "one" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "two" / "cut.png").write_bytes(jpeg(x[0])[:40])  # truncated
    (root / "two" / "notes.txt").write_text("not an image")
    (root / "two" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored, not counted
    data = prepare(cfg("imagefolder", root, image_size=16), cache_dir=tmp_path / "c")
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == len(x)
    assert data.skipped == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == [f"warning: dataset.root {root}: skipped 3 unreadable or non-image files"]


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "nowhere", "no such folder"),
    (lambda p: p, "no class sub-folders"),
    (lambda p: (p / "a").mkdir() or (p / "b").mkdir() or p, "no readable images"),
    (lambda p: write_class_folders(p, *digit_images(classes=1)), "only 1 class ('zero')"),
])
def test_imagefolder_user_errors_say_what_to_put_where(tmp_path, make, message):
    root = make(tmp_path)
    with pytest.raises(UserError, match="dataset.root") as e:
        prepare(cfg("imagefolder", root))
    assert message in str(e.value) and "folder per class" in str(e.value)


@pytest.mark.parametrize("name,message", [
    ("cifar10", "cifar-10-batches-py/ with data_batch_1..5"), ("stl10", "stl10_binary/ with train_X.bin"),
    ("flowers102", "flowers-102/ with jpg/"), ("stanford_cars", "devkit/cars_meta.mat"),
    ("flowers104", "tfrecords-jpeg-224x224/train/*.tfrec")])
def test_missing_data_set_names_the_layout_and_the_download_option(tmp_path, name, message):
    with pytest.raises(UserError) as e:
        prepare(cfg(name, tmp_path / "empty"))
    assert message in str(e.value)
    assert ("dataset.download: true" in str(e.value)) == (name in ("cifar10", "stl10", "flowers102"))


def test_download_offline_is_a_user_error_not_a_traceback(tmp_path, monkeypatch):
    import socket

    def offline(*a, **k):
        raise OSError("network is unreachable")

    # the machine has no internet anyway; this makes "offline" quick and certain instead of a DNS timeout
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)
    with pytest.raises(UserError, match="dataset.download: could not download cifar10"):
        prepare(cfg("cifar10", tmp_path / "dl", download=True))


def test_download_is_refused_for_data_sets_that_cannot_be_downloaded(tmp_path):
    for name in ("stanford_cars", "flowers104"):
        with pytest.raises(UserError, match="dataset.download: false"):
            prepare(cfg(name, tmp_path, download=True))


def test_stanford_cars_errors_say_where_to_get_the_files_and_which_layout(tmp_path):
    # its original host is gone: neither `download: true` nor a missing folder may leave the user guessing
    for download in (True, False):
        with pytest.raises(UserError) as e:
            prepare(cfg("stanford_cars", tmp_path / "empty", download=download))
        msg = str(e.value)
        assert "Kaggle" in msg and "pytorch/vision/issues/7545" in msg and "devkit/cars_meta.mat" in msg
        assert "class folders under train/ and test/" in msg and "\n" not in msg


# --------------------------------------------------------------------------- caches that notice change
def _noise_like(path: Path, seed: int) -> None:
    """Overwrite an image with noise of the same size and format, keeping its name."""
    with Image.open(path) as im:
        size, fmt = im.size, im.format
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def test_changed_added_and_removed_images_reach_the_next_prepare_and_an_unchanged_folder_is_not_decoded_again(tmp_path):
    x, y = digit_images()
    root = write_class_folders(tmp_path / "f", x, y)
    conf = cfg("imagefolder", root, image_size=16, normalize="half")
    entries = lambda: sorted(p.name for p in (tmp_path / "c" / "images").iterdir() if p.is_dir())  # noqa: E731
    a = prepare(conf, cache_dir=tmp_path / "c", progress=False)
    first = entries()
    built = (tmp_path / "c" / "images" / first[0] / "images.npy").stat().st_mtime_ns
    again = prepare(conf, cache_dir=tmp_path / "c", progress=False)
    assert entries() == first and again.key == a.key  # reused, not decoded again
    assert (tmp_path / "c" / "images" / first[0] / "images.npy").stat().st_mtime_ns == built

    for i, f in enumerate(sorted(root.rglob("*.*"))):  # every image replaced by noise, same names
        _noise_like(f, i)
    b = prepare(conf, cache_dir=tmp_path / "c", progress=False)
    fresh = prepare(conf, cache_dir=tmp_path / "fresh", progress=False)
    assert b.key != a.key and b.key == fresh.key
    assert np.array_equal(b.x_val, fresh.x_val) and not np.array_equal(b.x_val, a.x_val)

    Image.fromarray(x[0]).save(root / "zero" / "added.png")
    (root / "three").mkdir()
    for i in range(4):
        Image.fromarray(x[i]).save(root / "three" / f"{i}.png")
    c = prepare(conf, cache_dir=tmp_path / "c", progress=False)
    assert len(c.class_names) == 4 and len(c.y_train) + len(c.y_val) + len(c.y_test) == len(x) + 5
    assert c.key not in (a.key, b.key)

    for f in (root / "three").iterdir():
        f.unlink()
    (root / "three").rmdir()
    (root / "zero" / "added.png").unlink()
    d = prepare(conf, cache_dir=tmp_path / "c", progress=False)
    assert d.key == b.key and np.array_equal(d.x_test, b.x_test)


def test_a_file_rewritten_with_the_same_size_and_mtime_is_decoded_again(tmp_path):
    # BMP files of one size all have the same length; restoring the mtime leaves only the inode / ctime changed
    x, y = digit_images(n_per_class=4)
    root = tmp_path / "f"
    for i, (a, c) in enumerate(zip(x, y)):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / str(c) / f"{i}.bmp")
    conf = cfg("imagefolder", root, image_size=32, normalize="none", split=SplitConfig(val=0.25, test=0.25))
    a = prepare(conf, cache_dir=tmp_path / "c", progress=False)
    for i, f in enumerate(sorted(root.rglob("*.bmp"))):
        st = f.stat()
        _noise_like(f, i)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    b = prepare(conf, cache_dir=tmp_path / "c", progress=False)
    assert b.key != a.key and not np.array_equal(b.x_train, a.x_train)
    assert np.array_equal(b.x_train, prepare(conf, cache_dir=None, progress=False).x_train)


# --------------------------------------------------------------------------- odd files: each image once, no hangs
@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if what is tested blocks, e.g. on opening a named pipe."""
    import signal

    def stop(*_):
        raise TimeoutError("blocked for 60 s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_symlink_loops_links_out_of_the_root_duplicates_and_pipes_are_skipped_and_counted(tmp_path, capsys, no_hang):
    x, y = digit_images()
    root = write_class_folders(tmp_path / "f", x, y)
    outside = tmp_path / "outside.png"
    Image.fromarray(x[0]).save(outside)
    (root / "zero" / "self").symlink_to(".")                     # a link to `.`: each image 41 times before
    (root / "one" / "up").symlink_to("..")                       # a link to the root: a loop too
    (root / "one" / "a.png").symlink_to("b.png")                 # a symlink loop
    (root / "one" / "b.png").symlink_to("a.png")
    (root / "two" / "away.png").symlink_to(outside)              # leads out of the root
    (root / "two" / "again.jpg").symlink_to(root / "zero" / "0000.jpg")  # the same file twice
    os.link(root / "zero" / "0002.jpg", root / "zero" / "hard.jpg")      # a hard link: the same file too
    os.mkfifo(root / "two" / "pipe.png")                         # opening it would wait forever
    data = prepare(cfg("imagefolder", root, image_size=16), cache_dir=tmp_path / "c")
    everything = np.concatenate([data.x_train, data.x_val, data.x_test])
    assert len(everything) == len(x) and data.skipped == 8
    # each image exactly once (no decoded image equals another), in the class where it lives
    assert len({a.tobytes() for a in everything}) == len(x)
    assert np.bincount(np.concatenate([data.y_train, data.y_val, data.y_test])).tolist() == [12, 12, 12]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == [f"warning: dataset.root {root}: skipped 8 files: 5 symlinks that loop or lead out of the "
                   f"folder, 2 duplicates (the same file twice), 1 pipes, sockets or devices"]


def test_a_file_linked_into_another_split_stays_where_it_lives_only(tmp_path):
    x, y = digit_images(n_per_class=4)
    write_class_folders(tmp_path / "f" / "train", x[::2], y[::2])
    write_class_folders(tmp_path / "f" / "test", x[1::2], y[1::2])
    leaked = next((tmp_path / "f" / "train" / "one").iterdir())
    (tmp_path / "f" / "test" / "one" / "leak.png").symlink_to(leaked)
    data = prepare(cfg("imagefolder", tmp_path / "f", image_size=16, split=SplitConfig(test="official")))
    assert len(data.y_train) + len(data.y_val) == len(x[::2]) and len(data.y_test) == len(x[1::2])
    assert data.skipped == 1


def test_a_pipe_a_reader_lists_by_name_is_skipped_without_opening_it(tmp_path, no_hang):
    from tuner.data.cache import decode_chunk

    os.mkfifo(tmp_path / "image_00001.jpg")  # e.g. a Flowers-102 file named in its .mat, replaced by a pipe
    Image.fromarray(digit_images()[0][0]).save(tmp_path / "ok.png")
    _, ok = decode_chunk([str(tmp_path / "image_00001.jpg"), str(tmp_path / "ok.png")], 8, 3)
    assert ok.tolist() == [False, True]


# --------------------------------------------------------------------------- unusual image modes
def _grey16() -> np.ndarray:
    return (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040)  # 0..65520: most of the 16-bit range


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def _palette_with_transparency(path: Path) -> np.ndarray:
    im = Image.fromarray(_rgb()[..., 0] // 64).convert("P")  # indices 0..3
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    im.save(path, transparency=0)
    return np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], dtype=np.uint8)[_rgb()[..., 0] // 64]


def _write(path: Path, mode: str) -> np.ndarray:
    """Write an 8x8 image in `mode`; return the 8-bit RGB it should decode to."""
    g16 = _grey16()
    g8 = ((g16.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "I;16":
        Image.fromarray(g16).save(path)                                # a 16-bit greyscale PNG
    elif mode == "I;16B":
        Image.fromarray(g16).convert("I").save(path.with_suffix(".tif"))
        Image.open(path.with_suffix(".tif")).convert("I;16B").save(path)
    elif mode == "I":
        Image.fromarray(g16.astype(np.int32)).save(path)               # 32-bit integer TIFF
    elif mode == "LA":
        Image.fromarray(np.dstack([g8, 255 - g8])).save(path)
    elif mode == "RGBA":
        Image.fromarray(np.dstack([_rgb(), g8])).save(path)
        return _rgb()
    elif mode == "P":
        return _palette_with_transparency(path)
    elif mode == "1":
        Image.fromarray(g8 > 127).save(path)
        g8 = np.where(g8 > 127, 255, 0).astype(np.uint8)
    elif mode == "CMYK":
        Image.fromarray(_rgb()).convert("CMYK").save(path, quality=100)
        return np.asarray(Image.fromarray(_rgb()).convert("CMYK").convert("RGB"))
    return np.repeat(g8[..., None], 3, axis=2)


@pytest.mark.parametrize("mode,name", [("I;16", "a.png"), ("I;16B", "a.tiff"), ("I", "a.tif"), ("LA", "a.png"),
                                       ("RGBA", "a.png"), ("P", "a.png"), ("1", "a.png"), ("CMYK", "a.jpg")])
def test_unusual_image_modes_decode_to_the_right_8_bit_values(tmp_path, mode, name):
    from tuner.data.cache import to_array

    expected = _write(tmp_path / name, mode)
    with Image.open(tmp_path / name) as im:
        assert im.mode == mode or (mode == "I;16B" and im.mode.startswith("I;16"))
    got = to_array(str(tmp_path / name), 8, 3)
    if mode == "CMYK":  # JPEG is lossy even at quality 100
        assert np.abs(got.astype(int) - expected.astype(int)).mean() < 4
    else:
        assert np.array_equal(got, expected)


def test_a_16_bit_png_is_not_white_and_a_float_image_is_skipped_and_counted(tmp_path):
    x, y = digit_images(n_per_class=4)
    root = write_class_folders(tmp_path / "f", x, y)
    Image.fromarray(_grey16()).save(root / "zero" / "grey16.png")
    Image.fromarray(_grey16().astype(np.float32) / 65535).save(root / "zero" / "float.tif")
    data = prepare(cfg("imagefolder", root, image_size=8, split=SplitConfig(val=0.25, test=0.25)), cache_dir=None)
    assert data.skipped == 1 and len(data.y_train) + len(data.y_val) + len(data.y_test) == len(x) + 1
    everything = np.concatenate([data.x_train, data.x_val, data.x_test])
    g8 = ((_grey16().astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert any(np.array_equal(a[..., 0], g8) for a in everything)


# --------------------------------------------------------------------------- no code from data
class _MakesAFile:
    """What a hostile batch would hold: unpickling it calls pathlib.Path.touch on a file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_cifar10_batches_pickled_as_the_real_ones_load_with_the_restricted_unpickler(tmp_path):
    # as the real files: protocol-2 pickles of a dict with a uint8 N x 3072 array, labels, a batch label
    # and file names, and batches.meta with the label names
    x, y = digit_images()
    base = tmp_path / "cifar" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    for name, part in (("data_batch_1", slice(0, 30)), ("test_batch", slice(30, None))):
        (base / name).write_bytes(pickle.dumps(
            {"batch_label": name, "labels": y[part].tolist(), "data": np.ascontiguousarray(flat[part]),
             "filenames": [f"{i}.png" for i in range(len(y[part]))]}, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps(
        {"label_names": ["airplane", "automobile", "bird"], "num_vis": 3072}, protocol=2))
    data = prepare(cfg("cifar10", tmp_path / "cifar", normalize="none", split=SplitConfig(val=0.2, test="official")))
    assert data.class_names == ["airplane", "automobile", "bird"]
    assert np.array_equal(data.x_test, x[30:]) and np.array_equal(data.y_test, y[30:])
    assert len(data.y_train) + len(data.y_val) == 30


@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_a_hostile_cifar10_file_is_refused_and_runs_nothing(tmp_path, name):
    x, y = digit_images()
    root = write_cifar10(tmp_path / "cifar", x, y)
    made = tmp_path / "pwned"
    (root / "cifar-10-batches-py" / name).write_bytes(pickle.dumps({"data": _MakesAFile(made), "labels": []},
                                                                    protocol=2))
    says = rf"{name} is not a CIFAR-10 file: it asks to run \S+ when read.*nothing was run"
    with pytest.raises(UserError, match=says):
        prepare(cfg("cifar10", root))
    assert not made.exists()


def test_a_truncated_cifar10_batch_names_the_file_and_says_to_download_again(tmp_path):
    x, y = digit_images()
    root = write_cifar10(tmp_path / "cifar", x, y)
    f = root / "cifar-10-batches-py" / "data_batch_2"
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(UserError, match=r"data_batch_2 is truncated or corrupt .*download it again"):
        prepare(cfg("cifar10", root))


def test_a_truncated_cifar10_batch_is_exit_2_and_one_line_from_the_cli(tmp_path, capsys, monkeypatch):
    from tuner.cli import main

    x, y = digit_images()
    root = write_cifar10(tmp_path / "cifar", x, y)
    f = root / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes()[:-50])
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path / "cache"))
    space = tmp_path / "s.yaml"
    space.write_text(f"name: c\ndataset: {{name: cifar10, root: {root}}}\nfamily: linear\n"
                     f"space: {{lr: {{loguniform: [0.001, 0.1]}}}}\n")
    assert main(["search", "--space", str(space), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "test_batch is truncated or corrupt" in err[0]


# --------------------------------------------------------------------------- image size and the cache's size
def test_an_image_size_beyond_the_bound_is_refused_before_anything_is_read_or_written(tmp_path):
    from tuner.data.cache import MAX_IMAGE_SIZE

    x, y = digit_images(n_per_class=2)
    root = write_class_folders(tmp_path / "f", x, y)
    with pytest.raises(UserError, match=f"dataset.image_size: 100000 is out of range; give 1 to {MAX_IMAGE_SIZE}"):
        prepare(cfg("imagefolder", root, image_size=100000), cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_needed_space_is_compared_with_the_real_free_disk_and_memory(tmp_path):
    from tuner.data.cache import available_memory, check_space

    free = shutil.disk_usage(tmp_path).free
    check_space(free // 2, tmp_path / "not" / "yet")  # measured on the nearest folder that exists
    with pytest.raises(UserError, match=rf"needs \d+\.\d GB, \d+\.\d GB free in {tmp_path}: set TUNER_CACHE"):
        check_space(free + 10**10, tmp_path)
    with pytest.raises(UserError, match=r"need \d+\.\d GB of memory, \d+\.\d GB available"):
        check_space(available_memory() + 10**10, None)


def test_images_larger_than_memory_run_from_the_cache_on_one_machine_and_are_refused_before_decoding_for_a_cluster(
        tmp_path, monkeypatch, capsys):
    from tuner.data import cache

    x, y = digit_images(n_per_class=2)
    root = write_class_folders(tmp_path / "f", x, y)  # 6 images: 6 x 64 x 64 x 3 bytes = 73,728 at 64 px
    # the machine's real free memory stands in for a small one: what prepare() reads through available_memory
    monkeypatch.setattr(cache, "available_memory", lambda: 60_000)
    # trials on other machines get the arrays through Ray's object store: they must fit, checked first
    says = (r"decoded images need 0\.1 MB of memory, 0\.1 MB available \(trials on a "
            r"cluster .*\): lower dataset.image_size or set dataset.limit, or search on one")
    with pytest.raises(UserError, match=says):
        prepare(cfg("imagefolder", root, image_size=64), cache_dir=tmp_path / "c", by_path=False)
    assert not list((tmp_path / "c").rglob("*.npy"))  # refused before the cache was written
    assert "decoding" not in capsys.readouterr().err
    # on one machine the parts are memory maps of the cache: larger than memory is slower, not refused
    d = prepare(cfg("imagefolder", root, image_size=64), cache_dir=tmp_path / "c")
    assert "more than the free memory" in capsys.readouterr().err
    assert all(isinstance(a, np.memmap) for a in (d.x_train, d.x_val, d.x_test))
    assert d.x_train.shape[1:] == (64, 64, 3)


def test_a_cache_larger_than_the_free_disk_is_refused_before_a_byte_is_written(tmp_path):
    # CIFAR-sized arrays resized to 2048 px take 12.6 MB each in the cache: enough of them (3 KB each to
    # write here) need more than this disk has free, measured for real
    per_image = 2048 * 2048 * 3
    n = shutil.disk_usage(tmp_path).free // per_image + 64
    if n > 200_000:
        pytest.skip(f"{n} images needed to fill this disk")
    base = tmp_path / "cifar" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    flat = np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = (np.arange(n) % 3).tolist()
    (base / "data_batch_1").write_bytes(pickle.dumps({"data": flat, "labels": labels}, protocol=2))
    (base / "test_batch").write_bytes(pickle.dumps({"data": flat[:30], "labels": labels[:30]}, protocol=2))
    with pytest.raises(UserError, match=r"the image cache needs \d+\.\d GB, \d+\.\d GB free in .*: set TUNER_CACHE "
                                        r"to a folder on a larger disk or lower dataset.image_size"):
        prepare(cfg("cifar10", tmp_path / "cifar", image_size=2048), cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "images").exists() or not any((tmp_path / "c" / "images").iterdir())


def test_the_space_estimate_is_what_the_cache_then_holds(tmp_path):
    from tuner.data import get_reader, plan_splits
    from tuner.data.cache import plan

    x, y = digit_images()
    root = write_class_folders(tmp_path / "f", x, y)
    conf = cfg("imagefolder", root, image_size=24)
    shipped, _ = plan_splits(get_reader("imagefolder")(conf), conf)
    e = plan(conf, "train", shipped["train"], np.arange(len(x)), tmp_path / "c", 24)
    prepare(conf, cache_dir=tmp_path / "c", progress=False)
    written = np.load(e.folder / "images.npy", mmap_mode="r")
    assert e.built and e.nbytes == written.nbytes == len(x) * 24 * 24 * 3


@pytest.mark.parametrize("seed", range(6))
def test_a_class_with_one_image_goes_to_train(tmp_path, seed):
    # a one-image class cannot be stratified; the split fell back to a random one and the image landed in val
    # or test for about half the seeds, a class the model never saw in training
    x, y = digit_images(n_per_class=10)
    keep = np.concatenate([np.flatnonzero(y < 2), np.flatnonzero(y == 2)[:1]])
    root = write_class_folders(tmp_path / "f", x[keep], y[keep])
    data = prepare(cfg("imagefolder", root, image_size=8, split=SplitConfig(val=0.2, test=0.2, seed=seed)),
                   cache_dir=None)
    two = data.class_names.index("two")  # the one-image class (folders are sorted: one, two, zero)
    assert (data.y_train == two).sum() == 1 and two not in data.y_val and two not in data.y_test
    assert sorted(np.bincount(data.y_val)[np.bincount(data.y_val) > 0]) == [2, 2]  # the others stratified
    assert sorted(np.bincount(data.y_test)[np.bincount(data.y_test) > 0]) == [2, 2]


# what a camera writes for each EXIF orientation: the upright picture turned this way, plus the tag that turns it back
STORED_AS = {6: Image.Transpose.ROTATE_90, 3: Image.Transpose.ROTATE_180, 8: Image.Transpose.ROTATE_270,
             2: Image.Transpose.FLIP_LEFT_RIGHT}


@pytest.mark.parametrize("orientation", list(STORED_AS))
def test_a_jpeg_with_an_exif_orientation_is_decoded_upright(tmp_path, orientation):
    # a phone stores a portrait photo as landscape pixels plus an EXIF Orientation tag; viewers show it
    # upright, and the decoder took the raw pixels
    from tuner.data.cache import to_array

    upright = np.zeros((16, 16, 3), dtype=np.uint8)
    upright[:8, :, 0] = 255  # red top half
    upright[:, :8, 2] = 255  # blue left half: a flip shows too
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(upright).transpose(STORED_AS[orientation]).save(tmp_path / "a.jpg", quality=100,
                                                                     exif=exif.tobytes())
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.getexif()[0x0112] == orientation
    got = to_array(str(tmp_path / "a.jpg"), 16, 3).astype(int)
    assert np.abs(got - upright.astype(int)).mean() < 8, "decoded as stored, not as shown"


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("shape, size", [((333, 500), 224), ((97, 131), 224), ((64, 48), 16), ((240, 360), 240)])
def test_the_cache_resizes_as_pils_bilinear_resize_does(mode, shape, size):
    # the cache resizes with torch's uint8 kernel (faster); a bundle's predict and a deployment resize with
    # PIL's or any bilinear: the two must give the same pixels, down and up, grey and colour, within a level
    from tuner.data.cache import resize

    rng = np.random.default_rng(sum(shape) + size)
    smooth = np.linspace(0, 255, shape[1])[None, :, None] * np.linspace(0.2, 1, shape[0])[:, None, None]
    pixels = np.clip(smooth + rng.normal(0, 40, (*shape, 3)), 0, 255).astype(np.uint8)  # edges and noise
    img = Image.fromarray(pixels).convert(mode)
    want = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR)).astype(int)
    got = resize(img, size)
    assert got.shape == (size, size, 1 if mode == "L" else 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(int).reshape(want.shape) - want)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_a_root_that_is_home_is_refused_without_walking_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="is the home folder, not a data folder"):
        prepare(cfg("imagefolder", tmp_path), cache_dir=None)


def test_a_tree_without_images_is_given_up_after_a_bounded_walk(tmp_path, monkeypatch):
    # dataset.root: /usr walked every file below it as "classes" for a minute before saying anything
    from tuner.data import folder

    monkeypatch.setattr(folder, "SCAN_WITHOUT_IMAGE", 50)
    for c in ("bin", "lib", "share"):
        (tmp_path / "t" / c / "deep").mkdir(parents=True)
        for i in range(30):
            (tmp_path / "t" / c / "deep" / f"{i}.txt").write_text("x")
    with pytest.raises(UserError, match=r"no image among the first 50 files and folders under it"):
        prepare(cfg("imagefolder", tmp_path / "t"), cache_dir=None)
    x, y = digit_images(n_per_class=4)
    write_class_folders(tmp_path / "t", x, y, names=("bin", "lib", "share"))  # images after 30 text files
    assert len(prepare(cfg("imagefolder", tmp_path / "t", image_size=8), cache_dir=None).class_names) == 3


def test_decoding_and_embedding_show_progress_and_say_what_they_took(tmp_path, capsys):
    import torch.nn as nn

    from tuner import embeddings
    from tuner.engine import Preprocess

    x, y = digit_images(n_per_class=10)
    d = prepare(cfg("imagefolder", write_class_folders(tmp_path / "f", x, y), image_size=16), cache_dir=tmp_path / "c")
    assert "decoding imagefolder train at 16px: 100%|" in capsys.readouterr().err
    pre = Preprocess(d.mean, d.std, 3)
    embeddings.cached(d, "flat", nn.Flatten(), pre, cache_dir=tmp_path / "c", progress=True)
    err = capsys.readouterr().err
    assert "embedding train: 100%|" in err and "embedding test: 100%|" in err
    assert re.search(r"embedded 30 images in [\d.]+ s \(\d+ img/s\) -> ", err)
    embeddings.cached(d, "flat", nn.Flatten(), pre, cache_dir=tmp_path / "c", progress=True)
    assert "embedding" not in capsys.readouterr().err  # cached: nothing to show
