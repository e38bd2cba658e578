"""tuner/tables.py: what a trial's rows are, and the order the live tables are written in."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

import tuner.tables as tables
from tuner.spaces import load

ROOT = Path(__file__).resolve().parents[1]


def _epochs(n: int) -> pd.DataFrame:
    return pd.DataFrame({"training_iteration": range(1, n + 1), "val_accuracy": [0.5 + 0.1 * i for i in range(n)],
                         "val_loss": [1.0 - 0.1 * i for i in range(n)], "time_this_iter_s": [0.1] * n})


def test_a_reader_between_the_two_writes_finds_every_listed_trials_epochs(tmp_path, monkeypatch):
    # the live tables are two files written one after the other while the search runs; `tuner list` or a
    # notebook may read them in between (CI once saw trials.csv list four trials and epochs.csv one)
    exp = load(ROOT / "search_spaces" / "digits_cnn.yaml")
    seen = []
    real = tables.replace

    def watching(path: Path, text: str) -> None:
        if path.name == "trials.csv":
            listed = set(pd.read_csv(io.StringIO(text), dtype={"trial_id": str})["trial_id"])
            written = set(pd.read_csv(path.parent / "epochs.csv", dtype={"trial_id": str})["trial_id"])
            seen.append(listed <= written)
        real(path, text)

    monkeypatch.setattr(tables, "replace", watching)
    done = [tables.trial_row(exp, "a", exp.constants, _epochs(3), None)]
    tables.write_tables(exp, done, tmp_path)
    done.append(tables.trial_row(exp, "b", exp.constants, _epochs(2), None))
    running = [tables.trial_row(exp, "c", exp.constants, _epochs(1), None)[1]]
    tables.write_tables(exp, done, tmp_path, running)
    assert seen == [True, True]
    assert set(pd.read_csv(tmp_path / "epochs.csv", dtype={"trial_id": str})["trial_id"]) == {"a", "b", "c"}
    assert list(pd.read_csv(tmp_path / "trials.csv", dtype={"trial_id": str})["trial_id"]) == ["a", "b"]


def test_a_trial_that_never_reported_has_a_row_but_no_epochs():
    exp = load(ROOT / "search_spaces" / "digits_cnn.yaml")
    row, epochs = tables.trial_row(exp, "x", exp.constants, None, "worker died")
    assert epochs is None and row["status"] == "ERROR" and row["error"] == "worker died" and row["epochs"] == 0


def test_an_int_that_only_some_trials_drew_stays_a_whole_number_in_trials_csv(tmp_path):
    exp = load(ROOT / "search_spaces" / "digits_cnn.yaml")
    drew = tables.trial_row(exp, "a", {**exp.constants, "convs_per_block": 2}, _epochs(2), None)
    did_not = tables.trial_row(exp, "b", {k: v for k, v in exp.constants.items() if k != "convs_per_block"},
                               _epochs(2), None)
    tables.write_tables(exp, [drew, did_not], tmp_path)
    column = (tmp_path / "trials.csv").read_text().splitlines()[0].split(",").index("convs_per_block")
    assert [line.split(",")[column] for line in (tmp_path / "trials.csv").read_text().splitlines()[1:]] == ["2", ""]


def test_best_epoch_stays_a_whole_number_beside_a_failed_trial(tmp_path):
    exp = load(ROOT / "search_spaces" / "digits_cnn.yaml")
    ok = tables.trial_row(exp, "a", exp.constants, _epochs(3), None)
    failed = tables.trial_row(exp, "b", exp.constants, None, "loss is nan")
    tables.write_tables(exp, [ok, failed], tmp_path)
    lines = (tmp_path / "trials.csv").read_text().splitlines()
    column = lines[0].split(",").index("best_epoch")
    assert [line.split(",")[column] for line in lines[1:]] == ["3", ""]
