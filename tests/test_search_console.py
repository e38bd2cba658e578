"""The console of `tuner search` as a person reads it: bounded, narrow, no Ray noise, one best trial."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tuner.search.console import trial_line
from tuner.spaces import load

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "digits_cnn.yaml"
SMALL = ["--set", "scheduler.max_epochs=3", "--set", "scheduler.grace_period=1", "--set", "fixed.channels=8"]


def _search(results: Path, *extra: str) -> subprocess.CompletedProcess:
    # the CLI as a user runs it, output to a pipe (not a terminal): plain progress lines every ~10 s
    # run from the folder above --results, as `tuner search ... --results results` would be
    env = dict(os.environ)  # conftest puts this checkout first on PYTHONPATH
    results.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "tuner", "search", "--space", str(SPACE), "--results", results.name,
                           "--no-retrain", "--no-dashboard", *SMALL, *extra],
                          cwd=results.parent, env=env, capture_output=True, text=True, timeout=590)


def test_trial_line_stays_under_120_characters_with_many_parameters():
    exp = load(SPACE)
    config = {k: 1.234567e-05 for k in exp.searched}
    line = trial_line(exp, "abcd1234", config, {"best_val_accuracy": 0.98765, "_best_epoch": 7}, 9, "stopped early")
    assert len(line) < 120 and line.startswith("abcd1234 val_accuracy 0.9877 (epoch 7), 9 epochs, stopped early")


@pytest.mark.slow
def test_a_20_trial_search_prints_a_short_readable_console_naming_best_yaml_trial(results):
    r = _search(results, "--set", "search.num_samples=20")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    lines = out.splitlines()
    # a header (6 lines), one line per trial (20), a progress line every 10 s (a 20-trial search here takes
    # under 4 minutes: 24), the summary (3): about 55. Before this console, about 900.
    assert len(lines) <= 80, out
    assert max(len(l) for l in lines) < 120, max(lines, key=len)
    assert "WARNING" not in out and "snapshotting" not in out and "Trial status" not in out, out
    assert "tensorboard --logdir results/digits_cnn/ray" in out
    assert "tuner dashboard --experiment digits_cnn" in out
    trial_lines = [l for l in lines if " val_accuracy " in l and " epochs, " in l]
    assert len(trial_lines) == 20, out
    best = yaml.safe_load((results / "digits_cnn" / "best.yaml").read_text())
    # printed with 4 significant digits (0.975 as 0.975)
    assert f"best trial {best['trial_id']}: val_accuracy = {best['metrics']['val_accuracy']:.4g}" in out
    last_progress = [l for l in lines if "stopped early" in l and " done, " in l][-1]
    assert f"best {best['metrics']['val_accuracy']:.4f} ({best['trial_id']})" in last_progress, last_progress
    # one ranking: best.yaml's trial is the one with the highest best-epoch score in trials.csv
    trials = pd.read_csv(results / "digits_cnn" / "trials.csv", dtype={"trial_id": str})
    top = trials[trials["val_accuracy"] == trials["val_accuracy"].max()]
    assert best["trial_id"] in set(top["trial_id"])
    assert best["metrics"]["val_accuracy"] == pytest.approx(trials["val_accuracy"].max())


@pytest.mark.slow
def test_verbose_restores_rays_own_tables(results):
    r = _search(results, "--set", "search.num_samples=2", "--verbose")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Trial status" in r.stdout + r.stderr


@pytest.mark.slow
def test_a_search_until_the_time_budget_stops_within_it_and_counts_its_trials_without_a_total(results):
    # no num_samples: Ray runs "sys.maxsize" samples until the budget; the console once printed
    # "29/9223372036854775807 done ... eta 1379983927175722:40:00". 30 s: in CI, with the other test worker
    # busy, 10 s passed before a first trial had finished and the search ended as it should with no result
    t0 = time.perf_counter()
    r = _search(results, "--set", "search.num_samples=null", "--set", "search.time_budget=30s")
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    lines = out.splitlines()
    assert "(cnn, trials until the time budget ends, up to 3 epochs)" in out, out
    assert "9223372036854775807" not in out and max(len(l) for l in lines) < 120, out
    final = [l for l in lines if " done, " in l][-1]
    finished = int(final.split(" done, ")[0])
    cut = int(final.split(" | ")[-1].split()[0]) if final.endswith("cut by the time budget") else 0
    assert " eta " not in final and "/" not in final.split(" done, ")[0], final
    # every trial is accounted for: the finished ones and those the budget stopped
    trials = pd.read_csv(results / "digits_cnn" / "trials.csv", dtype={"trial_id": str})
    assert finished + cut == len(trials) and f"search: {len(trials)} trials in " in out, out
    # it kept launching trials after the first two (max_concurrent) until the budget ran out, and stopped
    # within it plus one epoch (Ray checks the budget between its steps); 165 trials fitted in the 30 s on
    # the idle 2-core VM, so three leave room for any load
    run = json.loads((results / "digits_cnn" / "run.json").read_text())
    one_epoch = float(pd.read_csv(results / "digits_cnn" / "epochs.csv")["time_s"].max())
    assert run["search_s"] <= 30 + one_epoch + 5 and len(trials) >= 3, (run, len(trials))
    assert wall < 140, wall  # the whole command too: Ray's start, the tables and the plots are outside the budget


def test_eta_is_the_sooner_of_the_pace_and_the_time_budget():
    from types import SimpleNamespace

    from tuner.search.console import Console

    exp = load(SPACE, ["search.num_samples=100", "search.time_budget=60s"])
    console = Console(exp, say=lambda line: None)
    console.t0 -= 29.5  # 29.5 s in, 10 of 100 trials done: the pace says 4:25 more, the budget 0:30
    console.finished = 10
    line = console.progress([SimpleNamespace(status="RUNNING")] * 2)
    assert line.startswith("10/100 done, 2 running") and line.endswith(" eta 0:30"), line
    console.t0 += 28.5  # 1 s in: the pace says 0:09, sooner than the budget's 0:58
    assert console.progress([]).endswith(" eta 0:09")


def test_trials_a_ctrl_c_stopped_are_not_said_to_be_cut_by_a_time_budget_there_is_none():
    from types import SimpleNamespace

    from tuner.search.console import Console

    lines = []
    stopped = [SimpleNamespace(trial_id=f"t{i}", status="TERMINATED", last_result={}) for i in range(2)]
    Console(load(SPACE), say=lines.append).on_experiment_end(stopped)
    assert "time budget" not in lines[-1], lines[-1]
    budget = Console(load(SPACE, ["search.time_budget=60s"]), say=lines.append)
    budget.adopted = True  # these two ended in this run, by the budget
    budget.on_experiment_end(stopped)
    assert lines[-1].endswith("| 2 cut by the time budget"), lines[-1]


def test_the_best_so_far_is_never_a_trial_outside_the_constraints(tmp_path):
    from types import SimpleNamespace

    from tuner.search.console import Console

    raw = yaml.safe_load(SPACE.read_text())
    raw["constraints"] = {"num_params": {"max": 1000}}
    space = tmp_path / "constrained.yaml"
    space.write_text(yaml.safe_dump(raw))
    exp = load(space)
    lines = []
    console = Console(exp, say=lines.append)

    def finish(tid: str, acc: float, params: int) -> None:
        result = {"training_iteration": 1, "epoch": 1, "val_accuracy": acc, "best_val_accuracy": acc,
                  "val_loss": 1 - acc, "num_params": params}
        trial = SimpleNamespace(trial_id=tid, config={}, last_result=result, status="TERMINATED")
        console.on_trial_result(1, [trial], trial, result)
        console.on_trial_complete(1, [trial], trial)

    finish("big00000", 0.99, 50_000)  # more accurate, but too large
    finish("small000", 0.90, 800)
    console.on_experiment_end([])
    assert "best 0.9000 (small000)" in lines[-1], lines[-1]


def test_the_final_best_ranks_trials_the_time_budget_cut_as_best_yaml_does():
    """A trial the budget stopped gets no complete event, but trials.csv ranks it at its best epoch: so does
    the last progress line."""
    from types import SimpleNamespace

    from tuner.search.console import Console

    lines = []
    console = Console(load(SPACE, ["search.time_budget=60s"]), say=lines.append)
    done = {"training_iteration": 2, "epoch": 2, "val_accuracy": 0.9, "best_val_accuracy": 0.9, "val_loss": 0.3}
    first = SimpleNamespace(trial_id="done0000", config={}, last_result=done, status="TERMINATED")
    console.on_trial_result(2, [first], first, done)
    console.on_trial_complete(2, [first], first)
    cut = SimpleNamespace(trial_id="cut00000", config={}, status="TERMINATED",
                          last_result={"training_iteration": 2, "epoch": 2, "val_accuracy": 0.93,
                                       "best_val_accuracy": 0.95, "val_loss": 0.25})
    console.on_trial_result(1, [first, cut], cut, {"training_iteration": 1, "epoch": 1, "val_accuracy": 0.95,
                                                   "best_val_accuracy": 0.95, "val_loss": 0.2})
    console.on_trial_result(2, [first, cut], cut, cut.last_result)
    console.on_experiment_end([first, cut])
    assert "best 0.9500 (cut00000)" in lines[-1] and lines[-1].endswith("| 1 cut by the time budget"), lines[-1]


def test_a_tie_after_a_resume_is_broken_on_the_loss_at_each_trials_own_best_epoch():
    """After a --resume the console has seen only the later epochs; the trial reports its val_loss at its best
    epoch (BEST_LOSS), so a tie goes where best.yaml sends it, not to the lower loss of a later, worse epoch."""
    from types import SimpleNamespace

    from tuner.metrics import BEST_LOSS
    from tuner.search.console import Console

    lines = []
    console = Console(load(SPACE), say=lines.append)
    # a: best 0.95 at epoch 1 with loss 0.40 (before the resume); this run saw epoch 2: 0.90, loss 0.10
    # b: best 0.95 at epoch 2 with loss 0.30, seen in this run
    for tid, epoch2, best_loss in (("aaaa0000", (0.90, 0.10), 0.40), ("bbbb0000", (0.95, 0.30), 0.30)):
        result = {"training_iteration": 2, "epoch": 2, "val_accuracy": epoch2[0], "val_loss": epoch2[1],
                  "best_val_accuracy": 0.95, BEST_LOSS: best_loss}
        trial = SimpleNamespace(trial_id=tid, config={}, last_result=result, status="TERMINATED")
        console.on_trial_result(2, [trial], trial, result)
        console.on_trial_complete(2, [trial], trial)
    console.on_experiment_end([])
    assert "best 0.9500 (bbbb0000)" in lines[-1], lines[-1]


def test_trial_lines_use_the_terminals_width_and_119_characters_elsewhere(tmp_path, monkeypatch):
    """A real pseudo-terminal 200 columns wide: the whole trial line is shown, not cut at 119; a file keeps 119."""
    import fcntl
    import struct
    import termios

    from tuner.search.console import Console, line_width

    monkeypatch.delenv("COLUMNS", raising=False)
    exp = load(SPACE)
    config = {k: 1.234567e-05 for k in exp.searched}  # 194 characters in all
    result = {"best_val_accuracy": 0.98765, "_best_epoch": 7}
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    with open(slave, "w") as tty, open(tmp_path / "log", "w") as plain:
        assert line_width(tty) == 199 and line_width(plain) == 119
        full = trial_line(exp, "abcd1234", config, result, 9, "completed", width=line_width(tty))
        assert 119 < len(full) <= 199 and not full.endswith("...")
        assert trial_line(exp, "abcd1234", config, result, 9, "completed").endswith("...")  # 119 elsewhere
        Console(exp, stream=tty)._print(full, [])  # what the console writes to that terminal
        tty.flush()
        shown = os.read(master, 65536).decode()
        assert full in shown
        monkeypatch.setenv("COLUMNS", "100")  # as shutil.get_terminal_size: $COLUMNS wins
        assert line_width(tty) == 99
    os.close(master)
