"""`search.fuse` through the real CLI: each configuration of a group is a trial of its own in trials.csv,
epochs.csv, the journal and best.yaml; knn configurations are looked up in one trial; a SIGKILLed fused
search resumed ends as an uninterrupted one; a space where fusing cannot apply is refused in one line."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MEMBER = re.compile(r"^[0-9a-f]+_m\d+$")

LINEAR = """
name: fz
dataset: {name: digits, split: {val: 0.2, test: 0.2, seed: 0}, normalize: dataset}
family: linear
search: {algorithm: optuna, num_samples: 6, max_concurrent: 1, seed: 0, fuse: 3}
scheduler: {name: asha, max_epochs: 4, grace_period: 1, reduction_factor: 3}
space:
  lr: {loguniform: [1.0e-3, 1.0e-1]}
  weight_decay: {loguniform: [1.0e-6, 1.0e-2]}
"""

# a grid, so that two runs search the same configurations; batch_size 4 makes an epoch last a while
GRID = """
name: fg
dataset: {name: digits, split: {val: 0.2, test: 0.2, seed: 0}, normalize: dataset}
family: mlp
search: {algorithm: grid, max_concurrent: 1, seed: 0, fuse: 3}
scheduler: {name: fifo, max_epochs: 10}
fixed: {batch_size: 4, hidden: [32]}
space:
  lr: {grid: [0.003, 0.01, 0.03]}
  weight_decay: {grid: [1.0e-5, 1.0e-3]}
"""

KNN = """
name: fk
dataset: {name: digits, split: {val: 0.2, test: 0.2, seed: 0}, normalize: dataset}
family: knn
search: {algorithm: grid, max_concurrent: 1, seed: 0, fuse: 8}
scheduler: {name: fifo, max_epochs: 1}
fixed: {backbone: pixels}
space:
  k: {grid: [1, 3, 5, 7]}
  metric: {grid: [euclidean, cosine]}
  weights: {grid: [uniform, distance]}
"""


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _tuner(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "MPLBACKEND": "Agg"})


def _refused(capsys, *args: str) -> list[str]:
    """`tuner validate ARGS` in this process (a subprocess costs 2 s of imports): exit 2, its stderr lines."""
    from tuner.cli import main

    assert main(["validate", *args]) == 2
    out = capsys.readouterr()
    assert not out.out, out.out
    return out.err.strip().splitlines()


def _journal(exp: Path, name: str) -> list:
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage).trials


@pytest.fixture(scope="module")
def fused_linear(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One fused search with its retrain, read by the tests below: its output and its experiment folder."""
    tmp = tmp_path_factory.mktemp("fused_linear")
    r = _tuner("search", "--space", str(_space(tmp, LINEAR)), "--results", str(tmp / "r"), "--no-dashboard")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, tmp / "r" / "fz"


@pytest.mark.slow
def test_a_fused_search_records_each_member_as_a_trial_and_retrains_the_best(fused_linear, study_matches_tables):
    r, exp = fused_linear
    assert "fused:   up to 3 configurations" in r.stdout
    trials = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 6 and all(MEMBER.match(t) for t in trials["trial_id"]), trials["trial_id"].tolist()
    assert trials["trial_id"].str.rsplit("_", n=1).str[0].nunique() == 2  # two groups of three
    epochs = pd.read_csv(exp / "epochs.csv", dtype={"trial_id": str})
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    assert epochs.groupby("trial_id")["epoch"].max().to_dict() == trials.set_index("trial_id")["epochs"].to_dict()
    journal = _journal(exp, "fz")
    assert len(journal) == len(trials)
    assert {t.user_attrs["ray_trial_id"] for t in journal} == set(trials["trial_id"])
    study_matches_tables(exp, 4)
    best = yaml.safe_load((exp / "best.yaml").read_text())
    assert best["trial_id"] in set(trials["trial_id"])
    assert best["metrics"]["val_accuracy"] == pytest.approx(trials["val_accuracy"].max())
    for line in trials["trial_id"]:  # a console line per member
        assert line in r.stdout
    assert (exp / "best" / "metrics.json").is_file(), r.stdout[-2000:]  # the retrain of the best member's config


@pytest.mark.slow
def test_resume_restores_the_rows_of_groups_that_ended_before_the_tables_were_written(fused_linear, tmp_path):
    # a driver SIGKILLed after Ray's snapshot recorded a group's end but before trials.csv had its members
    # (written every 2 s): Ray sends no event for a finished group, and the resumed search ended with 3 of
    # 6 configurations, the study cut down to match. Here the tables lose a whole group's rows by hand
    import shutil

    _, exp = fused_linear
    copy = tmp_path / "r" / "fz"
    shutil.copytree(exp, copy)
    want = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str}).set_index("trial_id").sort_index()
    first = sorted(want.index)[0].rsplit("_", 1)[0]
    for table in ("trials.csv", "epochs.csv"):
        rows = pd.read_csv(copy / table, dtype={"trial_id": str})
        rows[~rows["trial_id"].str.startswith(first)].to_csv(copy / table, index=False)
    r = _tuner("search", "--space", str(_space(tmp_path, LINEAR)), "--results", str(tmp_path / "r"),
               "--no-dashboard", "--no-retrain", "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = pd.read_csv(copy / "trials.csv", dtype={"trial_id": str}).set_index("trial_id").sort_index()
    assert list(got.index) == list(want.index), got
    for col in ("status", "epochs", "val_accuracy", "val_loss", "best_epoch", "lr", "weight_decay"):
        pd.testing.assert_series_equal(got[col], want[col], check_exact=False, rtol=1e-12)
    epochs = pd.read_csv(copy / "epochs.csv", dtype={"trial_id": str})
    assert len(epochs) == len(pd.read_csv(exp / "epochs.csv")), epochs
    assert len(_journal(copy, "fz")) == 6


@pytest.mark.slow
def test_a_fused_winners_bundle_predicts_as_a_plain_searchs_bundle_of_its_config(fused_linear, tmp_path):
    # the retrain trains the winner alone: a member's recorded config must be the whole config a plain trial
    # of it has (no group key, no member seed), so that both retrains are the same training
    from sklearn.datasets import load_digits

    from tuner.predict import load

    _, exp = fused_linear
    best = yaml.safe_load((exp / "best.yaml").read_text())
    values = {k: best["config"][k] for k in ("lr", "weight_decay")}
    space = _space(tmp_path, LINEAR)
    r = _tuner("search", "--space", str(space), "--results", str(tmp_path / "p"), "--no-dashboard",
               "--set", "search.fuse=off", "--set", "search.num_samples=1",
               "--set", f"search.warm_start=[{{lr: {values['lr']!r}, weight_decay: {values['weight_decay']!r}}}]")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "fused:" not in r.stdout
    plain = yaml.safe_load((tmp_path / "p" / "fz" / "best.yaml").read_text())
    assert plain["config"] == best["config"]
    x = load_digits().images
    got = load(exp / "best" / "model.pt").predict_proba(x)
    want = load(tmp_path / "p" / "fz" / "best" / "model.pt").predict_proba(x)
    assert abs(got - want).max() <= 1e-6


@pytest.mark.slow
def test_knn_configurations_are_looked_up_in_one_trial_each_a_row(tmp_path, study_matches_tables):
    r = _tuner("search", "--space", str(_space(tmp_path, KNN)), "--results", str(tmp_path / "r"), "--no-dashboard",
               "--no-retrain")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tmp_path / "r" / "fk"
    trials = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 16 and set(trials["status"]) == {"TERMINATED"}
    assert trials["trial_id"].str.rsplit("_", n=1).str[0].nunique() == 2  # 16 configurations, 8 a trial
    assert len(list((exp / "ray").glob("trial_*"))) == 2
    assert len(_journal(exp, "fk")) == 16
    assert yaml.safe_load((exp / "run.json").read_text())["trials"] == 16  # configurations, not Ray's groups
    # each row has the size and speed a plain knn trial measures (they were left empty)
    measured = trials[["num_params", "latency_ms", "latency_ms_b64"]]
    assert measured.notna().all().all() and (measured > 0).all().all(), measured.to_string()
    study_matches_tables(exp, 1)


def test_a_grid_point_a_killed_run_left_waiting_does_not_enter_a_group_twice(tmp_path):
    """A SIGKILL between a group's enqueue of a grid point and its ask leaves that point WAITING in the journal;
    on --resume the next group's first ask took it, so one configuration ran twice and another never (CI, under
    load: [p4, p3, p4] for [p3, p4, p5])."""
    from tuner.search import fused
    from tuner.spaces import parse_experiment

    exp = parse_experiment(yaml.safe_load(GRID))
    groups, _ = fused.build(exp, tmp_path)
    while not isinstance(groups, fused.GroupSearch):
        groups = groups.searcher
    points = fused.member_points(exp)
    first = groups.suggest("g1")
    groups.searcher.study.enqueue_trial(points[4])  # what the killed run left behind
    second = groups.suggest("g2")
    asked = [[{k: m["config"][k] for k in ("lr", "weight_decay")} for m in g["members"]] for g in (first, second)]
    assert asked == [points[:3], points[3:]], asked


def _group(key: str, n: int, status: str = "RUNNING"):
    from types import SimpleNamespace

    from tuner.search.fused_trial import MEMBERS

    return SimpleNamespace(trial_id=key, status=status, last_result={},
                           config={MEMBERS: [{"key": f"{key}_m{i}", "config": {"lr": 0.01}} for i in range(n)]})


def test_members_a_time_budget_cut_are_said_cut_and_members_ended_before_a_resume_are_counted(tmp_path):
    """MemberEvents with the real live tables and console, fed as Ray feeds it: a group the time budget ends
    sends no event, so its members are cut (once "0/6 done, 2 running"); members in trials.csv from before a
    --resume are counted as ended, not said again when their restored group repeats them."""
    from tuner.search.console import Console
    from tuner.search.fused import MemberEvents
    from tuner.search.fused_trial import MEMBERS
    from tuner.search.live import LiveResults
    from tuner.spaces import load

    exp = load(_space(tmp_path, LINEAR), ["search.time_budget=60s", "scheduler.name=fifo"])
    lines: list[str] = []
    live = LiveResults(exp, tmp_path)
    events = MemberEvents([live, Console(exp, say=lines.append)], live)
    events.setup()
    group = _group("aa", 2)
    events.on_trial_start(0, [group], group)
    epoch = {"epoch": 1, "training_iteration": 1, "val_accuracy": 0.5, "val_loss": 1.0, "best_val_accuracy": 0.5}
    events.on_trial_result(0, [group], group, {MEMBERS: {"aa_m0": epoch, "aa_m1": epoch}})
    group.status = "TERMINATED"  # the budget: Tune ends it, no complete event
    events.on_experiment_end([group])
    assert lines[-1].startswith("0/6 done, 0 running") and lines[-1].endswith("| 2 cut by the time budget"), lines

    # a search interrupted once two members had ended (their rows in trials.csv); resumed, their restored
    # group says one of them again and goes on with a third member
    (tmp_path / "b").mkdir()
    live = LiveResults(exp, tmp_path / "b")
    events = MemberEvents([live, Console(exp, say=lambda line: None)], live)
    events.setup()
    group = _group("aa", 3)
    events.on_trial_result(0, [group], group, {MEMBERS: {k: {**epoch, "ended": True} for k in ("aa_m0", "aa_m1")}})
    events.on_experiment_end([group])
    lines.clear()
    live = LiveResults(exp, tmp_path / "b")
    events = MemberEvents([live, Console(exp, say=lines.append)], live)
    events.setup()
    events.on_step_begin(1, [group])
    again = {**epoch, "ended": True, "history": [epoch]}
    events.on_trial_result(1, [group], group, {MEMBERS: {"aa_m0": again, "aa_m2": {**epoch, "ended": True}}})
    events.on_experiment_end([group])
    said = [line for line in lines if MEMBER.match(line.split()[0])]
    assert [line.split()[0] for line in said] == ["aa_m2"], lines
    assert lines[-1].startswith("3/6 done, 0 running"), lines


def _rows(table: Path) -> int:
    try:
        return len(pd.read_csv(table))
    except (OSError, pd.errors.EmptyDataError):
        return 0


def _kill_when(cmd: list[str], log: Path, cond) -> None:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "MPLBACKEND": "Agg"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None and not cond():
            time.sleep(0.2)
        assert proc.poll() is None and cond(), log.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the Ray processes it started
        except ProcessLookupError:
            pass


def _delete_as_ray_does(ray: Path) -> None:
    """What a SIGKILL between Ray's deletion of a checkpoint and its next snapshot leaves (1 of 14 kills just
    after a table write; CI once): the snapshot names checkpoint k, gone, and k+1 is there."""
    import shutil

    from tuner.search import adapters

    named = [p for p in adapters.snapshot_checkpoints(str(ray)) if p.exists()]
    assert named, "no checkpoint named: killed before the first"
    for k in named:
        for newer in [p for p in k.parent.glob("checkpoint_*") if p.name > k.name]:
            shutil.rmtree(newer)
        shutil.copytree(k, k.parent / f"checkpoint_{int(k.name.split('_')[1]) + 1:06d}")
        shutil.rmtree(k)


@pytest.fixture(scope="module")
def uninterrupted_grid(tmp_path_factory) -> Path:
    """trials.csv of the GRID search run to its end without a kill: what each killed and resumed run below
    must end equal to (one run for both, about 35 s)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    plain = _tuner("search", "--space", str(_space(folder, GRID)), "--results", str(folder / "a"),
                   "--no-dashboard", "--no-retrain")
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    return folder / "a" / "fg" / "trials.csv"


@pytest.fixture(scope="module")
def killed_grid(tmp_path_factory) -> Path:
    """The GRID search SIGKILLed in the middle of its first group (some epochs of its members written, no member
    ended): its results folder, which each test below resumes in a copy of its own (a copied folder resumes in
    itself, docs/running.md), so one kill serves both."""
    folder = tmp_path_factory.mktemp("killed")
    exp = folder / "b" / "fg"
    cmd = [sys.executable, "-m", "tuner", "search", "--space", str(_space(folder, GRID)), "--results",
           str(folder / "b"), "--no-dashboard", "--no-retrain"]
    _kill_when(cmd, folder / "killed.log", lambda: _rows(exp / "epochs.csv") >= 6)
    assert _rows(exp / "trials.csv") < 6, "the search ended before the kill; make it longer"
    return folder / "b"


@pytest.mark.slow
@pytest.mark.parametrize("deleted", [False, True], ids=["killed", "killed-after-rays-delete"])
def test_a_sigkilled_fused_search_resumes_each_member_and_ends_as_an_uninterrupted_one(tmp_path, deleted,
                                                                                         uninterrupted_grid,
                                                                                         killed_grid,
                                                                                         study_matches_tables):
    import shutil

    space = _space(tmp_path, GRID)
    results = Path(shutil.copytree(killed_grid, tmp_path / "b", symlinks=True))
    exp = results / "fg"
    if deleted:
        _delete_as_ray_does(exp / "ray")
    # --retry-failed (one case): nothing failed here, and the search says what it reruns in a fused search
    retry = [] if deleted else ["--retry-failed"]
    r = _tuner("search", "--space", str(space), "--results", str(results), "--no-dashboard", "--no-retrain",
               "--resume", *retry)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert ("a member that failed alone (a NaN loss) ended with its group and is not rerun" in r.stdout) == bool(retry)
    keys = ["lr", "weight_decay"]
    want = pd.read_csv(uninterrupted_grid).set_index(keys).sort_index()
    got = pd.read_csv(exp / "trials.csv").set_index(keys).sort_index()
    shown = got[["trial_id", "status", "epochs", "error"]].to_string() + "\n" + r.stdout[-3000:] + r.stderr[-3000:]
    assert len(got) == 6 and set(got["status"]) == {"TERMINATED"} and (got["epochs"] == 10).all(), shown
    # each member went on from its own checkpoint: the same scores as the run that was never interrupted
    pd.testing.assert_series_equal(got["val_accuracy"], want["val_accuracy"])
    pd.testing.assert_series_equal(got["val_loss"], want["val_loss"])
    epochs = pd.read_csv(exp / "epochs.csv", dtype={"trial_id": str})
    assert len(epochs) == 60 and not epochs.duplicated(["trial_id", "epoch"]).any()
    study_matches_tables(exp, 10)
    # Ray's progress.csv of each group, continued after the restore, keeps one field per column of its header
    # (the restored groups' member histories must not reach it: adapters.take_from_result)
    for progress in (exp / "ray").glob("trial_*/progress.csv"):
        widths = {len(row) for row in csv.reader(progress.open())}
        assert len(widths) == 1, f"{progress}: rows of {sorted(widths)} fields"


# ASHA over the same grid: at rung 3 it stops one of the first group's three members (the other two run to 9);
# batch_size 1 makes an epoch last long enough to SIGKILL the search between that stop and the group's end
ASHA_GRID = GRID.replace("scheduler: {name: fifo, max_epochs: 10}",
                         "scheduler: {name: asha, max_epochs: 9, grace_period: 3, reduction_factor: 3}").replace(
    "fixed: {batch_size: 4, hidden: [32]}", "fixed: {batch_size: 1, hidden: [32]}")


@pytest.mark.slow
def test_members_that_ended_after_the_restored_checkpoint_are_not_trained_again(tmp_path, study_matches_tables):
    """trials.csv records a member the rungs stopped, while the group checkpoint Ray restores says it runs (an
    interruption between the tables and Tune's snapshot; the checkpoint is edited to that state here): the
    resumed group trains the member no further. It had trained on to epoch 9, and since the rungs hold its
    rung-3 score and do not judge a member twice, its later scores entered the rung records."""
    import torch

    from tuner.search import adapters
    from tuner.search.fused_trial import MEMBERS
    from tuner.search.trainable import STATE_FILE

    exp = tmp_path / "r" / "fg"
    cmd = [sys.executable, "-m", "tuner", "search", "--space", str(_space(tmp_path, ASHA_GRID)), "--results",
           str(tmp_path / "r"), "--no-dashboard", "--no-retrain"]

    def epochs_ended() -> list[int]:
        return pd.read_csv(exp / "trials.csv")["epochs"].tolist() if _rows(exp / "trials.csv") else []

    _kill_when(cmd, tmp_path / "killed.log", lambda: 3 in epochs_ended())
    assert 9 not in epochs_ended(), "the first group ended before the kill; make its epochs longer"
    stopped = set(pd.read_csv(exp / "trials.csv", dtype={"trial_id": str})["trial_id"])
    for checkpoint in adapters.snapshot_checkpoints(str(exp / "ray")):
        state = torch.load(checkpoint / STATE_FILE, weights_only=True)
        for key in stopped & set(state[MEMBERS]):
            state[MEMBERS][key]["ended"] = False
        torch.save(state, checkpoint / STATE_FILE)
    r = _tuner(*cmd[3:], "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    trained = [(key, m["epoch"]) for f in (exp / "ray").glob("trial_*/result.json")
               for line in f.read_text().splitlines() for key, m in json.loads(line)[MEMBERS].items()
               if key in stopped and "epoch" in m and m["epoch"] > 3]
    assert not trained, trained
    trials = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert len(trials) == 6 and set(trials["status"]) == {"TERMINATED"} and set(trials["epochs"]) == {3, 9}
    assert (trials.loc[sorted(stopped), "epochs"] == 3).all(), trials
    study_matches_tables(exp, 9)


# hidden searched: a list in every config, YAML text in trials.csv ("[32]"); it splits the groups (3 + 3)
LISTS = GRID.replace("fixed: {batch_size: 4, hidden: [32]}", "fixed: {batch_size: 4}").replace(
    "  weight_decay: {grid: [1.0e-5, 1.0e-3]}", "  hidden: {grid: [[32], [16]]}")


@pytest.mark.slow
def test_a_resumed_fused_search_keeps_the_rows_of_members_ended_before_and_retrains_their_config(tmp_path):
    """Killed once the first group has ended (its members in trials.csv), then --resume: those members' rows
    keep what only trials.csv holds (sizes, latencies, times), best.yaml's config has the list the trial had,
    and the retrain builds it (it once read "[32]" back as text and failed)."""
    exp = tmp_path / "r" / "fg"
    cmd = [sys.executable, "-m", "tuner", "search", "--space", str(_space(tmp_path, LISTS)), "--results",
           str(tmp_path / "r"), "--no-dashboard"]
    _kill_when(cmd, tmp_path / "killed.log", lambda: _rows(exp / "trials.csv") >= 3)
    assert _rows(exp / "trials.csv") < 6, "the search ended before the kill; make it longer"
    before = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    r = _tuner(*cmd[3:], "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert len(got) == 6 and set(got["status"]) == {"TERMINATED"}, got.to_string()
    assert yaml.safe_load((exp / "run.json").read_text())["trials"] == 6
    # the console counts the members that ended before and says only the others, once each
    final = [line for line in r.stdout.splitlines() if " done, " in line][-1]
    said = [line.split()[0] for line in r.stdout.splitlines() if line and MEMBER.match(line.split()[0])]
    assert final.startswith("6/6 done, 0 running") and sorted(said) == sorted(set(got.index) - set(before.index)), \
        r.stdout[-3000:]
    measured = ["num_params", "latency_ms", "latency_ms_b64", "train_time_s", "time_s"]
    assert got[measured].notna().all().all(), got[measured].to_string()
    pd.testing.assert_frame_equal(got.loc[before.index, measured], before[measured])
    best = yaml.safe_load((exp / "best.yaml").read_text())
    assert best["config"]["hidden"] in ([32], [16]) and "num_params" in best["metrics"], best
    assert (exp / "best" / "model.pt").is_file()


@pytest.mark.parametrize("space, settings, note", [
    ("digits_pbt.yaml", [], "(scheduler pbt decides per Ray trial, not per fused member)"),
    ("digits_linear.yaml", ["search.num_samples=2"], "(a group would hold one configuration)"),
    ("digits_linear.yaml", [], None),  # auto fuses: validate shows `fuse: 6` in the space instead
])
def test_validate_says_why_fuse_auto_left_a_search_unfused(capsys, space, settings, note):
    from tuner.cli import main

    sets = [a for s in ["search.fuse=auto", *settings] for a in ("--set", s)]
    assert main(["validate", "--space", str(ROOT / "search_spaces" / space), *sets]) == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith("note: search.fuse: auto")]
    if note is None:
        assert not said and "  fuse: 6" in out, out
    else:
        assert said == [f"note: search.fuse: auto trains one configuration per trial here {note}"], out


@pytest.mark.parametrize("setting, says", [
    ("scheduler.name=pbt", "scheduler pbt"),
    ("scheduler.name=hyperband", "scheduler hyperband"),
    ("metric=[val_accuracy, latency_ms]", "one metric"),
    ("search.warm_start=[{lr: 0.01}]", "does not go with search.warm_start; remove one of the two"),
    ("space.optimizer={choice: {sgd: {momentum: {uniform: [0.5, 0.9]}}, adam: null}}",
     "does not go with a conditional choice in space: (optimizer)"),  # it names the one the file has
])
def test_fuse_where_it_cannot_apply_is_refused_in_one_line(tmp_path, capsys, setting, says):
    space = _space(tmp_path, LINEAR)
    extra = ["--set", "mode=[max, min]"] if setting.startswith("metric") else []
    lines = _refused(capsys, "--space", str(space), "--set", setting, *extra)
    # the --set that brought the conflict with the file's search.fuse is named, and the file
    assert len(lines) == 1 and lines[0].startswith(f"error: --set {setting}: search.fuse"), lines
    assert says in lines[0] and lines[0].endswith(f"(in {space})"), lines


@pytest.mark.parametrize("value", ["1.5", "2.0", "on", "null", "[2]", "-1", "abc"])
def test_a_fuse_value_of_the_wrong_kind_is_refused_naming_what_fuse_takes(tmp_path, capsys, value):
    lines = _refused(capsys, "--space", str(_space(tmp_path, LINEAR)), "--set", f"search.fuse={value}")
    assert len(lines) == 1 and lines[0].startswith(f"error: --set search.fuse={value}: search.fuse must be a "), lines
    assert "number from 0 to 1024 or 'auto' or 'off', got " in lines[0], lines


def test_fuse_on_a_family_that_cannot_fuse_is_refused_in_one_line(tmp_path, capsys):
    space = _space(tmp_path, LINEAR.replace("family: linear", "family: transfer\nfixed: {trainable_layers: 1}"))
    lines = _refused(capsys, "--space", str(space))
    assert len(lines) == 1 and lines[0].startswith(f"error: {space}: search.fuse: family transfer"), lines


@pytest.mark.parametrize("space, setting, size", [
    (LINEAR, [], 3),                                                    # a number: as written
    (LINEAR, ["search.fuse=auto"], 6),                                  # 6 configurations, 1 at a time
    (LINEAR, ["search.fuse=auto", "search.max_concurrent=4"], 2),
    (LINEAR, ["search.fuse=auto", "search.num_samples=200"], 32),       # an Optuna sampler: at most 32
    (KNN, ["search.fuse=auto", "search.max_concurrent=2"], 8),          # 16 grid points over 2 groups
    (KNN, ["search.fuse=auto", "search.grid_points=2", "search.num_samples=100"], 1024),  # a grid: no cap
    (LINEAR, ["search.fuse=auto", "search.num_samples=1"], 0),          # a group of one gains nothing
    (LINEAR, ["search.fuse=auto", "search.num_samples=null", "search.time_budget=1m"], 16),
    (LINEAR, ["search.fuse=auto", "scheduler.name=pbt"], 0),            # what `fuse: N` refuses: one per trial
    (LINEAR, ["search.fuse=auto", "family=transfer", "fixed={trainable_layers: 1}"], 0),
    (LINEAR, ["search.fuse=off"], 0),
    (LINEAR, ["search.fuse=false"], 0),                                 # YAML 1.1's bare `off`
])
def test_fuse_auto_sizes_groups_from_the_plan_and_falls_back_to_one_per_trial(tmp_path, space, setting, size):
    from tuner import spaces

    exp = spaces.load(_space(tmp_path, space), setting)
    assert exp.search.fuse == size
    assert (f"fuse: {size}" in spaces.resolved_yaml(exp)) == (size > 0)  # space.yaml holds the number


@pytest.mark.parametrize("value", ["sometimes", "-1", "true", "1.5"])
def test_a_fuse_that_is_not_a_size_auto_or_off_is_refused_in_one_line(tmp_path, capsys, value):
    space = _space(tmp_path, LINEAR)
    lines = _refused(capsys, "--space", str(space), "--set", f"search.fuse={value}")
    assert len(lines) == 1 and lines[0].startswith(f"error: --set search.fuse={value}: search.fuse"), lines


def test_the_group_searcher_asks_each_configuration_as_a_member_trial_of_the_study(tmp_path):
    from tuner import spaces
    from tuner.search.fused import GroupSearch, member_points, members_of
    from tuner.spaces.rules import planned_configs
    from tuner.search.searchers import study_search

    exp = spaces.parse_experiment(yaml.safe_load(GRID), tmp_path / "space.yaml")
    search = GroupSearch(study_search(exp, tmp_path, []), 4, planned_configs(exp), exp.constants, member_points(exp))
    first, second = search.suggest("a"), search.suggest("b")
    assert search.suggest("c") == "FINISHED"
    members = first["members"] + second["members"]
    assert [m["key"] for m in members] == ["a_m0", "a_m1", "a_m2", "a_m3", "b_m0", "b_m1"]
    points = {(m["config"]["lr"], m["config"]["weight_decay"]) for m in members}
    assert len(points) == 6 and all(m["config"]["hidden"] == [32] for m in members)  # each grid point once
    # Ray hands searchers flattened results: a member's end is told to the study as that trial's end
    result = {"members/a_m0/epoch": 1, "members/a_m0/val_accuracy": 0.5, "members/a_m0/best_val_accuracy": 0.5,
              "members/a_m0/best_epoch": 1, "members/a_m0/ended": True, "members/a_m0/error": None}
    assert members_of(result)["a_m0"]["val_accuracy"] == 0.5
    search.on_trial_result("a", result)
    search.on_trial_complete("a", result, error=True)  # the group failed: its other members fail
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in search.searcher.study.trials}
    assert states == {"a_m0": "PRUNED", "a_m1": "FAIL", "a_m2": "FAIL", "a_m3": "FAIL", "b_m0": "RUNNING",
                      "b_m1": "RUNNING"}
