"""Scores computed one way: the Pareto front every writer and plot of a multi-objective search uses."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tuner.metrics import pareto_front, pareto_mask


def test_pareto_set_is_exactly_the_non_dominated_rows():
    # accuracy up, latency down. b dominates c (better on both); a dominates d (same accuracy, faster) and
    # e dominates h; e is the fastest; f failed (never a candidate); g equals a (neither dominates the other)
    t = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "status": ["TERMINATED"] * 5 + ["ERROR", "TERMINATED", "TERMINATED"],
        "val_accuracy": [0.90, 0.95, 0.93, 0.90, 0.80, 0.99, 0.90, 0.70],
        "latency_ms": [2.0, 5.0, 6.0, 3.0, 1.0, 0.1, 2.0, 1.5],
    })
    front = pareto_front(t, ["val_accuracy", "latency_ms"], ["max", "min"])
    assert list(front["trial_id"]) == ["b", "a", "g", "e"]  # best accuracy first
    # brute force: a row is on the front iff no finished row is >= on both and > on one
    ok = t[t["status"] != "ERROR"]
    expect = {r.trial_id for r in ok.itertuples() if not any(
        (o.val_accuracy >= r.val_accuracy and o.latency_ms <= r.latency_ms)
        and (o.val_accuracy > r.val_accuracy or o.latency_ms < r.latency_ms) for o in ok.itertuples())}
    assert set(front["trial_id"]) == expect
    mask = pareto_mask(np.array([[1.0, 0.2], [2.0, 0.5], [np.nan, 0.0], [0.5, 0.5]]), ["min", "min"])
    assert list(mask) == [True, False, False, True]


def test_pareto_skips_infeasible_trials(tmp_path):
    t = pd.DataFrame({"trial_id": ["a", "b"], "status": ["TERMINATED"] * 2, "val_accuracy": [0.9, 0.8],
                      "num_params": [10.0, 20.0], "feasible": [False, True]})
    assert list(pareto_front(t, ["val_accuracy", "num_params"], ["max", "min"])["trial_id"]) == ["b"]


def test_pareto_front_keeps_the_table_index_and_is_empty_without_the_objectives():
    t = pd.DataFrame({"trial_id": ["a", "b", "c"], "val_accuracy": [0.9, 0.8, np.nan], "latency_ms": [2.0, 1.0, 0.5]},
                     index=[10, 11, 12])
    front = pareto_front(t, ["val_accuracy", "latency_ms"], ["max", "min"])
    assert list(front.index) == [10, 11]  # the caller picks the same rows of its own table by index
    assert pareto_front(t, ["val_accuracy", "num_params"], ["max", "min"]).empty


def test_pareto_front_keeps_exactly_the_non_dominated_rows_best_first():
    df = pd.DataFrame({"acc": [0.9, 0.8, 0.95, 0.7, 0.95], "lat": [2.0, 1.0, 3.0, 1.5, 4.0]})
    front = pareto_front(df, ["acc", "lat"], ["max", "min"])
    assert list(front.index) == [2, 0, 1]  # 3 and 4 are dominated; the most accurate first
