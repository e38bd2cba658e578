"""Shared test set-up: a private cache folder, Ray without a dashboard, one Ray instance per session."""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

# `python -m tuner` in a test's subprocess runs this checkout, whatever the environment already puts on
# PYTHONPATH (the GPU machine's packed Ray and Optuna live there): set once here, inherited by every child
ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

# what in a test or its fixtures starts Ray or runs a search through the CLI
RAY_STARTERS = ('"search"', "'search'", "run_search", "ray.init", "Tuner(", "cluster_utils", "module.main(",
                "init_ray", "start_local_ray")


def _sources(funcs, module, depth: int = 3) -> str:
    """The source of these functions and of the module's own functions they call, a few calls deep."""
    text, seen = "", set()
    while funcs and depth:
        called = []
        for f in funcs:
            if f in seen:
                continue
            seen.add(f)
            try:
                text += inspect.getsource(f)
            except (OSError, TypeError):
                continue
            code = getattr(f, "__code__", None)
            names = set(code.co_names) | {c for k in code.co_consts if inspect.iscode(k) for c in k.co_names} if code else set()
            called += [g for g in (getattr(module, n, None) for n in names)
                       if inspect.isfunction(g) and g.__module__ == module.__name__]
        funcs, depth = called, depth - 1
    return text


def pytest_collection_modifyitems(items):
    """Mark `slow` every test that starts Ray or runs a search, so `pytest -m "not slow"` is the quick,
    Ray-free loop: found in the source of the test, of the fixtures it uses and of the helpers they call."""
    for item in items:
        if item.get_closest_marker("slow") or not hasattr(item, "function"):
            continue
        funcs = [item.function] + [defs[-1].func for defs in item._fixtureinfo.name2fixturedefs.values() if defs]
        if any(s in _sources(funcs, item.module) for s in RAY_STARTERS):
            item.add_marker(pytest.mark.slow)


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
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp_dir / "optuna.journal")))
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
