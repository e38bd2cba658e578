"""Shared test set-up: a private cache folder, Ray without a dashboard, one Ray instance per session."""
from __future__ import annotations

import os

import pytest


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
