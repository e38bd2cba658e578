"""The study on disk (optuna.journal) and `tuner dashboard` serving it, during the search and after it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from tuner.search.study import storage

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "digits_cnn.yaml"
ENV = dict(os.environ)  # conftest puts this checkout first on PYTHONPATH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answers at {url}")


def test_dashboard_without_a_study_is_a_user_error(tmp_path, capsys):
    from tuner.cli import main

    assert main(["dashboard", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "optuna.journal" in err


@pytest.mark.slow
def test_dashboard_serves_the_running_study_with_intermediate_values_and_pruned_trials(results, tmp_path):
    results.mkdir(parents=True)
    log = tmp_path / "search.log"
    search = subprocess.Popen([sys.executable, "-m", "tuner", "search", "--space", str(SPACE), "--results", "results",
                               "--no-retrain", "--no-dashboard", "--set", "search.num_samples=8",
                               "--set", "scheduler.max_epochs=4", "--set", "scheduler.grace_period=1",
                               "--set", "fixed.channels=8"],
                              cwd=results.parent, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)
    port = _free_port()
    dash = None
    d = results / "digits_cnn"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (d / "optuna.journal").is_file():
            assert search.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        dash = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--experiment", "digits_cnn",
                                 "--results", "results", "--port", str(port)], cwd=results.parent, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        _wait_for(base + "/api/studies", dash)
        studies = _get(base + "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["digits_cnn"]
        sid = studies[0]["study_id"]
        # during the search: some trial already has per-epoch intermediate values
        deadline = time.time() + 300
        while time.time() < deadline:
            detail = _get(f"{base}/api/studies/{sid}")
            if any(t["intermediate_values"] for t in detail["trials"]):
                break
            time.sleep(1)
        assert any(t["intermediate_values"] for t in detail["trials"]), detail
        assert search.poll() is None or search.returncode == 0
        assert search.wait(timeout=400) == 0, log.read_text()[-3000:]
        # after it: every trial, finished (ASHA-stopped ones pruned), each with its epochs' values
        detail = _get(f"{base}/api/studies/{sid}")
        trials = pd.read_csv(d / "trials.csv", dtype={"trial_id": str})
        assert len(detail["trials"]) == len(trials) == 8
        states = {t["state"] for t in detail["trials"]}
        assert states <= {"Complete", "Pruned"} and "Complete" in states, states
        for t in detail["trials"]:
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            row = trials[trials["trial_id"] == attrs["ray_trial_id"]].iloc[0]
            assert len(t["intermediate_values"]) == row["epochs"]
            if t["state"] == "Pruned":
                assert row["epochs"] < 4
            else:  # the study's value is the trial's best epoch, as in trials.csv
                assert float(t["values"][0]) == pytest.approx(row["val_accuracy"])
        if shutil.which("chromium"):
            shot = tmp_path / "dashboard.png"
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                            "--window-size=1400,900", "--virtual-time-budget=8000", f"{base}/dashboard/studies/{sid}"],
                           capture_output=True, timeout=120)
            from PIL import Image

            pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
            assert pixels.std() > 5, "the dashboard screenshot is blank"
    finally:
        for p in (search, dash):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_a_random_search_is_recorded_in_the_journal_too(results):
    from tuner.cli import main

    code = main(["search", "--space", str(SPACE), "--results", str(results), "--no-retrain", "--no-dashboard",
                 "--set", "search.algorithm=random", "--set", "search.num_samples=3",
                 "--set", "scheduler.name=fifo", "--set", "scheduler.max_epochs=2", "--set", "fixed.channels=8"])
    assert code == 0
    study = optuna.load_study(study_name="digits_cnn", storage=storage(results / "digits_cnn"))
    trials = pd.read_csv(results / "digits_cnn" / "trials.csv", dtype={"trial_id": str})
    assert len(study.trials) == 3 and {t.state.name for t in study.trials} == {"COMPLETE"}
    assert study.metric_names == ["val_accuracy"]  # optuna-dashboard's label, not "Objective 0"
    for t in study.trials:
        assert list(t.intermediate_values) == [1, 2]
        row = trials[trials["trial_id"] == t.user_attrs["ray_trial_id"]].iloc[0]
        assert t.value == pytest.approx(row["val_accuracy"]) and t.params["lr"] == pytest.approx(row["lr"])
