"""A search never removes or writes anything outside its own experiment folder, whatever name it is given."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tuner import cli
from tuner.search.cluster import storage_lock

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "digits_linear.yaml"


def _victim(tmp_path: Path) -> Path:
    """A folder a hostile name would aim at, with something to lose in it."""
    v = tmp_path / "victim"
    (v / "sub").mkdir(parents=True)
    (v / "precious.txt").write_text("keep me")
    (v / "sub" / "more.txt").write_text("and me")
    return v


def _intact(v: Path) -> bool:
    return (v / "precious.txt").read_text() == "keep me" and (v / "sub" / "more.txt").read_text() == "and me"


def _refused(capsys, argv: list[str]) -> str:
    """The search exits 2 with one `error:` line and no traceback; returns that line."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    # Ray logs its own warnings to stderr when it starts; ours is the last line and the only error
    assert rc == 2 and lines[-1].startswith("error: ") and sum(l.startswith("error:") for l in lines) == 1, err
    return lines[-1]


def _search(results: Path, *extra: str) -> list[str]:
    return ["search", "--space", str(SPACE), "--results", str(results), "--no-dashboard", "--smoke", *extra]


HOSTILE = ["..", ".", "", "a/b", "../victim", "/abs/path", "a\\b", "new\nline", "nul\x00byte", "x" * 300, ".hidden"]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_a_hostile_name_is_refused_by_every_way_a_name_arrives(tmp_path, capsys, name):
    victim = _victim(tmp_path)
    results = victim / "results"  # `--name ..` would have removed the victim itself
    (results / "old").mkdir(parents=True)
    abs_name = str(victim) if name == "/abs/path" else name
    _refused(capsys, _search(results, "--name", abs_name))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**yaml.safe_load(SPACE.read_text()), "name": abs_name}))
    if name != "":  # an empty name: falls back to the file's stem, which is a fine name
        _refused(capsys, _search(results, "--space", str(space)))
        _refused(capsys, ["validate", "--space", str(space)])
    _refused(capsys, _search(results, "--set", f"name={yaml.safe_dump(abs_name, default_style=chr(34)).strip()}"))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": abs_name or None, "suite": [str(SPACE)]}) if name else
                     yaml.safe_dump({"suite": [str(SPACE)], "ensemble": [""]}))
    _refused(capsys, ["validate", "--space", str(suite)])
    assert _intact(victim) and (results / "old").is_dir()


def test_a_name_that_is_not_a_string_is_refused_not_turned_into_one(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**yaml.safe_load(SPACE.read_text()), "name": [1, 2]}))
    line = _refused(capsys, ["validate", "--space", str(space)])
    assert "name" in line and "list" in line


def test_a_symlinked_experiment_folder_is_refused_and_its_target_kept(tmp_path, capsys):
    victim = _victim(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    (results / "digits_linear").symlink_to(victim)
    line = _refused(capsys, _search(results))
    assert "link" in line and "remove it by hand" in line
    assert _intact(victim) and (results / "digits_linear").is_symlink()


def test_a_folder_that_is_not_an_experiment_is_not_replaced(tmp_path, capsys):
    results = tmp_path / "results"
    (results / "digits_linear").mkdir(parents=True)
    (results / "digits_linear" / "notes.txt").write_text("mine")
    line = _refused(capsys, _search(results))
    assert "not a tuner experiment" in line and "digits_linear" in line
    assert os.listdir(results / "digits_linear") == ["notes.txt"]  # not even a lock file was left there


def test_results_that_are_a_link_resolve_and_the_folder_under_them_is_checked(tmp_path, capsys):
    # a results folder reached through a link is fine; what is removed is still judged by what it is
    real = tmp_path / "real"
    (real / "digits_linear").mkdir(parents=True)
    (real / "digits_linear" / "thesis.tex").write_text("years of work")
    (tmp_path / "link").symlink_to(real)
    _refused(capsys, _search(tmp_path / "link"))
    assert (real / "digits_linear" / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("kind", ["symlink", "file", "not_tune"])
def test_storage_side_removes_only_a_tune_experiment_of_that_name(tmp_path, capsys, kind):
    victim = _victim(tmp_path)
    storage = tmp_path / "storage"
    storage.mkdir()
    target = storage / "digits_linear"
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "file":
        target.write_text("a file")
    else:
        (target / "data").mkdir(parents=True)
        (target / "data" / "x.bin").write_text("someone's data")
    results = tmp_path / "results"
    line = _refused(capsys, _search(results, "--storage", str(storage)))
    assert "storage" in line and "remove it by hand" in line
    assert _intact(victim) and (target.is_symlink() or target.exists())
    if kind == "not_tune":
        assert (target / "data" / "x.bin").read_text() == "someone's data"
    # and nothing was left in the results folder: not even the experiment folder the lock was taken in
    assert not (results / "digits_linear").exists()


# --------------------------------------------------------------------------- interruption, change, a second search
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _wait_for(cond, proc, log: Path, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not cond():
        time.sleep(0.2)
    assert proc.poll() is None and cond(), log.read_text()[-3000:]


def _started_epochs(ray_dir: Path) -> int:
    return sum(len(list(d.glob("checkpoint_*"))) for d in ray_dir.glob("trial_*")) if ray_dir.is_dir() else 0


@pytest.mark.slow
def test_a_second_search_on_the_same_storage_and_name_is_refused_from_another_results_folder(tmp_path, capsys):
    storage = tmp_path / "storage"
    running = storage / "digits_linear"  # the first search's Ray experiment, on the shared storage
    running.mkdir(parents=True)
    (running / "tuner.pkl").write_bytes(b"the first search's state")
    # the first search holds the storage lock (as run_search does) from its own results folder
    with storage_lock(str(storage), "digits_linear"):
        line = _refused(capsys, _search(tmp_path / "other_results", "--storage", str(storage)))
    assert "another search of this experiment is running" in line and str(running) in line
    assert (running / "tuner.pkl").read_bytes() == b"the first search's state"  # nothing of it removed


@pytest.mark.slow
def test_sigint_stops_with_130_retrains_nothing_and_a_second_search_is_refused_while_one_runs(tmp_path, capsys,
                                                                                             study_matches_tables):
    _shutdown_ray()
    results = tmp_path / "results"
    results.mkdir()
    args = [sys.executable, "-m", "tuner", "search", "--space", str(ROOT / "search_spaces" / "digits_cnn.yaml"),
            "--results", str(results), "--no-dashboard", "--set", "search.num_samples=3",
            "--set", "search.max_concurrent=1", "--set", "scheduler.name=fifo", "--set", "scheduler.max_epochs=6",
            "--set", "fixed.channels=16", "--set", "fixed.batch_size=4", "--set", "fixed.optimizer=adam"]
    env = dict(os.environ)  # conftest puts this checkout first on PYTHONPATH
    exp = results / "digits_cnn"
    log = tmp_path / "run.log"
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_for(lambda: _started_epochs(exp / "ray") >= 1, proc, log)
        # a second search of the same experiment: refused, naming the running one; nothing of it removed
        line = _refused(capsys, ["search", "--space", str(ROOT / "search_spaces" / "digits_cnn.yaml"),
                                 "--results", str(results), "--no-dashboard"])
        assert "another search" in line and f"pid {proc.pid}" in line
        assert (exp / "ray").is_dir()
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 130, text[-3000:]
    assert "--resume" in text.strip().splitlines()[-1]
    # nothing retrained (best.yaml may name the best trial so far: the live tables write it once one has
    # ended, which on a loaded machine can happen before the Ctrl-C)
    assert not (exp / "best").exists() and "retrained" not in text

    # --resume with a changed space: refused, naming the keys, and the saved space left as it was
    saved = (exp / "space.yaml").read_text()
    line = _refused(capsys, ["search", "--space", str(ROOT / "search_spaces" / "digits_cnn.yaml"),
                             "--results", str(results), "--no-dashboard", "--resume"] + args[args.index("--set"):]
                    + ["--set", "scheduler.max_epochs=2", "--set", "fixed.channels=8"])
    assert "scheduler.max_epochs" in line and "fixed.channels" in line
    assert (exp / "space.yaml").read_text() == saved

    # two SIGKILLed resumes leave no stale lock: the next --resume runs to the end
    for _ in range(2):
        proc = subprocess.Popen(args + ["--resume", "--no-retrain"], cwd=ROOT, env=env, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            before = _started_epochs(exp / "ray")
            _wait_for(lambda: _started_epochs(exp / "ray") > before, proc, log)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the Ray processes the killed driver started
            except ProcessLookupError:
                pass
    r = subprocess.run(args + ["--resume", "--no-retrain", "--set", "scheduler.max_epochs=6"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 3 and set(trials["status"]) == {"TERMINATED"}
    # after the Ctrl-C and the two kills the study holds what the tables hold: the same trials, states, values
    study_matches_tables(exp, 6)
    best = yaml.safe_load((exp / "best.yaml").read_text())["trial_id"]
    _console_counts_every_trial(r.stdout, trials, best)
    # the interrupted run and this one (the SIGKILLed ones wrote nothing): their seconds add up
    timing = json.loads((exp / "run.json").read_text())
    assert timing["runs"] == 2 and timing["trials"] == 3, timing
    # the trial the kill interrupted names its best epoch from its checkpoint, not from the epochs since
    for line in r.stdout.splitlines():
        tid, _, rest = line.partition(" val_accuracy ")
        if tid in set(trials["trial_id"]) and "(epoch " in rest:
            epoch = int(rest.split("(epoch ")[1].split(")")[0])
            assert epoch == trials.set_index("trial_id").loc[tid, "best_epoch"], line

    # --resume of a search that had ended: nothing runs, and the console still counts the 3 trials
    r = subprocess.run(args + ["--resume", "--no-retrain"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    _console_counts_every_trial(r.stdout, trials, best)
    again = json.loads((exp / "run.json").read_text())
    assert again["runs"] == 3 and again["search_s"] >= timing["search_s"], again


def _console_counts_every_trial(out: str, trials: pd.DataFrame, best: str) -> None:
    last = [line for line in out.splitlines() if " done, " in line][-1]
    assert last.startswith(f"{len(trials)}/{len(trials)} done, ") and f"({best})" in last, out[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["random", "grid"])
def test_max_concurrent_one_runs_one_trial_at_a_time_for_every_algorithm(tmp_path, algorithm):
    results = tmp_path / "results"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "name": "serial", "family": "mlp", "dataset": {"name": "digits", "limit": 600},
        "search": {"algorithm": algorithm, "num_samples": 3 if algorithm == "random" else 1, "max_concurrent": 1},
        "scheduler": {"name": "fifo", "max_epochs": 3}, "resources": {"cpu": 1, "gpu": 0},
        "fixed": {"optimizer": "sgd", "momentum": 0.9, "hidden": [64], "batch_size": 8},
        "space": {"lr": {"grid": [0.01, 0.02, 0.05]} if algorithm == "grid" else {"loguniform": [0.01, 0.1]}}}))
    assert cli.main(["search", "--space", str(space), "--results", str(results), "--no-dashboard",
                     "--no-retrain"]) == 0
    spans = []
    for f in (results / "serial" / "ray").glob("trial_*/result.json"):
        last = [json.loads(line) for line in f.read_text().splitlines() if line.strip()][-1]
        # Ray stamps results in whole seconds: a trial ran from about its end minus its running time
        spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    spans.sort()
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 1.5, f"two trials overlapped: {spans}"


# --------------------------------------------------------------------------- no hangs, no endless retries
def _nan_space(tmp_path: Path, **extra) -> Path:
    space = tmp_path / "nan.yaml"
    space.write_text(yaml.safe_dump({
        "name": "nan", "family": "mlp", "dataset": {"name": "digits", "limit": 200},
        "search": {"algorithm": "grid", "max_concurrent": 2}, "scheduler": {"name": "fifo", "max_epochs": 2},
        "fixed": {"optimizer": "sgd", "momentum": 0.9, "hidden": [32]},
        "space": {"lr": {"grid": [0.05, 1.0e8]}}, **extra}))  # 1e8 diverges to NaN in the first epoch
    return space


@pytest.mark.slow
@pytest.mark.parametrize("concurrent", [1, 2])
def test_retry_forever_does_not_retry_a_nan_trial_forever(tmp_path, concurrent):
    # one at a time, the retry always runs on an actor Ray reuses from the other trial, which Ray gives
    # another trial folder than a fresh actor: the marker of the first failure must be found all the same
    # (it once was not, and the retry trained again whenever the other trial had ended first)
    results = tmp_path / "results"
    space = _nan_space(tmp_path, max_failures=-1)
    space.write_text(space.read_text().replace("max_concurrent: 2", f"max_concurrent: {concurrent}"))
    # a subprocess with a deadline: an endless retry fails the test instead of hanging it
    r = subprocess.run([sys.executable, "-m", "tuner", "search", "--space", str(space), "--results", str(results),
                        "--no-dashboard", "--no-retrain"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = pd.read_csv(results / "nan" / "trials.csv").set_index("lr")
    assert trials.loc[1.0e8, "status"] == "ERROR" and "nan" in trials.loc[1.0e8, "error"]
    errors = next((results / "nan" / "ray").glob("trial_*/error.txt")).read_text()
    assert errors.count("Failure #") <= 2  # the one retry Tune had queued before it could be told
    if errors.count("Failure #") == 2:  # ... which ended at its start, before training again
        retry = errors.rsplit("Failure #", 1)[1]
        assert "nan" in retry and "learner.fit" not in retry, errors  # both failures: was the first the NaN?


@pytest.mark.slow
@pytest.mark.parametrize("key,value", [("gpu", 1), ("cpu", 64)])
def test_resources_the_cluster_cannot_give_are_refused_before_any_trial(tmp_path, capsys, key, value):
    results = tmp_path / "results"
    res = {"cpu": 1, "gpu": 0, key: value}
    line = _refused(capsys, _search(results, "--set", f"resources={{cpu: {res['cpu']}, gpu: {res['gpu']}}}"))
    assert f"resources.{key}: {value}" in line and "the cluster has" in line
    assert not list((results / "digits_linear").glob("ray/trial_*"))


@pytest.mark.slow
def test_the_ray_token_file_is_private_after_a_search_starts_ray(tmp_path, capsys):
    _shutdown_ray()
    _refused(capsys, _search(tmp_path / "results", "--set", "resources={cpu: 1, gpu: 1}"))  # starts Ray, then stops
    token = Path.home() / ".ray" / "auth_token"
    if token.is_file():
        assert token.stat().st_mode & 0o077 == 0
