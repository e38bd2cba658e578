"""A `--smoke` search through the CLI on each data-set format, written small in its real on-disk layout.

The class names must reach the reports and the exported bundle; bad data must give exit 2 and one
`error:` line before Ray starts; a second experiment on the same data reuses the decode-once cache.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.test_data import WRITERS, digit_images, write_class_folders
from tuner.cli import main

SPACE = "search_spaces/digits_cnn.yaml"


def search(root, results, name: str, *extra: str) -> int:
    return main(["search", "--space", SPACE, "--smoke", "--no-dashboard", "--results", str(results),
                 "--name", name, "--set", f"dataset.name={name}", "--set", f"dataset.root={root}", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("cifar10", 32), ("stl10", 96), ("flowers102", 16), ("stanford_cars", 16),
                                       ("flowers104", 16)])
def test_smoke_search_runs_on_each_format(tmp_path, name, size):
    x, y = digit_images(n_per_class=10, size=size)
    root = WRITERS[name](tmp_path / "data", x, y)
    extra = ["--set", "dataset.image_size=16", "--set", "search.max_concurrent=1", "--no-retrain"]
    if name in ("stanford_cars", "flowers102", "flowers104"):
        extra += ["--set", "dataset.split.test=official"]
    assert search(root, tmp_path / "results", name, *extra) == 0
    trials = pd.read_csv(tmp_path / "results" / name / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()


@pytest.mark.slow
def test_smoke_search_on_class_folders_exports_the_class_names(tmp_path):
    import tuner

    x, y = digit_images(n_per_class=10, size=20)
    root = write_class_folders(tmp_path / "data", x, y)
    assert search(root, tmp_path / "results", "imagefolder", "--set", "dataset.image_size=16",
                  "--set", "search.max_concurrent=1") == 0
    best = tmp_path / "results" / "imagefolder" / "best"
    predictor = tuner.load(best / "model.pt")
    assert predictor.class_names == ["one", "two", "zero"]  # sorted folder names, as ImageFolder does
    assert list(pd.read_csv(best / "confusion_matrix.csv", index_col=0).index) == predictor.class_names
    assert predictor.predict(x[y == 2][:1]) and predictor.predict(x[:1])[0] in predictor.class_names


def test_bad_data_exits_2_with_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert search(tmp_path / "empty", tmp_path / "r", "imagefolder") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: dataset.root") and "one folder per class" in err[0]
    assert not (tmp_path / "r" / "imagefolder" / "ray").exists()  # stopped before Ray


@pytest.mark.slow
def test_second_experiment_on_the_same_folder_reuses_the_cache(tmp_path, capsys):
    import os
    from pathlib import Path

    x, y = digit_images(n_per_class=10, size=16)
    root = write_class_folders(tmp_path / "data", x, y)
    (root / "one" / "bad.jpg").write_bytes(b"garbage")
    cache = Path(os.environ["TUNER_CACHE"]) / "images"
    before = set(cache.glob("*/images.npy")) if cache.exists() else set()
    args = ["--set", "dataset.image_size=12", "--set", "search.max_concurrent=1", "--no-retrain"]
    assert search(root, tmp_path / "r", "imagefolder", *args) == 0
    first = capsys.readouterr().err
    built = set(cache.glob("*/images.npy")) - before
    assert len(built) == 1 and "decoding imagefolder train at 12px" in first
    assert "warning: dataset.root" in first and "skipped 1 unreadable" in first  # the run went on
    mtime = next(iter(built)).stat().st_mtime_ns
    # another experiment, other split seed: same decoded images, nothing decoded again
    assert search(root, tmp_path / "r", "imagefolder", *args, "--set", "dataset.split.seed=5") == 0
    assert "decoding imagefolder" not in capsys.readouterr().err
    assert set(cache.glob("*/images.npy")) - before == built and next(iter(built)).stat().st_mtime_ns == mtime
    trials = pd.read_csv(tmp_path / "r" / "imagefolder" / "trials.csv")
    assert (trials["status"] == "TERMINATED").all() and np.isfinite(trials["val_accuracy"]).all()


@pytest.mark.slow
def test_a_set_larger_than_the_memory_tuner_may_use_searches_from_the_cache_and_is_decoded_once(
        tmp_path, capsys, monkeypatch):
    import json

    from tuner.data import cache

    x, y = digit_images(n_per_class=10, size=20)
    for split, part in (("train", slice(0, None, 2)), ("test", slice(1, None, 2))):
        write_class_folders(tmp_path / "data" / split, x[part], y[part])
    # 30 images at 48 px are 207 KB decoded: a 100 KB machine holds less than the set
    monkeypatch.setattr(cache, "available_memory", lambda: 100_000)
    assert search(tmp_path / "data", tmp_path / "r", "imagefolder", "--set", "dataset.image_size=48",
                  "--set", "dataset.split.test=official", "--set", "search.max_concurrent=1") == 0
    captured = capsys.readouterr()
    assert "more than the free memory (0.1 MB): trials read them from the cache" in captured.err
    # each shipped split decoded once, by the driver: not again by the trials nor by the retrain
    assert captured.err.count("decoding imagefolder train at 48px: 100%") == 1
    assert captured.err.count("decoding imagefolder test at 48px: 100%") == 1
    run = json.loads((tmp_path / "r" / "imagefolder" / "run.json").read_text())
    assert run["decoded"] == 30 and run["images_bytes"] == 30 * 48 * 48 * 3
    trials = pd.read_csv(tmp_path / "r" / "imagefolder" / "trials.csv")
    assert (trials["status"] == "TERMINATED").all() and np.isfinite(trials["val_accuracy"]).all()
    assert (tmp_path / "r" / "imagefolder" / "best" / "model.pt").is_file()
