"""The Ray side of a search: resume after a killed driver, a two-node cluster, failed trials, PBT, storage."""
from __future__ import annotations

import csv
import glob
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from tuner import cli
from tuner.search.cluster import check_storage, fit_resources
from tuner.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _snapshot_trials(ray_dir: Path) -> list[str]:
    """The Ray trials the searcher's last snapshot knew (its study is the journal, not pickled with it)."""
    latest = sorted(glob.glob(str(ray_dir / "searcher-state-*.pkl")))[-1]  # named by the session's start time
    with open(latest, "rb") as f:
        state = pickle.load(f)  # our own experiment's file, written by StudySearch.save
    assert "_ot_study" not in state  # no absolute journal path travels with the snapshot
    return state["_snapshot_known"]


# --------------------------------------------------------------------------- no Ray needed
def test_auto_resources_share_gpus_without_asking_for_more_than_there_are():
    assert fit_resources({"CPU": 16, "GPU": 2}, 3) == {"cpu": 5, "gpu": 0.666}
    assert fit_resources({"CPU": 16, "GPU": 8}, 4) == {"cpu": 4, "gpu": 2.0}
    assert fit_resources({"CPU": 2}, 4) == {"cpu": 1, "gpu": 0.0}


def test_storage_takes_a_shared_folder_or_a_file_system_uri(tmp_path):
    assert check_storage(str(tmp_path / "shared")) == str(tmp_path / "shared")
    assert (tmp_path / "shared").is_dir()
    assert check_storage("s3://bucket/tuner/") == "s3://bucket/tuner"
    assert check_storage(f"file://{tmp_path}/x") == f"file://{tmp_path}/x"
    with pytest.raises(UserError, match="unknown URI scheme 'ftp'"):
        check_storage("ftp://host/path")


def test_bad_storage_dead_address_and_nothing_to_resume_are_user_errors(tmp_path, results, capsys):
    space = str(SPACES / "digits_linear.yaml")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["search", "--space", space, "--results", str(results), "--no-dashboard",
                     "--storage", str(blocker / "sub")]) == 2
    assert "storage" in capsys.readouterr().err
    t0 = time.time()  # ray.init would retry a dead address for minutes
    assert cli.main(["search", "--space", space, "--results", str(results), "--no-dashboard",
                     "--address", "127.0.0.1:1"]) == 2
    assert time.time() - t0 < 30 and "--address 127.0.0.1:1: no Ray cluster answers" in capsys.readouterr().err
    assert cli.main(["search", "--space", space, "--results", str(results), "--no-dashboard", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: --resume: nothing to resume") and "Traceback" not in err


# --------------------------------------------------------------------------- failed trials
@pytest.mark.slow
def test_nan_loss_fails_one_trial_and_the_search_still_retrains_the_best(tmp_path, results, capsys):
    space = tmp_path / "nan.yaml"
    space.write_text(yaml.safe_dump({
        "name": "nan", "family": "mlp", "dataset": {"name": "digits", "limit": 200},
        "search": {"algorithm": "grid", "max_concurrent": 2},
        "scheduler": {"name": "fifo", "max_epochs": 2},
        "fixed": {"optimizer": "sgd", "momentum": 0.9, "hidden": [32]},
        "space": {"lr": {"grid": [0.05, 1.0e8]}}}))  # 1e8 diverges to NaN in the first epoch
    storage = tmp_path / "shared"
    rc = cli.main(["search", "--space", str(space), "--results", str(results), "--no-dashboard",
                   "--storage", str(storage)])
    out = capsys.readouterr().out
    assert rc == 0
    trials = pd.read_csv(results / "nan" / "trials.csv").set_index("lr")
    assert trials.loc[1.0e8, "status"] == "ERROR"
    assert re.search(r"train_loss is nan at epoch \d", trials.loc[1.0e8, "error"])
    assert trials.loc[0.05, "status"] == "TERMINATED" and pd.isna(trials.loc[0.05, "error"])
    assert "1 of 2 trials failed" in out and "train_loss is nan" in out
    assert yaml.safe_load((results / "nan" / "best.yaml").read_text())["config"]["lr"] == 0.05
    assert json.loads((results / "nan" / "best" / "metrics.json").read_text())["accuracy"] > 0.3
    # checkpoints went to the storage, the tables stayed in the results folder
    assert glob.glob(str(storage / "nan" / "trial_*" / "checkpoint_*"))
    assert not (results / "nan" / "ray").exists()
    assert yaml.safe_load((results / "nan" / "space.yaml").read_text())["storage"] == str(storage)


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_exits_2_naming_the_reason(tmp_path, results, capsys):
    space = tmp_path / "allnan.yaml"
    space.write_text(yaml.safe_dump({
        "name": "allnan", "family": "mlp", "dataset": {"name": "digits", "limit": 200},
        "search": {"algorithm": "random", "num_samples": 1}, "scheduler": {"name": "fifo", "max_epochs": 2},
        "fixed": {"optimizer": "sgd", "momentum": 0.9, "hidden": [32], "lr": 1.0e8}}))
    assert cli.main(["search", "--space", str(space), "--results", str(results), "--no-dashboard"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # Ray logs to stderr too
    assert last.startswith("error: ") and "no trial finished" in last and "train_loss is nan" in last
    assert pd.read_csv(results / "allnan" / "trials.csv")["status"].tolist() == ["ERROR"]


@pytest.mark.slow
def test_pbt_runs_smoke_on_digits(results):
    rc = cli.main(["search", "--space", str(SPACES / "digits_pbt.yaml"), "--smoke", "--results", str(results),
                   "--no-dashboard"])
    assert rc == 0
    trials = pd.read_csv(results / "digits_pbt" / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"TERMINATED"}
    assert (results / "digits_pbt" / "best" / "model.pt").is_file()


@pytest.mark.slow
def test_pbt_tables_keep_every_trials_own_epochs_and_perturbed_values_stay_in_the_space(results):
    # 4 trials side by side (the file's max_concurrent), 6 epochs: every trial has a score by its second epoch,
    # so the worst of the 4 copies the best at epoch 2 or 4 (Ray writes a pbt_policy file). With 2 at a time
    # a copy needed trials 3-4 to report while 1-2 were at a copy epoch: on a loaded machine, sometimes none.
    # Ray's own record of an exploited trial dropped the epochs it ran before copying, and its last result
    # carried the copied trial's id: trials.csv had one id twice and lost another. Ray's x1.2 step took a
    # momentum drawn from [0.5, 0.95] to 1.04, and with 4 checkpoints kept a copy once found its source pruned.
    rc = cli.main(["search", "--space", str(SPACES / "digits_pbt.yaml"), "--results", str(results), "--no-dashboard",
                   "--no-retrain", "--set", "scheduler.max_epochs=6"])
    assert rc == 0
    d = results / "digits_pbt"
    assert list((d / "ray").glob("pbt_policy_*.txt")), "no trial copied another: the checks below would be empty"
    trials = pd.read_csv(d / "trials.csv", dtype={"trial_id": str})
    folders = {p.name.removeprefix("trial_") for p in (d / "ray").glob("trial_*")}
    assert sorted(trials["trial_id"]) == sorted(folders) and len(folders) == 4
    assert set(trials["status"]) == {"TERMINATED"}
    epochs = pd.read_csv(d / "epochs.csv", dtype={"trial_id": str})
    for tid, e in epochs.groupby("trial_id"):
        ran = e["epoch"].tolist()
        assert ran[0] == 1 and ran[-1] == 6 and ran == sorted(set(ran)), (tid, ran)
        # a trial that copied one further ahead (trials run unevenly on a loaded machine) goes on from the
        # copy's epoch: every gap is such a copy in Ray's policy log, and every epoch it ran is in the table.
        # Ray logs the trial's epoch when it decided; the trial may report one more before the copy takes
        # effect (seen: epochs [1, 2, 5, 6], the copy logged at its epoch 1 of the other's epoch 4)
        copies = _pbt_copies(d / "ray" / f"pbt_policy_{tid}.txt")
        for before, after in zip(ran, ran[1:]):
            assert after == before + 1 or any(donor == after - 1 and at <= before for at, donor in copies), \
                (tid, ran, copies)
    assert trials["momentum"].between(0.5, 0.95).all() and trials["dropout"].between(0.0, 0.5).all()
    assert trials["lr"].between(1.0e-3, 1.0e-1).all()


def _pbt_copies(policy: Path) -> set[tuple[int, int]]:
    """(the trial's epoch, the copied trial's epoch) of each copy Ray's PBT logged for this trial."""
    lines = policy.read_text().splitlines() if policy.is_file() else []
    return {(int(p[2]), int(p[3])) for p in map(json.loads, lines)}


def test_a_trials_history_keeps_the_epochs_rays_file_dropped_and_the_retried_epochs_second_result():
    from tuner.search.records import trial_history as _history

    saved = pd.DataFrame({"training_iteration": [1, 2, 5], "val_accuracy": [0.2, 0.4, 0.9]})  # 3, 4 dropped
    reported = [{"training_iteration": i, "val_accuracy": v} for i, v in [(1, 0.2), (2, 0.4), (3, 0.6), (4, 0.7),
                                                                          (4, 0.75), (5, 0.9)]]
    df = _history(saved, reported)
    assert df["training_iteration"].tolist() == [1, 2, 3, 4, 5] and df["val_accuracy"].tolist()[3] == 0.75
    assert _history(saved, None)["training_iteration"].tolist() == [1, 2, 5]
    assert _history(None, None) is None


def test_the_epochs_a_restored_checkpoint_brings_fill_the_holes_in_rays_record_and_replace_nothing():
    """A driver SIGKILLed after a trial's checkpoint but before Ray's snapshot: Ray's record stops at epoch 2,
    the resumed trial goes on at 5 (Ray numbers it 3) and sends its checkpoint's epochs 1-4 (unnumbered)."""
    from tuner.search.records import trial_history as _history

    saved = pd.DataFrame({"training_iteration": [1, 2], "epoch": [1, 2], "val_accuracy": [0.2, 0.4]})
    history = [{"epoch": e, "val_accuracy": v} for e, v in [(1, 0.25), (2, 0.45), (3, 0.6), (4, 0.7)]]
    reported = history + [{"training_iteration": 3, "epoch": 5, "val_accuracy": 0.9}]
    df = _history(saved, reported)
    assert df["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert df["val_accuracy"].tolist() == [0.2, 0.4, 0.6, 0.7, 0.9]  # Ray's own record of 1 and 2 is kept


def test_pbt_explores_inside_the_space():
    from ray.tune.schedulers.pbt import _explore

    from tuner.search.schedulers import build_scheduler
    from tuner.spaces import load

    exp = load(SPACES / "digits_pbt.yaml")
    pbt = build_scheduler(exp)
    config = {**exp.constants, "lr": 0.09, "momentum": 0.94, "dropout": 0.45}
    for _ in range(50):  # Ray picks x0.8 or x1.2 (or a resample) at random
        new, _ = _explore(config, pbt._hyperparam_mutations, pbt._resample_probability,
                          pbt._perturbation_factors, pbt._custom_explore_fn)
        assert 1.0e-3 <= new["lr"] <= 1.0e-1 and 0.5 <= new["momentum"] <= 0.95 and 0 <= new["dropout"] <= 0.5


# --------------------------------------------------------------------------- a killed driver
def _progress(ray_dir: Path) -> dict[str, int]:
    """trial folder -> epochs checkpointed so far (the newest checkpoint's index + 1)."""
    out = {}
    for d in ray_dir.glob("trial_*"):
        ckpts = sorted(d.glob("checkpoint_*"))
        out[d.name] = int(ckpts[-1].name.split("_")[1]) + 1 if ckpts else 0
    return out


def _snapshot_ended(ray_dir: Path) -> set[str]:
    """The trial folders Ray's last experiment state has as ended (TERMINATED or ERROR)."""
    latest = sorted(glob.glob(str(ray_dir / "experiment_state-*.json")))[-1]
    trials = [json.loads(t) for t, _ in json.loads(Path(latest).read_text())["trial_data"]]
    return {f"trial_{t['trial_id']}" for t in trials if t["status"] in ("TERMINATED", "ERROR")}


def _forget_epochs_from(trial_dir: Path, epoch: int) -> None:
    """Ray's record of a trial (result.json, progress.csv) without its results from `epoch` on. (Ray's copy of
    a trial's record may not be in its folder yet, while the trial's own checkpoints are.)"""
    if (trial_dir / "result.json").is_file():
        lines = (trial_dir / "result.json").read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("epoch", 0) < epoch]
        (trial_dir / "result.json").write_text("".join(line + "\n" for line in kept))
    if (trial_dir / "progress.csv").is_file():
        progress = pd.read_csv(trial_dir / "progress.csv")
        progress[progress["epoch"] < epoch].to_csv(trial_dir / "progress.csv", index=False)


def _check_dashboard_is_private(printed: str) -> None:
    """The dashboard answers on 127.0.0.1 only, and only to requests that carry Ray's token."""
    import socket
    import urllib.error
    import urllib.request

    from ray._private.services import get_node_ip_address

    url = printed.split("Ray dashboard: http://", 1)[1].split()[0]
    host, port = url.rsplit(":", 1)
    assert host == "127.0.0.1"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"http://{url}/api/jobs/", timeout=10)
    assert exc.value.code == 401
    node_ip = get_node_ip_address()
    if not node_ip.startswith("127."):  # not reachable from the network
        with pytest.raises(OSError):
            socket.create_connection((node_ip, int(port)), timeout=5).close()


@pytest.mark.slow
def test_sigkilled_driver_resumes_every_trial_from_its_checkpoint_and_keeps_the_optuna_history(results):
    _shutdown_ray()  # the subprocess starts its own Ray
    max_epochs, samples = 4, 3
    args = [sys.executable, "-m", "tuner", "search", "--space", str(SPACES / "digits_cnn.yaml"),
            "--results", str(results), "--no-retrain",
            "--set", f"search.num_samples={samples}", "--set", "search.max_concurrent=2",
            "--set", "scheduler.name=fifo", "--set", f"scheduler.max_epochs={max_epochs}",
            # batch_size 4: ~270 steps an epoch, so an epoch takes about a second and the kill lands mid-search
            "--set", "fixed.channels=16", "--set", "fixed.batch_size=4", "--set", "fixed.optimizer=adam"]
    env = dict(os.environ)  # conftest puts this checkout first on PYTHONPATH
    ray_dir = results / "digits_cnn" / "ray"
    log = results.parent / "first_run.log"
    results.mkdir(parents=True)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    dashboard_checked = False
    try:
        # kill once a trial has finished and every other started trial is 2+ epochs in (so it has a
        # checkpoint the experiment state knows of), before the search is over
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            p = _progress(ray_dir) if ray_dir.is_dir() else {}
            done = [t for t, n in p.items() if n == max_epochs]
            # and one of them two epochs short of the end at least, so it is still running after the kill
            if done and all(n >= 2 for n in p.values()) and any(n <= max_epochs - 2 for n in p.values()):
                break
            if not dashboard_checked and "Ray dashboard: http://" in log.read_text():
                _check_dashboard_is_private(log.read_text())
                dashboard_checked = True
            time.sleep(0.2)
        assert dashboard_checked, log.read_text()[-3000:]
        assert proc.poll() is None, "the search ended before it could be killed; make it longer"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        try:  # stop the Ray workers the driver left behind, so the snapshot below holds still
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        before = _progress(ray_dir)
        # a kill between a trial's checkpoint and Ray's next snapshot: Ray's record of the trial ends before
        # the epochs that checkpoint holds, and the resumed trial goes on after them (a new user's search left
        # epochs.csv with holes so). Made certain here: the last two checkpointed epochs leave Ray's record
        cut = {t: n for t, n in before.items() if 2 <= n < max_epochs and t not in _snapshot_ended(ray_dir)}
        for t, n in cut.items():
            _forget_epochs_from(ray_dir / t, n - 1)
        # a folder without params.json is a trial the driver was killed while creating: it never ran
        params_before = {t: json.loads((ray_dir / t / "params.json").read_text()) for t in before
                         if (ray_dir / t / "params.json").is_file()}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray processes the killed driver left behind
        except ProcessLookupError:
            pass
    time.sleep(1)
    assert 0 < len(before) < samples or any(n < max_epochs for n in before.values())
    assert cut, f"no trial was 2 or more epochs in and running at the kill: {before}"

    r = subprocess.run(args + ["--resume", "--no-dashboard"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]

    trials = pd.read_csv(results / "digits_cnn" / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == samples
    assert set(trials["status"]) == {"TERMINATED"} and set(trials["epochs"]) == {max_epochs}
    epochs = pd.read_csv(results / "digits_cnn" / "epochs.csv", dtype={"trial_id": str})
    for trial_id, rows in epochs.groupby("trial_id"):
        assert (rows["epoch"] == 1).sum() == 1, f"trial {trial_id} started over from epoch 0"
        assert set(rows["epoch"]) == set(range(1, max_epochs + 1))
    # Ray's own progress.csv, continued by the resumed run, keeps one field per column of its header
    for progress in ray_dir.glob("trial_*/progress.csv"):
        widths = {len(row) for row in csv.reader(progress.open())}
        assert len(widths) == 1, f"{progress}: rows of {sorted(widths)} fields"
    # the searcher kept what it learned: its study is optuna.journal (what `tuner dashboard` serves), and
    # every trial from before the kill is in it, finished; a trial asked for after the searcher's last
    # snapshot, which Ray never ran, was dropped when the run ended, so it holds trials.csv's trials alone
    from tuner.search.study import storage

    journal = optuna.load_study(study_name="digits_cnn", storage=storage(results / "digits_cnn")).trials
    assert {t.state.name for t in journal} == {"COMPLETE"}
    assert sorted(t.user_attrs["ray_trial_id"] for t in journal) == sorted(trials["trial_id"])
    lrs = {round(t.params["lr"], 12) for t in journal}
    for name, params in params_before.items():
        assert round(params["lr"], 12) in lrs, f"{name} is missing from the Optuna history"
    assert set(trials["trial_id"]) <= set(_snapshot_trials(ray_dir))



def _as_if_killed_before_its_last_result(exp_dir: Path) -> None:
    """A finished search's folder as a SIGKILL between a trial's last checkpoint and Ray's record of that
    epoch leaves it: Ray's snapshot has the trial RUNNING with that checkpoint, its record ends an epoch
    before, and tuner's tables were never written."""
    ray_dir = exp_dir / "ray"
    state = Path(sorted(glob.glob(str(ray_dir / "experiment_state-*.json")))[-1])
    saved = json.loads(state.read_text())
    for entry in saved["trial_data"]:
        trial = json.loads(entry[0])
        entry[0] = json.dumps({**trial, "status": "RUNNING"})
        _forget_epochs_from(ray_dir / f"trial_{trial['trial_id']}", 2)
    state.write_text(json.dumps(saved))
    for table in ("trials.csv", "epochs.csv", "best.yaml"):
        (exp_dir / table).unlink()


@pytest.mark.slow
def test_a_trial_restored_from_its_last_epochs_checkpoint_keeps_every_epoch_it_holds(results):
    """Nothing is left to train after such a restore; the trial still ends with its 2 epochs and its best at
    epoch 2, in the tables, best.yaml and the console (a new user's SIGKILLed search ended a trial short).
    Each run a program of its own, as a user's: run in this process, the first run's record of epoch 2 came back
    into result.json after the edit below (Ray's logger still held it), hiding the loss."""
    _shutdown_ray()  # each run starts its own Ray
    args = [sys.executable, "-m", "tuner", "search", "--space", str(SPACES / "digits_linear.yaml"),
            "--results", str(results), "--no-dashboard", "--no-retrain", "--set", "search.num_samples=1",
            "--set", "scheduler.name=fifo", "--set", "scheduler.max_epochs=2", "--set", "scheduler.grace_period=1",
            "--set", "dataset.limit=300"]
    assert subprocess.run(args, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    exp_dir = results / "digits_linear"
    first = pd.read_csv(exp_dir / "epochs.csv", dtype={"trial_id": str})
    _as_if_killed_before_its_last_result(exp_dir)
    r = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resume: 0 trials in trials.csv kept; unfinished ones go on from their last checkpoints" in r.stdout
    # restored from its checkpoint, not trained again: Ray's record goes on after epoch 1
    assert [json.loads(line)["training_iteration"] for line in
            next(exp_dir.glob("ray/trial_*/result.json")).read_text().splitlines()] == [1, 3]
    trials = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    epochs = pd.read_csv(exp_dir / "epochs.csv", dtype={"trial_id": str})
    assert trials["epochs"].tolist() == [2] and trials["best_epoch"].tolist() == [2]
    assert epochs["epoch"].tolist() == [1, 2]
    assert epochs["val_accuracy"].tolist() == first["val_accuracy"].tolist()
    best = yaml.safe_load((exp_dir / "best.yaml").read_text())
    assert best["epochs_run"] == 2 and best["metrics"]["val_accuracy"] == first["val_accuracy"].iloc[1]
    assert re.search(r"\(epoch 2\), 2 epochs, completed", r.stdout), r.stdout

# --------------------------------------------------------------------------- a cluster
@pytest.mark.slow
def test_two_node_cluster_runs_trials_on_both_nodes(results):
    import ray
    from ray.cluster_utils import Cluster

    _shutdown_ray()
    # one CPU a node and one a trial: two concurrent trials can only fit by using both nodes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        rc = cli.main(["search", "--space", str(SPACES / "digits_linear.yaml"), "--address", cluster.address,
                       "--results", str(results), "--no-dashboard", "--no-retrain",
                       "--set", "search.num_samples=4", "--set", "search.max_concurrent=2",
                       "--set", "resources={cpu: 1, gpu: 0}", "--set", "scheduler.name=fifo",
                       "--set", "scheduler.max_epochs=2", "--set", "scheduler.grace_period=1",
                       "--set", "dataset.limit=200"])
        assert rc == 0
        nodes = set()
        for f in (results / "digits_linear" / "ray").glob("trial_*/result.json"):
            nodes |= {json.loads(line)["node_id"] for line in f.read_text().splitlines() if line.strip()}
        assert nodes == {cluster.head_node.node_id, worker.node_id}
        trials = pd.read_csv(results / "digits_linear" / "trials.csv")
        assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_a_search_the_time_budget_ends_before_any_trial_reports_names_the_budget(tmp_path, results, capsys):
    # a trial's first epoch needs its actor started and torch imported, which takes longer than 1 s: the
    # budget, not the space, is what left the search without a trial (the hint once said "a narrower lr range")
    space = tmp_path / "budget.yaml"
    space.write_text(yaml.safe_dump({
        "name": "budget", "family": "cnn", "dataset": {"name": "digits"},
        "search": {"algorithm": "random", "num_samples": 2, "time_budget": 1},
        "scheduler": {"name": "fifo", "max_epochs": 50}, "space": {"lr": {"loguniform": [0.001, 0.01]}}}))
    assert cli.main(["search", "--space", str(space), "--results", str(results), "--no-dashboard"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no trial finished" in last
    assert "within search.time_budget (1 s" in last and "raise search.time_budget" in last
    assert "narrower lr range" not in last


@pytest.mark.slow
def test_a_grid_with_a_warm_start_runs_it_and_the_whole_grid_on_tables_the_driver_made_with_progress(
        tmp_path, results, capsys):
    # Ray counts a point to evaluate as one of num_samples, and one grid sample is a whole pass: cars_knn.yaml's
    # warm start used to be its only trial. The embeddings and neighbour tables are made before the trials,
    # in the driver, with progress on the console (a trial's output does not reach it)
    space = tmp_path / "g.yaml"
    space.write_text(yaml.safe_dump({
        "name": "g", "family": "knn", "dataset": {"name": "digits", "limit": 200},
        "search": {"algorithm": "grid", "max_concurrent": 2, "warm_start": [{"k": 3, "metric": "cosine"}]},
        "scheduler": {"name": "fifo", "max_epochs": 1},
        "space": {"k": {"grid": [1, 3]}, "metric": {"grid": ["euclidean", "cosine"]}}}))
    assert cli.main(["search", "--space", str(space), "--results", str(results), "--no-dashboard",
                     "--no-retrain"]) == 0
    trials = pd.read_csv(results / "g" / "trials.csv")
    assert len(trials) == 5 and set(trials["status"]) == {"TERMINATED"}
    captured = capsys.readouterr()
    assert "embedding train" in captured.err and re.search(r"embedded \d+ images in", captured.err)
    assert "neighbour table euclidean-none: " in captured.err and "neighbour table cosine: " in captured.err
    assert "warm-up: knn's embeddings and tables ready" in captured.out
