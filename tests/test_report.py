"""Tables, plots and ensembles from results folders: a hand-written fixture folder in the contract's format,
and one real smoke suite (two members + their ensemble) driven through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tuner.report import compare, experiment, model
from tuner.report.importance import importance
from tuner.cli import main
from tuner.errors import UserError
from tuner.spaces import SchedulerConfig, parse_experiment

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
CONTRACT_COLUMNS = ["experiment", "family", "accuracy", "loss", "precision_macro", "recall_macro", "f1_macro",
                    "precision_weighted", "recall_weighted", "f1_weighted", "balanced_accuracy", "auc_ovr", "tpr",
                    "tnr", "fpr", "fnr", "num_test", "num_params", "train_time_s"]


# --------------------------------------------------------------------------- a hand-written results folder
def _metrics(acc: float, loss: float) -> dict:
    m = {k: acc for k in ("precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted",
                          "f1_weighted", "balanced_accuracy", "tpr")}
    m.update(accuracy=acc, loss=loss, auc_ovr=0.987654321, tnr=0.99, fpr=0.01, fnr=1 - acc, num_test=360,
             num_params=12345, train_time_s=12.3456)
    return m


SPACE = {
    "name": "exp", "family": "mlp", "metric": "val_accuracy", "mode": "max",
    "scheduler": {"name": "asha", "max_epochs": 9, "grace_period": 1, "reduction_factor": 3},
    "fixed": {"batchnorm": True},
    "space": {"lr": {"loguniform": [1e-4, 1e-1]}, "dropout": {"uniform": [0.0, 0.5]},
              "hidden": {"choice": [[64], [128, 64]]}, "batchnorm": {"choice": [True, False]}},
}


def _write_experiment(d: Path, family: str, acc: float | None, loss: float = 0.3, n_trials: int = 12) -> None:
    """trials.csv / epochs.csv / space.yaml (and best/metrics.json when acc is given), as the driver writes them.
    val_accuracy rises with log(lr) and ignores dropout, so importance has a right answer."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    (d / "space.yaml").write_text(yaml.safe_dump({**SPACE, "name": d.name, "family": family}, sort_keys=False))
    trials, epochs = [], []
    for i in range(n_trials):
        lr = float(10 ** rng.uniform(-4, -1))
        final = 0.5 + 0.15 * (np.log10(lr) + 4) + rng.normal(0, 0.005)
        reached = [1, 1, 1, 1, 1, 1, 3, 3, 3, 9, 9, 9][i % 12]  # ASHA: most stop at the first rung
        tid = f"t{i:04d}"
        for e in range(1, reached + 1):
            v = final - 0.2 / e
            epochs.append({"trial_id": tid, "epoch": e, "train_loss": 1 / e, "train_accuracy": v + 0.02,
                           "val_loss": 1.2 / e, "val_accuracy": v, "lr": lr, "time_s": 0.1})
        trials.append({"trial_id": tid, "status": "TERMINATED", "error": "", "lr": lr,
                       "dropout": float(rng.uniform(0, 0.5)), "hidden": "[64]" if i % 2 else "[128, 64]",
                       "batchnorm": True, "epochs": reached, "val_accuracy": final - 0.2 / reached,
                       "val_loss": 1.2 / reached, "best_epoch": reached, "time_s": 0.1 * reached})
    trials.append({"trial_id": "terr", "status": "ERROR", "error": "ValueError: boom", "lr": 0.01, "dropout": 0.1,
                   "hidden": "[64]", "batchnorm": True, "epochs": 0, "val_accuracy": np.nan, "val_loss": np.nan,
                   "best_epoch": np.nan, "time_s": np.nan})
    pd.DataFrame(trials).to_csv(d / "trials.csv", index=False)
    pd.DataFrame(epochs).to_csv(d / "epochs.csv", index=False)
    if acc is not None:
        (d / "best").mkdir()
        (d / "best" / "metrics.json").write_text(json.dumps(_metrics(acc, loss)))


@pytest.fixture()
def folder(tmp_path) -> Path:
    r = tmp_path / "results"
    _write_experiment(r / "lin", "linear", 0.91, loss=0.40)
    _write_experiment(r / "cnn", "cnn", 0.97, loss=0.10)
    _write_experiment(r / "mlp_a", "mlp", 0.95, loss=0.30)
    _write_experiment(r / "mlp_b", "mlp", 0.95, loss=0.20)  # same accuracy, lower loss: ranks first of the two
    _write_experiment(r / "unfinished", "mlp", None)  # searched but never retrained: not in the table
    return r


def _png_ok(path: Path, min_w: int = 400, min_h: int = 250, max_side: int = 2500) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        w, h = im.size
        pixels = np.asarray(im.convert("L"))
    assert min_w <= w <= max_side and min_h <= h <= max_side, (path.name, w, h)
    assert pixels.std() > 5, f"{path.name} is blank"
    return w, h


# --------------------------------------------------------------------------- the comparison table
def test_comparison_has_every_contract_column_best_accuracy_first_ties_by_loss(folder):
    df = compare.write_comparison(folder)
    assert list(df.columns) == CONTRACT_COLUMNS
    assert list(df["experiment"]) == ["cnn", "mlp_b", "mlp_a", "lin"]
    assert list(df["family"]) == ["cnn", "mlp", "mlp", "linear"]
    md = (folder / "comparison.md").read_text().splitlines()
    assert md[0] == "| " + " | ".join(CONTRACT_COLUMNS) + " |"
    assert len(md) == 2 + 4 and md[2].startswith("| cnn | cnn | 0.9700 | 0.1000 |")
    assert "| 0.9877 |" in md[2] and md[2].endswith("| 360 | 12345 | 12.3 |")  # 4 places, counts whole, time 0.1 s
    csv = pd.read_csv(folder / "comparison.csv")
    assert list(csv.columns) == CONTRACT_COLUMNS and list(csv["experiment"]) == list(df["experiment"])
    assert csv.loc[0, "auc_ovr"] == 0.9877 and csv.loc[0, "train_time_s"] == 12.3


@pytest.mark.parametrize("fmt", ["md", "csv", "html", "tex"])
def test_compare_prints_and_writes_each_format(folder, fmt, capsys):
    assert main(["compare", "--results", str(folder), "--format", fmt]) == 0
    out = capsys.readouterr().out
    written = (folder / f"comparison.{fmt}").read_text()
    assert out.strip() == written.strip()
    assert (folder / "comparison.md").is_file() and (folder / "comparison.csv").is_file()  # the contract's two
    rows = out[out.index("<tbody>"):] if fmt == "html" else out  # html: a whole page, its style and script first
    positions = [rows.index(n) for n in ("cnn", "mlp\\_b" if fmt == "tex" else "mlp_b", "lin")]
    assert positions == sorted(positions)
    for col in ("balanced" if fmt == "tex" else "balanced_accuracy", "auc", "fnr", "num", "train"):
        assert col in out
    assert "0.9877" in out and "0.987654321" not in out
    if fmt == "html":
        assert out.count("</tr>") == 5  # header + 4 experiments
        assert out.startswith("<!DOCTYPE html>") and "<script>" in out  # a page that opens on its own, sortable
    if fmt == "tex":
        assert "\\begin{tabular}" in out and "\\toprule" in out


def test_compare_named_experiments_only_and_unknown_name_exits_2(folder, capsys):
    assert main(["compare", "lin", str(folder / "mlp_a"), "--results", str(folder)]) == 0
    df = pd.read_csv(folder / "comparison.csv")
    assert list(df["experiment"]) == ["mlp_a", "lin"]
    assert main(["compare", "unfinished", "--results", str(folder)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unfinished")


# --------------------------------------------------------------------------- the search's plots
def test_experiment_plots_open_with_sensible_dimensions(folder):
    experiment.experiment_plots(folder / "mlp_a")
    for name in ("learning_curves.png", "parameters.png", "importance.png", "rungs.png"):
        _png_ok(folder / "mlp_a" / "plots" / name)


def test_parameter_plot_uses_log_axis_for_log_distributions_only(folder):
    trials = pd.read_csv(folder / "lin" / "trials.csv", dtype={"trial_id": str})
    ranked, col = experiment.ranked_trials(trials, "val_accuracy", "max")
    searched = experiment.searched_params(parse_experiment(SPACE))
    assert "batchnorm" not in searched  # pinned by fixed:
    scales = experiment.plot_parameters(ranked, searched, col, "max", folder / "p.png")
    assert scales == {"lr": "log", "dropout": "linear", "hidden": "linear"}
    assert ranked.iloc[0]["val_accuracy"] == trials["val_accuracy"].max() and "terr" not in set(ranked["trial_id"])


def test_importance_ranks_the_parameter_that_drives_the_metric(folder):
    trials = pd.read_csv(folder / "lin" / "trials.csv", dtype={"trial_id": str})
    ranked, col = experiment.ranked_trials(trials, "val_accuracy", "max")
    searched = experiment.searched_params(parse_experiment(SPACE))
    imp = importance(ranked, searched, col, "max")
    assert set(imp) == {"lr", "dropout", "hidden"}
    assert max(imp, key=imp.get) == "lr" and imp["lr"] > 0.5
    assert importance(ranked.head(2), searched, col, "max") == {}  # too few to rank


def test_asha_rungs_are_its_milestones_below_max_epochs():
    asha = SchedulerConfig(name="asha", grace_period=1, reduction_factor=3, max_epochs=30)
    assert experiment.rung_epochs(asha) == [1, 3, 9, 27]
    halves = SchedulerConfig(name="asha", grace_period=2, reduction_factor=2, max_epochs=8)
    assert experiment.rung_epochs(halves) == [2, 4]
    assert experiment.rung_epochs(SchedulerConfig(name="fifo", max_epochs=8)) == []


def test_plots_survive_an_experiment_whose_trials_all_failed(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "space.yaml").write_text(yaml.safe_dump(SPACE))
    pd.DataFrame([{"trial_id": "a", "status": "ERROR", "error": "boom", "lr": 0.1, "dropout": 0.1, "hidden": "[64]",
                   "epochs": 0, "val_accuracy": np.nan, "val_loss": np.nan}]).to_csv(d / "trials.csv", index=False)
    pd.DataFrame(columns=["trial_id", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                          "time_s"]).to_csv(d / "epochs.csv", index=False)
    experiment.experiment_plots(d)
    for name in ("learning_curves.png", "parameters.png", "importance.png", "rungs.png"):
        assert (d / "plots" / name).is_file()


def test_one_evaluation_families_get_score_bars_instead_of_curves(tmp_path):
    d = tmp_path / "knn"
    _write_experiment(d, "mlp", None)  # the plots read the one evaluation from the tables, not the family
    epochs = pd.read_csv(d / "epochs.csv")
    epochs = epochs[epochs["epoch"] == 1].assign(train_loss=np.nan, train_accuracy=np.nan, lr=np.nan)
    epochs.to_csv(d / "epochs.csv", index=False)  # knn and features report once, with val_* keys only
    trials = pd.read_csv(d / "trials.csv")
    trials.loc[trials["epochs"] > 0, "epochs"] = 1
    trials.to_csv(d / "trials.csv", index=False)
    experiment.experiment_plots(d)
    w, h = _png_ok(d / "plots" / "learning_curves.png")
    assert w > h  # two bar panels side by side, not the 2x2 curve grid
    for name in ("parameters.png", "importance.png", "rungs.png"):
        _png_ok(d / "plots" / name, min_h=200)


# --------------------------------------------------------------------------- the retrained model's report
def test_confusion_matrix_stays_legible_at_196_classes(tmp_path):
    rng = np.random.default_rng(0)
    k = 196
    names = [f"Make {i % 7} Model {i} Sedan {2000 + i % 12}" for i in range(k)]
    y = np.repeat(np.arange(k), 5)
    logits = rng.normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += 3
    logits[y == 3, 5] += 6  # class 3 is mostly taken for class 5
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 0.5 / e, "val_loss": 1.1 / e,
                "val_accuracy": 1 - 0.6 / e, "lr": 0.01} for e in range(1, 6)]
    model.test_report(tmp_path, y, proba, names, history)
    w, h = _png_ok(tmp_path / "confusion_matrix.png", min_w=1000, min_h=800, max_side=2000)
    _png_ok(tmp_path / "curves.png")
    cm = pd.read_csv(tmp_path / "confusion_matrix.csv", index_col=0)
    assert cm.shape == (k, k) and int(cm.values.sum()) == len(y)
    report = pd.read_csv(tmp_path / "classification_report.csv", index_col=0)
    assert len(report) == k + 3 and list(report.index[-3:]) == ["accuracy", "macro avg", "weighted avg"]
    # the accuracy as scikit-learn's text report has it: under f1-score, with the test set's size as support
    assert report.loc["accuracy", "support"] == len(y) and report.loc["accuracy"][["precision", "recall"]].isna().all()
    assert report.loc["accuracy", "f1-score"] == pytest.approx((proba.argmax(1) == y).mean())
    assert model.top_confusions(cm.values, names, 1)[0][:2] == (names[3], names[5])


def test_small_confusion_matrix_gets_names_and_counts(tmp_path):
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    model.test_report(tmp_path, y, proba, ["cat", "dog", "bird"], history=None)
    _png_ok(tmp_path / "confusion_matrix.png", min_w=300, min_h=300)
    assert not (tmp_path / "curves.png").exists()  # no training history (an ensemble): no curves
    assert pd.read_csv(tmp_path / "confusion_matrix.csv", index_col=0).loc["cat", "dog"] == 1


# --------------------------------------------------------------------------- a real suite with an ensemble
def _suite(tmp: Path, ensemble: list[str], members=("digits_linear.yaml", "digits_mlp.yaml")) -> Path:
    f = tmp / "suite.yaml"
    f.write_text(yaml.safe_dump({"name": "dsuite", "suite": [str(SPACES / m) for m in members],
                                 "ensemble": ensemble}))
    return f


@pytest.fixture(scope="module")
def suite_results(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("suite")
    results = tmp / "results"
    code = main(["search", "--space", str(_suite(tmp, ["digits_linear", "digits_mlp"])), "--smoke",
                 "--results", str(results), "--no-dashboard"])
    assert code == 0
    return results


@pytest.mark.slow
def test_suite_writes_one_comparison_with_an_ensemble_row(suite_results):
    df = pd.read_csv(suite_results / "comparison.csv")
    assert list(df.columns) == CONTRACT_COLUMNS
    assert set(df["experiment"]) == {"digits_linear", "digits_mlp", "dsuite_ensemble"}
    assert df.set_index("experiment").loc["dsuite_ensemble", "family"] == "ensemble"
    assert list(df["accuracy"]) == sorted(df["accuracy"], reverse=True)
    assert df[CONTRACT_COLUMNS[2:]].notna().all().all()
    md = (suite_results / "comparison.md").read_text()
    assert md.count("\n") == 2 + 3
    for exp in ("digits_linear", "digits_mlp"):
        for name in ("learning_curves.png", "parameters.png", "importance.png", "rungs.png"):
            _png_ok(suite_results / exp / "plots" / name)
        _png_ok(suite_results / exp / "best" / "confusion_matrix.png", min_w=300, min_h=300)
        _png_ok(suite_results / exp / "best" / "curves.png")


@pytest.mark.slow
def test_ensemble_is_the_mean_of_the_members_probabilities(suite_results):
    import tuner
    from tuner.data import prepare
    from tuner.settings import cache_dir
    from tuner.metrics import classification_metrics
    from tuner.spaces import parse_experiment

    exp = parse_experiment(yaml.safe_load((suite_results / "digits_linear" / "space.yaml").read_text()))
    data = prepare(exp.dataset, cache_dir=cache_dir(), progress=False)
    probas = [tuner.load(suite_results / m / "best").predict_proba(data.x_test)
              for m in ("digits_linear", "digits_mlp")]
    expected = classification_metrics(data.y_test, np.mean(probas, axis=0))
    got = json.loads((suite_results / "dsuite_ensemble" / "best" / "metrics.json").read_text())
    for k in ("accuracy", "loss", "f1_macro", "auc_ovr"):
        assert got[k] == pytest.approx(expected[k], abs=1e-6)
    members = yaml.safe_load((suite_results / "dsuite_ensemble" / "ensemble.yaml").read_text())["members"]
    assert set(members) == {"digits_linear", "digits_mlp"}
    _png_ok(suite_results / "dsuite_ensemble" / "best" / "confusion_matrix.png", min_w=300, min_h=300)


@pytest.mark.slow
def test_ensemble_refuses_members_tested_on_other_images(suite_results, tmp_path):
    import shutil

    from tuner import ensemble

    r = tmp_path / "results"
    for m in ("digits_linear", "digits_mlp"):
        shutil.copytree(suite_results / m, r / m, ignore=shutil.ignore_patterns("ray"))
    split = dict(np.load(r / "digits_mlp" / "split.npz"))
    split["test"] = split["test"][::-1][:-1]
    np.savez(r / "digits_mlp" / "split.npz", **split)
    with pytest.raises(UserError, match="tested on different images"):
        ensemble.build(r, "e", ["digits_linear", "digits_mlp"])
    space = yaml.safe_load((r / "digits_mlp" / "space.yaml").read_text())
    space["dataset"]["split"]["seed"] = 1
    (r / "digits_mlp" / "space.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(UserError, match="dataset.split"):
        ensemble.build(r, "e", ["digits_linear", "digits_mlp"])


@pytest.mark.parametrize("ensemble, message", [(["digits_linear", "nope"], "nope"),
                                               (["digits_linear"], "at least two")])
def test_bad_ensemble_exits_2_before_anything_runs(tmp_path, capsys, ensemble, message):
    results = tmp_path / "results"
    code = main(["search", "--space", str(_suite(tmp_path, ensemble)), "--smoke", "--results", str(results),
                 "--no-dashboard"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and "suite.yaml" in err
    assert not results.exists()  # nothing ran


def test_plots_and_importance_skip_a_nested_option_no_trial_drew(tmp_path):
    # a 4-level conditional whose deepest choice was never reached: its column is empty in trials.csv, and
    # Optuna's CategoricalDistribution([]) raised "The choices must contain one or more elements"
    space = {"name": "deep", "family": "mlp", "metric": "val_accuracy", "mode": "max",
             "scheduler": {"name": "fifo", "max_epochs": 1},
             "space": {"lr": {"loguniform": [1e-4, 1e-1]},
                       "optimizer": {"choice": {"adam": None, "sgd": {"momentum": {"choice": {
                           0.9: {"nesterov": {"choice": {True: {"label_smoothing": {"choice": [0.0, 0.1]}},
                                                         False: None}}},
                           0.5: None}}}}}}}
    d = tmp_path / "deep"
    d.mkdir()
    (d / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    rng = np.random.default_rng(0)
    rows = [{"trial_id": f"t{i}", "status": "TERMINATED", "error": "", "lr": float(10 ** rng.uniform(-4, -1)),
             "optimizer": "adam" if i % 2 else "sgd", "momentum": np.nan if i % 2 else 0.5, "nesterov": np.nan,
             "label_smoothing": np.nan, "epochs": 1, "val_accuracy": 0.5 + 0.01 * i, "val_loss": 1.0 - 0.01 * i,
             "best_epoch": 1, "time_s": 0.1} for i in range(8)]
    pd.DataFrame(rows).to_csv(d / "trials.csv", index=False)
    pd.DataFrame([{"trial_id": r["trial_id"], "epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5,
                   "val_loss": r["val_loss"], "val_accuracy": r["val_accuracy"], "lr": r["lr"], "time_s": 0.1}
                  for r in rows]).to_csv(d / "epochs.csv", index=False)
    trials = pd.read_csv(d / "trials.csv", dtype={"trial_id": str})
    imp = importance(trials, experiment.searched_params(parse_experiment(space)), "val_accuracy", "max")
    assert "nesterov" not in imp and "label_smoothing" not in imp and "lr" in imp
    experiment.experiment_plots(d)
    for name in ("parameters.png", "importance.png"):
        _png_ok(d / "plots" / name, min_h=200)
