"""The search plots (parallel coordinates, contour, history, intermediate values, Pareto front) from results
folders written by hand in the driver's format: trials.csv, epochs.csv and space.yaml."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tuner.metrics import pareto_front
from tuner.report import experiment as report
from tuner.report import search as search_plots
from tuner.spaces import parse_experiment

EPOCH_COLUMNS = ["trial_id", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time_s"]
SEARCH_PNGS = ("parallel_coordinates.png", "contour.png", "history.png", "intermediate.png")
SPACE = {
    "name": "exp", "family": "cnn", "metric": "val_accuracy", "mode": "max",
    "scheduler": {"name": "asha", "max_epochs": 9, "grace_period": 1, "reduction_factor": 3},
    "space": {"lr": {"loguniform": [1e-4, 1e-1]}, "dropout": {"uniform": [0.0, 0.5]},
              "optimizer": {"choice": ["sgd", "adam"]}, "blocks": {"int": [1, 4]},
              "fc": {"choice": [[], [64], [128, 64]]}},
}


def write_experiment(d: Path, n_trials: int = 14, space: dict | None = None, one_shot: bool = False) -> None:
    """A results folder as the driver writes it. val_accuracy grows with log(lr); ASHA stops most trials at
    epoch 1 or 3; the last trial failed (NaN metric, no epochs). one_shot: knn/features, one evaluation each."""
    space = space or SPACE
    rng = np.random.default_rng(1)
    d.mkdir(parents=True)
    (d / "space.yaml").write_text(yaml.safe_dump({**space, "name": d.name}, sort_keys=False))
    trials, epochs = [], []
    for i in range(n_trials - 1):
        lr = float(10 ** rng.uniform(-4, -1))
        final = 0.5 + 0.12 * (np.log10(lr) + 4) + rng.normal(0, 0.01)
        reached = 1 if one_shot else [1, 1, 1, 3, 3, 9][i % 6]
        tid = f"a{i:04d}"
        for e in range(1, reached + 1):
            v = final - (0 if one_shot else 0.2 / e)
            epochs.append({"trial_id": tid, "epoch": e, "train_loss": np.nan if one_shot else 1 / e,
                           "train_accuracy": np.nan if one_shot else v + 0.02, "val_loss": 1.2 / e,
                           "val_accuracy": v, "lr": np.nan if one_shot else lr, "time_s": 0.5})
        row = {"trial_id": tid, "status": "TERMINATED", "error": "", "lr": lr, "dropout": float(rng.uniform(0, 0.5)),
               "optimizer": ["sgd", "adam"][i % 2], "blocks": int(rng.integers(1, 5)),
               "fc": ["[]", "[64]", "[128, 64]"][i % 3], "epochs": reached,
               "val_accuracy": final - (0 if one_shot else 0.2 / reached), "val_loss": 1.2 / reached,
               "best_epoch": reached, "time_s": 0.5 * reached}
        trials.append({k: v for k, v in row.items() if k in space["space"] or k not in SPACE["space"]})
    trials.append({"trial_id": "zfail", "status": "ERROR", "error": "ValueError: boom", "lr": 0.05, "dropout": 0.1,
                   "optimizer": "sgd", "blocks": 2, "fc": "[64]", "epochs": 0, "val_accuracy": np.nan,
                   "val_loss": np.nan, "best_epoch": np.nan, "time_s": np.nan})
    trials[-1] = {k: v for k, v in trials[-1].items() if k in space["space"] or k not in SPACE["space"]}
    pd.DataFrame(trials).to_csv(d / "trials.csv", index=False)
    pd.DataFrame(epochs, columns=EPOCH_COLUMNS).to_csv(d / "epochs.csv", index=False)


def read(d: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    trials = pd.read_csv(d / "trials.csv", dtype={"trial_id": str})
    epochs = pd.read_csv(d / "epochs.csv", dtype={"trial_id": str})
    return trials, epochs, report.searched_params(parse_experiment(yaml.safe_load((d / "space.yaml").read_text())))


def png_ok(path: Path) -> tuple[int, int]:
    """Wide enough to read when opened (>= 1000 px), not absurd, and not a blank canvas."""
    with Image.open(path) as im:
        im.load()
        w, h = im.size
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert 1000 <= w <= 4000 and 500 <= h <= 3000, (path.name, w, h)
    assert pixels.std() > 10, f"{path.name} is blank"
    return w, h


def test_experiment_plots_write_every_search_plot(tmp_path):
    d = tmp_path / "exp"
    write_experiment(d)
    report.experiment_plots(d)
    for name in SEARCH_PNGS:
        png_ok(d / "plots" / name)
    assert not (d / "plots" / "pareto.png").exists() and not (d / "pareto.csv").exists()  # one objective


def test_parallel_coordinates_has_an_axis_per_parameter_plus_the_metric_log_where_log(tmp_path):
    d = tmp_path / "exp"
    write_experiment(d)
    trials, _, searched = read(d)
    axes = [search_plots.param_axis(k, searched[k], trials[k]) for k in searched]
    by = {a.name: a for a in axes}
    assert by["lr"].log and by["lr"].labels[0] == "0.0001" and by["lr"].labels[-1] == "0.1"
    assert not by["dropout"].log and not by["dropout"].categorical
    assert by["optimizer"].categorical and by["optimizer"].labels == ["sgd", "adam"]
    assert by["fc"].labels == ["[]", "[64]", "[128, 64]"]  # list options read back from YAML text in the csv
    assert not np.isnan(by["fc"].pos[:-1]).any()
    search_plots.plot_parallel_coordinates(trials, searched, "val_accuracy", "max", tmp_path / "pc.png", "exp")
    png_ok(tmp_path / "pc.png")


def test_contour_takes_the_two_most_important_parameters(tmp_path):
    d = tmp_path / "exp"
    write_experiment(d)
    trials, _, searched = read(d)
    importance = {"dropout": 0.7, "lr": 0.2, "blocks": 0.1}
    assert search_plots.contour_params(searched, importance, trials) == ["dropout", "lr"]
    assert search_plots.contour_params(searched, {}, trials) == ["lr", "dropout"]  # no importance: the space's order


def test_single_searched_parameter_has_no_contour(tmp_path):
    d = tmp_path / "one"
    write_experiment(d, space={**SPACE, "space": {"lr": SPACE["space"]["lr"]}})
    report.experiment_plots(d)
    assert not (d / "plots" / "contour.png").exists()
    for name in ("parallel_coordinates.png", "history.png", "intermediate.png"):
        png_ok(d / "plots" / name)


def test_one_evaluation_families_have_no_intermediate_values(tmp_path):
    d = tmp_path / "knn"
    write_experiment(d, one_shot=True)  # the plots read the one evaluation from the tables, not the family
    report.experiment_plots(d)
    assert not (d / "plots" / "intermediate.png").exists()
    for name in ("parallel_coordinates.png", "contour.png", "history.png"):
        png_ok(d / "plots" / name)


@pytest.mark.parametrize("n", [1, 2])
def test_a_smoke_run_of_one_or_two_trials_still_plots(tmp_path, n):
    d = tmp_path / "smoke"
    write_experiment(d, n_trials=n + 1)  # n finished + the failed one
    report.experiment_plots(d)
    for name in ("parallel_coordinates.png", "contour.png", "history.png"):
        png_ok(d / "plots" / name)


def test_all_failed_trials_still_plot(tmp_path):
    d = tmp_path / "bad"
    write_experiment(d, n_trials=1)
    report.experiment_plots(d)
    for name in ("parallel_coordinates.png", "contour.png", "history.png"):
        png_ok(d / "plots" / name)


def test_history_best_so_far_skips_failed_trials_and_follows_the_mode():
    y = np.array([np.nan, 0.5, 0.4, np.nan, 0.7, 0.6])
    got = search_plots.best_so_far(y, "max")
    assert np.isnan(got[0]) and list(got[1:]) == [0.5, 0.5, 0.5, 0.7, 0.7]
    assert list(search_plots.best_so_far(np.array([3.0, 1.0, 2.0]), "min")) == [3.0, 1.0, 1.0]


def test_history_uses_wall_time_when_epochs_have_timestamps():
    trials = pd.DataFrame({"trial_id": ["a", "b"], "time_s": [10.0, 10.0]})
    plain = pd.DataFrame({"trial_id": ["a", "b"], "epoch": [1, 1], "time_s": [10.0, 10.0]})
    t, label = search_plots.trial_end_times(trials, plain)
    assert list(t) == [10.0, 20.0] and "summed" in label  # no timestamps: the trials' own time added up
    stamped = plain.assign(timestamp=[1000.0, 1001.0])  # two trials side by side
    t, label = search_plots.trial_end_times(trials, stamped)
    assert list(t) == [10.0, 11.0] and "wall" in label


def test_multi_objective_run_writes_pareto_csv_and_png(tmp_path):
    d = tmp_path / "mo"
    space = {**SPACE, "metric": ["val_accuracy", "latency_ms"], "mode": ["max", "min"]}
    write_experiment(d, space=space)
    trials, epochs, searched = read(d)
    rng = np.random.default_rng(3)
    trials["latency_ms"] = np.where(trials["status"] == "ERROR", np.nan, rng.uniform(1, 10, len(trials)))
    trials.to_csv(d / "trials.csv", index=False)
    written = search_plots.plot_search(trials, epochs, searched, ["val_accuracy", "latency_ms"], ["max", "min"],
                                       d / "plots", name="mo")
    assert set(written) == {"parallel_coordinates", "contour", "history", "intermediate", "pareto"}
    png_ok(d / "plots" / "pareto.png")
    front = pd.read_csv(d / "pareto.csv", dtype={"trial_id": str})
    expect = pareto_front(trials, ["val_accuracy", "latency_ms"], ["max", "min"])
    assert list(front["trial_id"]) == list(expect["trial_id"]) and len(front) >= 1
    assert "zfail" not in set(front["trial_id"])


def test_the_experiments_plots_of_a_multi_objective_search_include_the_pareto_front(tmp_path):
    # what a search runs after it ends: the space's metric list once reached plot_search cut to its first
    # entry, so no search ever wrote plots/pareto.png
    d = tmp_path / "mo"
    write_experiment(d, space={**SPACE, "metric": ["val_accuracy", "latency_ms"], "mode": ["max", "min"]})
    trials = pd.read_csv(d / "trials.csv", dtype={"trial_id": str})
    trials["latency_ms"] = np.where(trials["status"] == "ERROR", np.nan, np.linspace(1, 10, len(trials)))
    trials.to_csv(d / "trials.csv", index=False)
    report.experiment_plots(d)
    png_ok(d / "plots" / "pareto.png")
    png_ok(d / "plots" / "learning_curves.png")
    assert len(pd.read_csv(d / "pareto.csv")) >= 1


def test_three_objectives_draw_every_pair(tmp_path):
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"trial_id": [f"t{i}" for i in range(20)], "status": ["TERMINATED"] * 20,
                      "val_accuracy": rng.uniform(0.5, 1, 20), "latency_ms": rng.uniform(1, 9, 20),
                      "num_params": rng.uniform(1e4, 1e6, 20)})
    front = search_plots.write_pareto(t, ["val_accuracy", "latency_ms", "num_params"], ["max", "min", "min"],
                                      tmp_path, "three")
    w, h = png_ok(tmp_path / "plots" / "pareto.png")
    assert w > h and len(front) == len(pd.read_csv(tmp_path / "pareto.csv"))


@pytest.mark.parametrize("metric, mode", [("val_accuracy", "max"), (["val_accuracy", "num_params"], ["max", "min"])])
def test_the_plots_mark_best_yamls_trial_on_a_tie(tmp_path, metric, mode):
    # two trials tie on the metric; best.yaml breaks the tie by val_loss, and the plots sorted by the metric
    # alone (a stable sort: the earlier trial) and marked the other one
    from tuner import spaces
    from tuner.tables import trial_row, write_tables

    text = (f"name: tie\nfamily: linear\ndataset: {{name: digits}}\nmetric: {metric}\nmode: {mode}\n"
            "scheduler: {name: fifo, max_epochs: 1}\nspace: {lr: {loguniform: [1.0e-3, 1.0]}}\n")
    (tmp_path / "s.yaml").write_text(text)
    exp = spaces.load(tmp_path / "s.yaml")
    d = tmp_path / "tie"
    d.mkdir()
    (d / "space.yaml").write_text(spaces.resolved_yaml(exp))
    rows = []
    for tid, lr, acc, loss in (("a", 0.01, 0.9, 0.5), ("b", 0.1, 0.9, 0.3), ("c", 0.5, 0.8, 0.2)):
        epochs = pd.DataFrame([{"training_iteration": 1, "epoch": 1, "val_accuracy": acc, "val_loss": loss,
                                "train_loss": 1.0, "train_accuracy": acc, "num_params": 650, "time_total_s": 1.0,
                                "time_this_iter_s": 1.0}])
        rows.append(trial_row(exp, tid, {"lr": lr}, epochs, None))
    best = write_tables(exp, rows, d)
    assert best["trial_id"] == "b"
    trials, epochs, searched = read(d)
    ranked, col = report.ranked_trials(trials, exp.metric, exp.mode)
    assert ranked["trial_id"].iloc[0] == "b"
    assert trials["trial_id"].iloc[search_plots._best_position(trials, col, exp.modes[0])] == "b"
    report.experiment_plots(d)
    png_ok(d / "plots" / "parallel_coordinates.png")
