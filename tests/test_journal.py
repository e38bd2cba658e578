"""The study in optuna.journal holds what trials.csv and epochs.csv hold (the same trials, states and values),
however it drifted: rebuilt from the tables when it cannot be read, made equal to them when a run ends. On a
results folder written by the tables' own writer (no Ray run)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from tuner import spaces
from tuner.cli import main
from tuner.errors import UserError
from tuner.search import study
from tuner.tables import trial_row, write_tables

ROOT = Path(__file__).resolve().parents[1]
MAX_EPOCHS = 4
# (trial, epochs run, error): ran to the end, stopped at a rung, failed, ran to the end
TRIALS = [("t0", 4, None), ("t1", 2, None), ("t2", 1, "train_loss is nan at epoch 1"), ("t3", 4, None)]


@pytest.fixture()
def folder(tmp_path) -> tuple[spaces.Experiment, Path]:
    exp = spaces.load(ROOT / "search_spaces" / "digits_cnn.yaml", [f"scheduler.max_epochs={MAX_EPOCHS}"])
    d = tmp_path / "results" / exp.name
    d.mkdir(parents=True)
    (d / "space.yaml").write_text(spaces.resolved_yaml(exp))
    rng = np.random.default_rng(0)
    rows = []
    for i, (tid, n, error) in enumerate(TRIALS):
        acc = np.sort(rng.uniform(0.3, 0.99, n))[::-1 if i == 3 else 1]  # t3 peaks at its first epoch
        df = pd.DataFrame({"training_iteration": range(1, n + 1), "epoch": range(1, n + 1), "val_accuracy": acc,
                           "val_loss": 1 - acc, "train_loss": 1 - acc, "train_accuracy": acc, "lr": 1e-3,
                           "time_this_iter_s": 1.0, "time_total_s": np.arange(1, n + 1, dtype=float)})
        config = {**exp.constants, "lr": 1e-3 * (i + 1), "batch_size": 32, "channels": 16, "convs_per_block": 1,
                  "dropout": 0.1, "optimizer": "adam", "weight_decay": 1e-5}
        rows.append(trial_row(exp, tid, config, df, error))
    write_tables(exp, rows, d)
    return exp, d


def _journal(exp, d: Path) -> dict[str, optuna.trial.FrozenTrial]:
    trials = study.load(exp, d).get_trials()
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == len(trials)  # one a trial
    return {t.user_attrs["ray_trial_id"]: t for t in trials}


def test_a_journal_rebuilt_from_the_tables_holds_their_trials_states_and_values(folder, study_matches_tables):
    exp, d = folder
    assert study.rebuild(exp, d) == len(TRIALS)
    study_matches_tables(d, MAX_EPOCHS)
    assert study.differences(exp, d) == []
    states = {tid: t.state.name for tid, t in _journal(exp, d).items()}
    assert states == {"t0": "COMPLETE", "t1": "PRUNED", "t2": "FAIL", "t3": "COMPLETE"}


def _drifted(exp, d: Path) -> None:
    """The journal of the issue's SIGKILLs: a finished trial PRUNED at a lower value, a phantom asked for
    after Ray's last snapshot (RUNNING), a trial run again and told twice, one missing."""
    s = optuna.create_study(storage=study.storage(d), study_name=exp.name, direction="maximize")
    right = {t.user_attrs["ray_trial_id"]: t for t in study.expected(exp, d)}
    wrong = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, value=0.392, params=right["t0"].params,
                                      distributions=right["t0"].distributions, intermediate_values={1: 0.392},
                                      user_attrs={"ray_trial_id": "t0"})
    s.add_trials([wrong, right["t1"], right["t2"], right["t2"]])
    phantom = s.ask()
    phantom.set_user_attr("ray_trial_id", "phantom")


def test_reconcile_makes_a_drifted_journal_equal_to_the_tables_and_says_so(folder, study_matches_tables):
    exp, d = folder
    _drifted(exp, d)
    assert len(study.differences(exp, d)) >= 4
    said = []
    study.reconcile(exp, d, said.append)
    study_matches_tables(d, MAX_EPOCHS)
    assert len(said) == 1 and "made equal to trials.csv" in said[0]
    study.reconcile(exp, d, said.append)  # equal: nothing rewritten, nothing said
    assert len(said) == 1


DAMAGE = {
    "bytes appended": lambda p: p.write_bytes(p.read_bytes() + b"\x00\xff{not json\n"),
    "truncated mid-line": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3]),
    "first lines cut": lambda p: p.write_bytes(b"\n".join(p.read_bytes().split(b"\n")[2:])),
    "emptied": lambda p: p.write_bytes(b""),
    "binary garbage": lambda p: p.write_bytes(bytes(range(256)) * 8),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_journal_is_rebuilt_from_the_tables_with_one_warning(folder, damage, study_matches_tables):
    exp, d = folder
    study.rebuild(exp, d)
    DAMAGE[damage](d / "optuna.journal")
    said = []
    study.repair(exp, d, said.append)
    study_matches_tables(d, MAX_EPOCHS)
    assert len(said) == 1 and said[0].startswith("warning: ") and "rebuilt from trials.csv" in said[0], said


def test_a_missing_journal_is_made_from_the_tables_without_a_word(folder, study_matches_tables):
    exp, d = folder
    said = []
    study.repair(exp, d, said.append)
    study_matches_tables(d, MAX_EPOCHS)
    assert said == []


def test_the_dashboard_rebuilds_a_damaged_journal_and_refuses_a_folder_in_its_place(folder, capsys,
                                                                                   study_matches_tables):
    exp, d = folder
    study.rebuild(exp, d)
    DAMAGE["bytes appended"](d / "optuna.journal")
    assert study.open_journal(d) == str(d / "optuna.journal")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "rebuilt" in err[0]
    study_matches_tables(d, MAX_EPOCHS)

    (d / "optuna.journal").unlink()
    (d / "optuna.journal").mkdir()
    assert main(["dashboard", "--experiment", str(d), "--port", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is a folder" in lines[0], lines
    with pytest.raises(UserError, match="is a folder"):
        study.repair(exp, d, print)


def test_the_dashboard_rebuilds_a_deleted_journal_and_asks_to_wait_while_a_search_starts(folder, capsys,
                                                                                         study_matches_tables):
    """docs/using.md: a deleted journal is rebuilt from the tables by the dashboard too (it said "no study
    recorded there" and pointed at a new search, which would replace the results); while a search is starting
    and has not written one yet, the dashboard says to try again in a few seconds."""
    from tuner.rundir import RunDir

    exp, d = folder
    assert not (d / "optuna.journal").exists()
    run = RunDir(d)
    run.mark_running()  # this process stands in for a search that is starting
    try:
        with pytest.raises(UserError, match="not there yet: the search that is starting writes it"):
            study.open_journal(d)
    finally:
        run.clear_running()
    assert study.open_journal(d) == str(d / "optuna.journal")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {d / 'optuna.journal'} was missing; rebuilt from trials.csv and epochs.csv (4 trials)"]
    study_matches_tables(d, MAX_EPOCHS)
    (d / "optuna.journal").unlink()
    (d / "trials.csv").unlink()  # nothing to rebuild from
    with pytest.raises(UserError, match="no study recorded there"):
        study.open_journal(d)
