"""--resume through the real CLI (`python -m tuner` in a subprocess) after Ctrl-C: a copied results folder
resumes in itself and leaves the original byte for byte as it was; a damaged journal is rebuilt from the
tables (or, a folder in its place, refused in one line); a resumed ASHA search stops the trials an
uninterrupted one would."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
# 6 trials: with 4, two test workers on the 2-core machine starved the driver enough that all 4 were in
# trials.csv by the time Ctrl-C was handled, and the fixture had nothing left to resume
SAMPLES, MAX_EPOCHS = 6, 3
# optuna + asha, two trials at a time; batch_size 4 makes an epoch last about a second, so Ctrl-C lands mid-search
ARGS = ["--space", str(ROOT / "search_spaces" / "digits_cnn.yaml"), "--no-dashboard", "--no-retrain",
        "--set", f"search.num_samples={SAMPLES}", "--set", f"scheduler.max_epochs={MAX_EPOCHS}",
        "--set", "scheduler.grace_period=1", "--set", "fixed.channels=16", "--set", "fixed.batch_size=4",
        "--set", "fixed.optimizer=adam"]


def _start(results: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner", "search", "--results", str(results), *ARGS, *extra],
                            cwd=ROOT, env={**os.environ, "MPLBACKEND": "Agg"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _run(results: Path, *extra: str) -> subprocess.CompletedProcess:
    log = results.parent / f"run-{time.monotonic_ns()}.log"
    proc = _start(results, log, *extra)
    try:
        proc.wait(timeout=500)
    finally:
        _kill(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the Ray processes it started, whatever happened
    except ProcessLookupError:
        pass


def _interrupt_when(proc: subprocess.Popen, log: Path, cond, sig=signal.SIGINT) -> int:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not cond():
        time.sleep(0.2)
    assert proc.poll() is None and cond(), log.read_text()[-3000:]
    os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=120)
    finally:
        _kill(proc)


def _rows(table: Path) -> int:
    try:
        return len(pd.read_csv(table))
    except (OSError, pd.errors.EmptyDataError):
        return 0


def _finished(exp: Path) -> int:
    return _rows(exp / "trials.csv")


TRIAL_LINE = re.compile(r"^[0-9a-f]{8} .*, (completed|stopped early|terminated)( |$)", re.M)


def _trial_lines(log: Path) -> int:
    """The console's lines of finished trials so far (tuner.search.console.trial_line)."""
    return len(TRIAL_LINE.findall(log.read_text(errors="replace")))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A results folder whose search was stopped with Ctrl-C after a trial finished."""
    results = tmp_path_factory.mktemp("interrupted") / "A"
    log = results.parent / "first.log"
    proc = _start(results, log)
    rc = _interrupt_when(proc, log, lambda: _finished(results / "digits_cnn") >= 1)
    assert rc == 130, log.read_text()[-3000:]
    assert _finished(results / "digits_cnn") < SAMPLES, "the search ended before Ctrl-C; make it longer"
    return results


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_copied_results_folder_resumes_in_itself_and_leaves_the_original_as_it_was(interrupted, tmp_path,
                                                                                       study_matches_tables):
    original = tmp_path / "A"
    shutil.copytree(interrupted, original, symlinks=True)
    copy = tmp_path / "B"
    shutil.copytree(original, copy, symlinks=True)  # `cp -a A B`
    before = _snapshot(original)
    r = _run(copy, "--resume")
    assert r.returncode == 0, r.stdout[-3000:]
    assert _snapshot(original) == before  # no checkpoint, journal record or table written there
    trials = pd.read_csv(copy / "digits_cnn" / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == SAMPLES and set(trials["status"]) == {"TERMINATED"}
    study_matches_tables(copy / "digits_cnn", MAX_EPOCHS)
    # every trial's checkpoints are in the copy, none only in the original
    assert {p.name for p in (copy / "digits_cnn" / "ray").glob("trial_*")} >= {f"trial_{t}" for t in trials["trial_id"]}


def _append(p: Path) -> None:
    p.write_bytes(p.read_bytes() + b"\x00\xff{not json\n")


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])


def _folder(p: Path) -> None:
    p.unlink()
    (p / "mine").mkdir(parents=True)


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_append, _truncate, Path.unlink, _folder], ids=["appended", "truncated",
                                                                                     "deleted", "folder"])
def test_resume_rebuilds_a_damaged_journal_from_the_tables_or_refuses_a_folder(interrupted, tmp_path, damage,
                                                                                study_matches_tables):
    results = tmp_path / "results"
    shutil.copytree(interrupted, results, symlinks=True)
    damage(results / "digits_cnn" / "optuna.journal")
    r = _run(results, "--resume")
    if damage is _folder:
        lines = [line for line in r.stdout.splitlines() if line.startswith("error:")]
        assert r.returncode == 2 and len(lines) == 1 and "is a folder" in lines[0], r.stdout[-3000:]
        assert "Traceback" not in r.stdout and (results / "digits_cnn" / "optuna.journal" / "mine").is_dir()
        return
    assert r.returncode == 0, r.stdout[-3000:]
    assert ("rebuilt from trials.csv" in r.stdout) == (damage is not Path.unlink), r.stdout[-3000:]
    assert len(pd.read_csv(results / "digits_cnn" / "trials.csv")) == SAMPLES
    study_matches_tables(results / "digits_cnn", MAX_EPOCHS)


@pytest.mark.slow
def test_a_resumed_asha_search_stops_the_trials_an_uninterrupted_one_would(tmp_path):
    # one trial at a time, and the first two the same config, which trains the same way twice (seeded): at
    # every rung the copy ties with the first, so an uninterrupted ASHA never stops it. Ctrl-C while the
    # first runs: an ASHA that forgot its rungs on --resume records the first's *later*, better epochs at the
    # rungs it had passed (one a result), and then stops the copy at one of them
    results = tmp_path / "results"
    config = "{lr: 3.0e-3, convs_per_block: 1, dropout: 0.0, weight_decay: 1.0e-6}"
    extra = ["--set", "search.num_samples=4", "--set", "search.max_concurrent=1",
             "--set", "scheduler.reduction_factor=2",
             "--set", "scheduler.max_epochs=8", "--set", f"search.warm_start=[{config}, {config}]"]
    log = tmp_path / "first.log"
    # epochs.csv with two of its epochs: Ray has processed (and ASHA recorded) the first one
    two_epochs = lambda: _rows(results / "digits_cnn" / "epochs.csv") >= 2  # noqa: E731
    assert _interrupt_when(_start(results, log, *extra), log, two_epochs) == 130, log.read_text()[-3000:]
    r = _run(results, "--resume", *extra)
    assert r.returncode == 0, r.stdout[-3000:]
    trials = pd.read_csv(results / "digits_cnn" / "trials.csv", dtype={"trial_id": str})
    epochs = pd.read_csv(results / "digits_cnn" / "epochs.csv", dtype={"trial_id": str})
    twins = trials[(trials["lr"] - 3.0e-3).abs() < 1e-12]["trial_id"].tolist()
    assert len(twins) == 2 and len(trials) == 4
    curves = [epochs[epochs["trial_id"] == t]["val_accuracy"].round(6).tolist() for t in twins]
    shorter = min(len(c) for c in curves)
    assert curves[0][:shorter] == curves[1][:shorter], "the same config must train the same way for this test"
    assert set(trials.set_index("trial_id").loc[twins, "epochs"]) == {8}, r.stdout[-3000:]


@pytest.mark.slow
def test_two_sigkills_and_resumes_leave_the_study_equal_to_the_tables(tmp_path, study_matches_tables):
    # the sequence: SIGKILL after 2 finished trials, --resume, SIGKILL after another, --resume. A killed
    # driver leaves the journal ahead of Ray's last snapshot (a trial it heard end that Ray runs again, one
    # asked for that Ray never ran); the study must still end equal to trials.csv
    results = tmp_path / "results"
    exp = results / "digits_cnn"
    # the second kill comes at the resumed run's first console line of a finished trial (printed at once), not
    # at a row of trials.csv: the live tables are written at most every 2 s, and a resumed run whose restored
    # ASHA rungs stop most trials at epoch 1 ended all of its trials between two writes (6 of 6, 10 of 10)
    total = 8
    more = ["--set", f"search.num_samples={total}"]
    log = tmp_path / "first.log"
    _interrupt_when(_start(results, log, *more), log, lambda: _finished(exp) >= 2, signal.SIGKILL)
    log = tmp_path / "second.log"
    _interrupt_when(_start(results, log, "--resume", *more), log, lambda: _trial_lines(log) >= 1, signal.SIGKILL)
    assert _finished(exp) < total, "the search ended before the second kill; make it longer"
    r = _run(results, "--resume", *more)
    assert r.returncode == 0, r.stdout[-3000:]
    trials = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == total and set(trials["status"]) == {"TERMINATED"}
    study_matches_tables(exp, MAX_EPOCHS)
