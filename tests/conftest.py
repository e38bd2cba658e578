"""Shared test set-up: a private cache folder, Ray without a dashboard, one Ray instance per session, the
check that only tests marked `slow` start Ray, and one finished search shared by the tests that read one."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# `python -m tuner` in a test's subprocess runs this checkout, whatever the environment already puts on
# PYTHONPATH (the GPU machine's packed Ray and Optuna live there): set once here, inherited by every child
ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

# pytest-xdist runs its workers side by side on this machine's cores, and torch's default in each is a thread
# per core: with both workers busy, twice as many spinning OpenMP threads as cores. A test of half a second
# alone took 14-18 s beside the other worker (tests/test_families.py, the 2-core VM), and the quick loop 68-110 s
# instead of 43. So each worker, and what it starts (searches, whose trials still set their own), gets its
# share of the cores, as a trial gets its CPUs. Set here, before anything imports torch, which reads it once.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# `pytest -m "not slow"` is the quick loop: a test that starts Ray (in this process or in a `tuner search`
# subprocess) says so with @pytest.mark.slow, and one that does not say so fails if it starts Ray. Every other
# test runs with RAY_TMPDIR (Ray's own variable, inherited by subprocesses) on an empty folder of its own:
# a Ray started anywhere under the test leaves its session folder there.
_RAY_DIR = pytest.StashKey[Path]()
_RAY_BEFORE = pytest.StashKey[bool]()  # a Ray in this process before the test: an earlier slow test's
_RAY_TMPDIR = os.environ.get("RAY_TMPDIR")


def _ray_in_process() -> bool:
    ray = sys.modules.get("ray")  # never imported just to ask
    return bool(ray and ray.is_initialized())


def pytest_collection_modifyitems(items):
    """The quick tests first, then the slow ones (a stable sort: each keeps its order): the quick feedback
    comes first, and no quick test runs after a slow one left its Ray in this process, where an unmarked
    in-process search would reuse it unseen by the check below."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("slow"):
        return
    # short, under /tmp: Ray's socket paths in it must stay under the 107-byte limit of a Unix socket
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    item.stash[_RAY_DIR] = ray_dir
    item.stash[_RAY_BEFORE] = _ray_in_process()
    os.environ["RAY_TMPDIR"] = str(ray_dir)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    ray_dir = item.stash.get(_RAY_DIR, None)
    if ray_dir is None:
        return
    if _RAY_TMPDIR is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = _RAY_TMPDIR
    started = any(ray_dir.iterdir()) or (_ray_in_process() and not item.stash[_RAY_BEFORE])
    shutil.rmtree(ray_dir, ignore_errors=True)
    if started:
        pytest.fail(f"{item.nodeid} started Ray but is not marked slow: add @pytest.mark.slow", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    os.environ["TUNER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # tests never reach the internet: a missing ImageNet file is "fetched" from a closed local port,
    # which is the offline path (tests of the fetch serve their own file)
    os.environ.setdefault("TUNER_WEIGHTS_URL", "http://127.0.0.1:9/")
    yield
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass


@pytest.fixture()
def results(tmp_path):
    return tmp_path / "results"


@pytest.fixture()
def study_matches_tables():
    """Check that a results folder's optuna.journal holds what its trials.csv and epochs.csv hold, read
    independently of tuner.search.study: each row one trial (by its ray_trial_id), FAIL for an error, PRUNED
    (with its best-epoch score) when it ran fewer than max_epochs, else COMPLETE at val_accuracy, and the
    per-epoch val_accuracy as intermediate values. Warm-start seeds (from another folder) are left out."""
    def check(exp_dir: Path, max_epochs: int) -> None:
        import optuna
        import pandas as pd
        import pytest as _pytest
        import yaml

        name = yaml.safe_load((exp_dir / "space.yaml").read_text())["name"]
        backend = optuna.storages.journal.JournalFileBackend(str(exp_dir / "optuna.journal"))
        storage = optuna.storages.JournalStorage(backend)
        journal = [t for t in optuna.load_study(study_name=name, storage=storage).trials
                   if not t.user_attrs.get("warm_start")]
        trials = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
        epochs = pd.read_csv(exp_dir / "epochs.csv", dtype={"trial_id": str})
        ids = [t.user_attrs.get("ray_trial_id") for t in journal]
        assert sorted(ids) == sorted(trials.index), f"journal {sorted(ids)} != trials.csv {sorted(trials.index)}"
        for t in journal:
            tid = t.user_attrs["ray_trial_id"]
            row = trials.loc[tid]
            if row["status"] == "ERROR":
                assert t.state.name == "FAIL", (tid, t.state)
                continue
            if row["epochs"] >= max_epochs:
                assert t.state.name == "COMPLETE" and t.value == _pytest.approx(row["val_accuracy"]), (tid, t, row)
            else:
                assert t.state.name == "PRUNED", (tid, t.state, row["epochs"])
                assert t.user_attrs["best_val_accuracy"] == _pytest.approx(row["val_accuracy"]), (tid, t, row)
            mine = epochs[epochs["trial_id"] == tid]
            assert t.intermediate_values == _pytest.approx(dict(zip(mine["epoch"], mine["val_accuracy"]))), tid
    return check


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory) -> Path:
    """One real smoke search of search_spaces/digits_cnn.yaml (2 trials, 1 epoch) with two objectives
    (val_accuracy up, num_params down: so there is a Pareto front), retrained and tested: its results folder,
    shared by every test that reads a finished experiment and is not about the search itself. Read only: a
    test that writes in it (export, report, compare) takes `finished_copy`."""
    from tuner.cli import main

    results = tmp_path_factory.mktemp("finished") / "results"
    code = main(["search", "--space", str(ROOT / "search_spaces" / "digits_cnn.yaml"), "--smoke", "--results",
                 str(results), "--no-dashboard", "--set", "metric=[val_accuracy, num_params]",
                 "--set", "mode=[max, min]"])
    assert code == 0
    return results


@pytest.fixture()
def finished_copy(finished_search: Path, tmp_path: Path) -> Path:
    """`finished_search` copied into this test's own folder, to write in."""
    return Path(shutil.copytree(finished_search, tmp_path / "results", symlinks=True))
