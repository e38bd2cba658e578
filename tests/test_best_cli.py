"""`tuner best --pareto`, `tuner best --trial ID --export DIR` and `tuner search --resume --retry-failed`,
each through the real CLI (`python -m tuner`) in a subprocess, on small digits searches of one or two epochs;
and what `best` refuses before it prints anything, in-process on a results folder written by hand (no Ray)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import tuner
from tuner import spaces
from tuner.cli import main

ROOT = Path(__file__).resolve().parents[1]

# two warm starts make the front certain: a good small net, and a bigger one with an lr too small to learn
# anything in two epochs, which the first dominates (more accurate with fewer parameters)
TWO_OBJECTIVES = """
name: front
family: mlp
dataset: {name: digits, limit: 300}
search:
  algorithm: optuna
  num_samples: 4
  max_concurrent: 2
  seed: 0
  warm_start: [{hidden: [32], lr: 1.0e-2}, {hidden: [128, 64], lr: 1.0e-5}]
scheduler: {name: asha, max_epochs: 2}
fixed: {optimizer: adam, batch_size: 32}
space:
  hidden: {choice: [[8], [32], [128, 64]]}
  lr: {loguniform: [1.0e-5, 1.0e-2]}
"""

# sgd at lr 1e8 turns the loss into NaN in the first epoch, every time: the trial fails (TrialFailed)
FAILING = """
name: failing
family: mlp
dataset: {name: digits, limit: 200}
search: {algorithm: grid, max_concurrent: 2, seed: 0}
scheduler: {name: fifo, max_epochs: 2}
fixed: {optimizer: sgd, momentum: 0.9, hidden: [32], batch_size: 32}
space:
  lr: {choice: [0.01, 1.0e+8]}
"""


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m tuner ARGS` with this checkout first on the path; the Ray processes a search starts are
    in its own session, and any left behind (a timeout, a crash) are killed with it."""
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *args], cwd=ROOT, text=True,
                            env={**os.environ, "MPLBACKEND": "Agg"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _one_error(r: subprocess.CompletedProcess) -> str:
    """Exit 2 with exactly one `error:` line and no traceback; returns that line."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr and sum(line.startswith("error:") for line in lines) == 1, r.stderr
    return next(line for line in lines if line.startswith("error:"))


def _search(space: Path, results: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli("search", "--space", str(space), "--results", str(results), "--no-dashboard", "--no-retrain",
                *extra)


def _trials(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "trials.csv", dtype={"trial_id": str})


def _pareto(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "pareto.csv", dtype={"trial_id": str})


def _csv_value(v):
    # trials.csv writes a list as YAML flow text ("[128, 64]")
    return yaml.safe_load(v) if isinstance(v, str) and v.startswith("[") else v


@pytest.fixture(scope="module")
def front_search(tmp_path_factory) -> Path:
    """A finished two-objective search (val_accuracy up, num_params down); returns its results folder."""
    tmp = tmp_path_factory.mktemp("front")
    space = tmp / "front.yaml"
    space.write_text(TWO_OBJECTIVES)
    r = _search(space, tmp / "results", "--set", "metric=[val_accuracy, num_params]", "--set", "mode=[max, min]",
                "--set", "scheduler.name=fifo")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp / "results"


@pytest.fixture(scope="module")
def failing_search(tmp_path_factory) -> tuple[Path, Path]:
    """A finished single-objective search in which one trial failed; returns (space file, results folder)."""
    tmp = tmp_path_factory.mktemp("failing")
    space = tmp / "failing.yaml"
    space.write_text(FAILING)
    r = _search(space, tmp / "results")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the console says why a trial failed in one line; Ray's traceback stays in the trial's error.txt
    assert "Traceback" not in r.stdout + r.stderr and "Trial task failed" not in r.stdout + r.stderr, r.stderr[-3000:]
    return space, tmp / "results"


@pytest.mark.slow
def test_best_pareto_lists_exactly_the_front(front_search):
    d = front_search / "front"
    front, trials = _pareto(d), _trials(d)
    assert 0 < len(front) < len(trials)  # the dominated warm start is left out
    r = _cli("best", "--experiment", "front", "--results", str(front_search), "--pareto")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.strip().splitlines()]
    assert rows[0][0] == "trial_id" and len(rows) == len(front) + 1
    assert [row[0] for row in rows[1:]] == list(front["trial_id"])
    assert "error" not in rows[0] and "NaN" not in r.stdout  # the front has no failed trial to explain


@pytest.mark.slow
def test_best_pareto_on_a_single_objective_search_is_a_user_error(failing_search):
    _, results = failing_search
    assert (results / "failing" / "best.yaml").is_file()  # so it is --pareto that is refused, not the folder
    line = _one_error(_cli("best", "--experiment", "failing", "--results", str(results), "--pareto"))
    assert "pareto" in line


@pytest.mark.slow
def test_best_trial_export_bundles_that_trial_not_the_best(front_search, tmp_path):
    d = front_search / "front"
    trials = _trials(d)
    best_id = yaml.safe_load((d / "best.yaml").read_text())["trial_id"]
    row = trials[(trials["lr"] - 1.0e-5).abs() < 1.0e-12].iloc[0]  # the dominated warm start
    assert row["trial_id"] != best_id and row["status"] == "TERMINATED"

    # best/ first holds the best trial's retrain (and its test metrics)
    first = _cli("best", "--experiment", "front", "--results", str(front_search), "--export", str(tmp_path / "b0"))
    assert first.returncode == 0 and "test metrics:" in first.stdout, first.stdout[-3000:] + first.stderr[-3000:]
    dest = tmp_path / "bundle"
    r = _cli("best", "--experiment", "front", "--results", str(front_search), "--trial", row["trial_id"],
             "--export", str(dest))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # one test-metrics line, after that trial's retrain: best/ held the best trial's model, whose test metrics
    # were once printed under this trial's entry
    lines = r.stdout.splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith("test metrics:")]
    retrained = lines.index(f"retraining trial {row['trial_id']}'s config first")
    assert len(said) == 1 and said[0] > retrained, r.stdout[-3000:]
    config = tuner.load(dest).config
    assert set(config) == {"hidden", "lr", "optimizer", "batch_size"}
    for k, v in config.items():
        assert v == pytest.approx(_csv_value(row[k])) if isinstance(v, float) else v == _csv_value(row[k]), k
    assert config["hidden"] == [128, 64] and config["lr"] == pytest.approx(1.0e-5)

    # an id trials.csv does not have: one error line naming it, and nothing exported
    missing = tmp_path / "missing"
    line = _one_error(_cli("best", "--experiment", "front", "--results", str(front_search), "--trial", "nosuchid",
                           "--export", str(missing)))
    assert "nosuchid" in line and not missing.exists()


@pytest.mark.slow
def test_resume_retry_failed_runs_the_failed_trial_again(failing_search):
    space, results = failing_search
    d = results / "failing"
    before = _trials(d)
    failed = before.loc[before["status"] == "ERROR", "trial_id"].tolist()
    assert len(before) == 2 and len(failed) == 1
    trial_dir = d / "ray" / f"trial_{failed[0]}"
    runs_before = len(list(trial_dir.glob("events.out.tfevents.*")))  # one TensorBoard file per start

    # --retry-failed alone is refused before anything runs
    assert "--resume" in _one_error(_search(space, results, "--retry-failed"))
    assert _trials(d).equals(before)

    # a plain --resume leaves the failed trial failed, without running it
    r = _search(space, results, "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{failed[0]} failed" not in r.stdout
    assert len(list(trial_dir.glob("events.out.tfevents.*"))) == runs_before

    # --resume --retry-failed starts it again: it fails the same way, and says so on the console
    r = _search(space, results, "--resume", "--retry-failed")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{failed[0]} failed after 0 epochs: train_loss is nan" in r.stdout
    assert len(list(trial_dir.glob("events.out.tfevents.*"))) == runs_before + 1
    after = _trials(d)
    # one row a trial still: the rerun's error replaced the first, the finished trial is untouched
    assert sorted(after["trial_id"]) == sorted(before["trial_id"])
    assert after.set_index("trial_id").loc[failed[0], "status"] == "ERROR"
    ok = before.loc[before["status"] != "ERROR", "trial_id"].iloc[0]
    assert after.set_index("trial_id").loc[ok, "val_accuracy"] == before.set_index("trial_id").loc[ok, "val_accuracy"]


# ------------------------------------------------------------------ refused before anything is printed (no Ray)
@pytest.fixture()
def written(tmp_path) -> Path:
    """A results folder holding one finished search in the format `search` writes (no retrained model):
    space.yaml, best.yaml and a trials.csv of two finished trials, t0 the best."""
    results = tmp_path / "results"
    d = results / "digits_linear"
    d.mkdir(parents=True)
    # 3 epochs, not the file's 30: the tests that export retrain, and what they check is which config ships
    exp = spaces.load(ROOT / "search_spaces" / "digits_linear.yaml", ["scheduler.max_epochs=3"])
    (d / "space.yaml").write_text(spaces.resolved_yaml(exp))
    rows = [{"trial_id": t, "status": "TERMINATED", "error": "", "lr": lr, "batch_size": 32, "optimizer": "adam",
             "weight_decay": 1.0e-4, "epochs": 1, "val_accuracy": acc, "val_loss": 0.4, "best_epoch": 1,
             "time_s": 1.0} for t, lr, acc in [("t0", 0.05, 0.9), ("t1", 0.01, 0.8)]]
    pd.DataFrame(rows).to_csv(d / "trials.csv", index=False)
    (d / "best.yaml").write_text(yaml.safe_dump({
        "experiment": "digits_linear", "family": "linear", "trial_id": "t0", "metric": "val_accuracy",
        "mode": "max", "config": {"lr": 0.05, "batch_size": 32, "optimizer": "adam", "weight_decay": 1.0e-4},
        "metrics": {"epoch": 1, "val_accuracy": 0.9, "val_loss": 0.4}, "epochs_run": 1}, sort_keys=False))
    return results


def test_best_while_a_search_runs_with_no_finished_trial_names_its_pid_and_whole_start_time(written, capsys):
    from tuner.rundir import RunDir

    run = RunDir(written / "digits_linear")
    run.best_yaml.unlink()
    run.mark_running()  # this process stands in for the running search
    try:
        assert main(["best", "--results", str(written), "--experiment", "digits_linear"]) == 2
    finally:
        run.clear_running()
    err = capsys.readouterr().err.strip()
    run_info = err.split("(pid ", 1)[1]
    started = run_info.split("started ", 1)[1].split(")", 1)[0]
    assert err.endswith("no trial has finished yet; try again shortly"), err
    assert run_info.startswith(f"{os.getpid()}, ") and len(started) == len("2026-12-05 21:04:33"), err


def test_best_on_an_unreadable_trials_csv_exits_2_with_lists_message_and_prints_nothing(written, capsys):
    trials = written / "digits_linear" / "trials.csv"
    trials.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)  # binary garbage, as a broken copy leaves
    assert main(["best", "--results", str(written), "--experiment", "digits_linear"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # not best.yaml first and the error after it
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {trials}: cannot be read ("), err
    assert "--resume" in lines[0] and "Traceback" not in err
    # the same words `list` warns with when it leaves that experiment out (docs/using.md: list skips it, best exits 2)
    assert main(["list", "--results", str(written)]) == 0
    warning = capsys.readouterr().err.strip()
    assert warning == f"warning: {lines[0].removeprefix('error: ')}; digits_linear not listed"


@pytest.mark.parametrize("trial", [None, "t1"])
def test_best_export_to_a_file_is_refused_before_anything_is_printed_or_written(written, tmp_path, capsys, trial):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    best_yaml = (written / "digits_linear" / "best.yaml").read_text()
    argv = ["best", "--results", str(written), "--experiment", "digits_linear", "--export", str(afile)]
    assert main(argv + (["--trial", trial] if trial else [])) == 2
    out, err = capsys.readouterr()
    assert out == "", out  # best.yaml is not printed before the error
    lines = err.strip().splitlines()
    assert lines == [f"error: --export {afile}: is a file; give a folder (it is created if missing)"]
    assert afile.read_text() == "mine"
    assert (written / "digits_linear" / "best.yaml").read_text() == best_yaml  # --trial did not replace the best


def test_best_trial_only_prints_and_an_export_never_ships_a_model_of_another_config(written, tmp_path, capsys):
    from tuner.bundle import bundle_config

    d = written / "digits_linear"
    best = ["best", "--results", str(written), "--experiment", "digits_linear"]
    assert main(best + ["--export"]) == 0  # best/ and export/ now hold t0's model, as after a search
    original = (d / "best.yaml").read_bytes()
    kept = {p: p.read_bytes() for p in [d / "best.yaml", *sorted((d / "best").iterdir())]}
    capsys.readouterr()

    # --trial alone is a look: it prints that trial and changes nothing
    assert main(best + ["--trial", "t1"]) == 0
    assert "trial_id: t1" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in kept} == kept
    # so the next export ships best.yaml's trial, from the model best/ already holds
    assert main(best + ["--export", str(tmp_path / "a")]) == 0
    assert "retraining" not in capsys.readouterr().out
    assert tuner.load(tmp_path / "a").config["lr"] == 0.05

    # --trial with --export: that trial's config, and best.yaml and best/ both name it afterwards
    assert main(best + ["--trial", "t1", "--export", str(tmp_path / "b")]) == 0
    assert tuner.load(tmp_path / "b").config["lr"] == 0.01
    chosen = yaml.safe_load((d / "best.yaml").read_text())
    assert chosen["trial_id"] == "t1" and chosen["chosen"] == "--trial t1"
    assert bundle_config(d / "best" / "model.pt") == chosen["config"]

    # a --resume writes the search's own best back into best.yaml: the next export retrains it rather than
    # shipping t1's model under t0's name
    (d / "best.yaml").write_bytes(original)
    assert main(best) == 0
    assert "holds the retrain of another config" in capsys.readouterr().out  # not t1's test metrics as t0's
    assert main(best + ["--export", str(tmp_path / "c")]) == 0
    assert tuner.load(tmp_path / "c").config["lr"] == 0.05
    assert bundle_config(d / "best" / "model.pt") == yaml.safe_load(original)["config"]


@pytest.mark.slow  # the shared finished search
def test_a_search_whose_warm_start_folder_is_gone_still_exports_reports_and_lists(finished_copy, tmp_path, capsys):
    # its trials seeded the study when the search ran; a finished folder never reads that folder again (`tuner
    # best --export` and `tuner report` had refused: "search.warm_start: ... is not a results folder")
    d = finished_copy / "digits_cnn"
    space = yaml.safe_load((d / "space.yaml").read_text())
    space["search"]["warm_start"] = str(tmp_path / "deleted" / "digits_cnn")
    (d / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    with pytest.raises(tuner.UserError, match="is not a results folder"):  # a new search would be refused
        spaces.parse_experiment(space)
    assert main(["best", "--results", str(finished_copy), "--export", str(tmp_path / "bundle")]) == 0
    assert main(["report", "--results", str(finished_copy)]) == 0
    assert main(["list", "--results", str(finished_copy)]) == 0
    assert "error" not in capsys.readouterr().err
    assert (tmp_path / "bundle" / "model.pt").is_file() and (d / "plots" / "rungs.png").is_file()
