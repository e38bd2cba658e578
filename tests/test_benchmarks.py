"""Every benchmark script runs in its --quick mode and prints its figures (so the scripts do not rot)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("bench_*.py"))
# whose --quick is longer than a test: run at a tiny size by a test of its own below
OWN_TEST = {"bench_seed_scale"}


def test_every_benchmark_is_listed_in_the_benchmarks_readme():
    readme = (BENCH / "README.md").read_text()
    for name in SCRIPTS:
        assert f"`{name}.py`" in readme, name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - OWN_TEST))
def test_benchmark_quick_mode_runs(name, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--quick"])
    spec.loader.exec_module(module)
    module.main(["--quick"])
    out = capsys.readouterr().out
    assert out.strip(), f"{name} printed nothing"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the data maker's worker processes find its functions by module name
    spec.loader.exec_module(module)
    return module


def test_the_cars_like_folder_has_cars_sizes_and_split_and_is_made_once(tmp_path):
    from PIL import Image

    cars = _load("cars_like")
    made = cars.make_cars_like(tmp_path / "cars", images=300, workers=2, say=lambda m: None)
    train = sorted((tmp_path / "cars" / "train").rglob("*.jpg"))
    test = sorted((tmp_path / "cars" / "test").rglob("*.jpg"))
    assert (len(train), len(test)) == (151, 149) == (made["train"], 300 - made["train"])  # Cars' 8,144 : 8,041
    assert len({p.parent.name for p in train}) == 151 and len({p.parent.name for p in train + test}) == 196
    assert 550 < made["mean_width"] < 850 and 380 < made["mean_height"] < 580 and made["max_width"] <= 1600
    with Image.open(train[0]) as im:
        assert im.format == "JPEG" and im.size[0] >= 100
    # the same (index, seed) gives the same file; a complete folder is reused, not made again
    assert cars.render(0, 0, 0)[0] == train[0].read_bytes()
    stamp = train[0].stat().st_mtime_ns
    assert cars.make_cars_like(tmp_path / "cars", images=300, say=lambda m: None) == made
    assert train[0].stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_seed_scale_runs_every_stage_at_a_tiny_size_and_writes_its_figures(tmp_path, capfd):
    bench = _load("bench_seed_scale")
    out = bench.main(["--quick", "--images", "300", "--json", str(tmp_path / "seed.json")])
    written = json.loads((tmp_path / "seed.json").read_text())
    for key in ("images", "cores", "decode_s", "prepare_s", "decode_img_per_s_per_core", "decoded_bytes",
                "peak_rss_driver_bytes", "peak_rss_trial_bytes", "search_s", "trials", "gpu_busy_fraction",
                "knn_vs_sklearn", "stages"):
        assert key in written, key
    assert written["images"] == 300 and written["decoded_bytes"] == 300 * 224 * 224 * 3
    assert out["transfer"]["trials"] == 2 and out["knn"]["trials"] == 13  # the 12-point grid and its warm start
    assert out["knn"]["sklearn_agrees"] is True
    # the trials got the cache's paths, not the pixels: the object store holds next to nothing
    assert out["transfer"]["object_store_bytes"] < 10 * 2**20
    captured = capfd.readouterr()  # the decode stage's subprocess writes its progress to file descriptor 2
    # progress of the decode (the decode stage's own, and the search's through the CLI) and of the extraction
    assert "decoding imagefolder train at 224px: 100%" in captured.err
    assert "decoding imagefolder train at 64px: 100%" in captured.out and "embedding train: 100%" in captured.out
    assert "knn vs scikit-learn refits" in captured.out
