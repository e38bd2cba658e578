"""A search never replaces a search of the same name unasked: over one that is there it exits 2 naming what is
there and the choices (--overwrite, --resume, --name), a --smoke result excepted; a warm start from the
experiment's own folder is refused before anything is removed; a search refused for missing data leaves no
folder behind, nor one refused for its resources; the header counts the trials that will run."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tuner import spaces
from tuner.cli import main

ROOT = Path(__file__).resolve().parents[1]
LINEAR = ROOT / "search_spaces" / "digits_linear.yaml"
NAME = "digits_linear"


def _finished(results: Path, smoke: bool | None = None) -> Path:
    """An experiment folder as a finished search leaves it, with an exported bundle the user would miss."""
    d = results / NAME
    for sub in ("best", "export", "ray/trial_1"):
        (d / sub).mkdir(parents=True)
    (d / "space.yaml").write_text(spaces.resolved_yaml(spaces.load(LINEAR, [])))
    pd.DataFrame([{"trial_id": "1", "status": "TERMINATED", "error": "", "lr": 0.01, "epochs": 3,
                   "val_accuracy": 0.9, "val_loss": 0.3}]).to_csv(d / "trials.csv", index=False)
    (d / "best.yaml").write_text(yaml.safe_dump({"trial_id": "1", "config": {"lr": 0.01}, "metrics": {}}))
    (d / "best" / "model.pt").write_bytes(b"the retrained model")
    (d / "export" / "model.pt").write_bytes(b"the user's bundle")
    (d / "export" / "model.onnx").write_bytes(b"the user's onnx model")
    (d / "ray" / "trial_1" / "result.json").write_text("{}\n")
    if smoke is not None:
        (d / "run.json").write_text(json.dumps({"smoke": smoke, "runs": 1, "search_s": 1.0}))
    return d


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock's (a search takes the lock before it looks at the data)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "search.lock"}


def _refused(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _suite(tmp_path: Path) -> Path:
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "both", "suite": [str(ROOT / "search_spaces" / "digits_knn.yaml"),
                                                               str(LINEAR)]}))
    return suite


@pytest.mark.parametrize("smoke_before", [None, False])
@pytest.mark.parametrize("how", ["again", "smoke", "suite"])
def test_a_search_over_one_that_is_there_is_refused_naming_it_and_the_choices(tmp_path, capsys, how, smoke_before):
    results = tmp_path / "results"
    d = _finished(results, smoke_before)
    before = _snapshot(d)
    space = _suite(tmp_path) if how == "suite" else LINEAR
    argv = ["search", "--space", str(space), "--results", str(results), "--no-dashboard"]
    line = _refused(capsys, argv + (["--smoke"] if how == "smoke" else []))
    assert str(d) in line and "1 trials in trials.csv" in line and "export/" in line, line
    assert "--overwrite" in line and "--resume" in line and "--name" in line, line
    assert _snapshot(d) == before
    # a suite checks every member before the first one (digits_knn, listed first) runs
    assert sorted(p.name for p in results.iterdir()) == [NAME]


def test_a_warm_start_from_the_experiments_own_folder_is_refused_before_anything_is_removed(tmp_path, capsys):
    results = tmp_path / "results"
    d = _finished(results, smoke=True)  # a smoke result, which would otherwise be replaced unasked
    before = _snapshot(d)
    line = _refused(capsys, ["search", "--space", str(LINEAR), "--results", str(results), "--no-dashboard",
                             "--overwrite", "--set", f"search.warm_start={d}"])
    assert "search.warm_start" in line and "own folder" in line, line
    assert _snapshot(d) == before


@pytest.mark.slow
def test_overwrite_replaces_a_search_and_a_smoke_result_is_replaced_unasked(tmp_path, capsys):
    results = tmp_path / "results"
    d = _finished(results)
    argv = ["search", "--space", str(LINEAR), "--results", str(results), "--no-dashboard", "--no-retrain", "--smoke"]
    assert main(argv + ["--overwrite"]) == 0
    assert not (d / "export").exists() and json.loads((d / "run.json").read_text())["smoke"] is True
    first = set(pd.read_csv(d / "trials.csv", dtype={"trial_id": str})["trial_id"])
    assert main(argv) == 0  # over a smoke result: no --overwrite needed
    second = set(pd.read_csv(d / "trials.csv", dtype={"trial_id": str})["trial_id"])
    assert len(second) == 2 and not first & second  # the second search's own trials, not added to the first's


def test_a_search_refused_for_missing_data_leaves_no_folder_behind(tmp_path, capsys):
    results = tmp_path / "results"
    line = _refused(capsys, ["search", "--space", str(ROOT / "search_spaces" / "cars_cnn.yaml"), "--results",
                             str(results), "--no-dashboard", "--set", f"dataset.root={tmp_path / 'nowhere'}"])
    assert "dataset.root" in line
    assert not (results / "cars_cnn").exists()
    # so `best` has nothing to suggest resuming, and `list` shows nothing
    line = _refused(capsys, ["best", "--results", str(results)])
    assert "no finished experiment" in line and "--resume" not in line


def test_a_search_refused_for_missing_data_leaves_an_earlier_search_as_it_was(tmp_path, capsys):
    results = tmp_path / "results"
    d = _finished(results)
    before = _snapshot(d)
    line = _refused(capsys, ["search", "--space", str(ROOT / "search_spaces" / "cars_cnn.yaml"), "--name", NAME,
                             "--results", str(results), "--no-dashboard", "--overwrite",
                             "--set", f"dataset.root={tmp_path / 'nowhere'}"])
    assert "dataset.root" in line
    assert _snapshot(d) == before



@pytest.mark.slow
@pytest.mark.parametrize("before", ["none", "finished"])
def test_a_search_refused_for_its_resources_leaves_the_folder_as_it_was(tmp_path, capsys, before):
    """Ray is up when a trial's CPUs are checked against the cluster: the folder is emptied after that check,
    so a refused --overwrite loses no earlier search, and a refused first search leaves no stub for `list`."""
    results = tmp_path / "results"
    d = _finished(results) if before == "finished" else results / NAME
    was = _snapshot(d) if d.exists() else None
    line = _refused(capsys, ["search", "--space", str(LINEAR), "--results", str(results), "--no-dashboard",
                             "--overwrite", "--set", "resources.cpu=64"])
    assert "resources.cpu: 64 per trial, but no node has that many" in line
    assert (_snapshot(d) if d.exists() else None) == was

def test_the_header_counts_every_point_of_a_grid():
    from tuner.search.searchers import planned_trials

    knn = spaces.load(ROOT / "search_spaces" / "digits_knn.yaml", [])
    assert planned_trials(knn) == 7 * 3 * 2 * 2
    assert planned_trials(spaces.load(ROOT / "search_spaces" / "digits_knn.yaml", ["search.num_samples=2"])) == 168
    assert planned_trials(spaces.load(LINEAR, [])) == 12


@pytest.mark.slow
def test_a_grid_search_runs_the_trials_its_header_announced(tmp_path, capsys):
    space = tmp_path / "grid.yaml"
    space.write_text(yaml.safe_dump({
        "name": "grid", "family": "knn", "dataset": {"name": "digits", "limit": 300}, "fixed": {"backbone": "pixels"},
        "search": {"algorithm": "grid", "max_concurrent": 2}, "scheduler": {"name": "fifo", "max_epochs": 1},
        "space": {"k": {"grid": [1, 3, 5]}, "weights": {"grid": ["uniform", "distance"]}}}))
    assert main(["search", "--space", str(space), "--results", str(tmp_path / "r"), "--no-dashboard",
                 "--no-retrain"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("== grid"))
    assert "(knn, 6 trials," in header, header
    assert len(pd.read_csv(tmp_path / "r" / "grid" / "trials.csv")) == 6
