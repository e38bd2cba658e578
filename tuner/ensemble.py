"""Ensembles (the Flowers seed): average the class probabilities of retrained best models on one test split.

An ensemble is written like an experiment without a search: `<results>/<name>/ensemble.yaml` (its members
and their own test accuracy) and `best/` (metrics.json, confusion matrix, classification report), so that
`tuner compare` puts it in the table next to its members with the same columns.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import yaml

from tuner.atomic import write_text
from tuner.errors import UserError
from tuner.rundir import RunDir

if TYPE_CHECKING:
    from tuner.spaces import Experiment

# the dataset settings that decide which images form the test split; image_size and normalize may differ
# between members (each bundle carries its own preprocessing)
SAME_DATA_KEYS = ("name", "root", "split", "limit")


@dataclass
class Member:
    name: str
    dir: RunDir  # its results folder
    exp: Experiment  # as the member's space.yaml describes it


def check_names(ensemble: list[str], available: set[str], where: str) -> None:
    """Before anything runs: at least two distinct members, each one a suite member or a finished experiment."""
    if len(ensemble) < 2:
        raise UserError(f"{where}: ensemble needs at least two experiments, got {ensemble}")
    if len(set(ensemble)) != len(ensemble):
        raise UserError(f"{where}: ensemble lists an experiment twice: {ensemble}")
    missing = [n for n in ensemble if n not in available]
    if missing:
        raise UserError(f"{where}: ensemble member(s) {', '.join(missing)} are neither in this suite nor a "
                        f"retrained experiment in the results folder; choose from {', '.join(sorted(available))}")


def _members(results: Path, names: list[str]) -> list[Member]:
    out = []
    for n in names:
        run = RunDir(results / n)
        for f in (run.space, run.split, run.model):
            if not f.is_file():
                raise UserError(f"ensemble member {n}: {f} is missing; run `tuner search` for it "
                                f"(without --no-retrain) first")
        out.append(Member(n, run, run.experiment()))
    return out


def _check_same_data(members: list[Member]) -> None:
    """The members must have been tested on exactly the same images, or averaging means nothing."""
    import dataclasses

    first = members[0]
    ref = {k: v for k, v in dataclasses.asdict(first.exp.dataset).items() if k in SAME_DATA_KEYS}
    ref_test = np.load(first.dir.split)["test"]
    for m in members[1:]:
        mine = {k: v for k, v in dataclasses.asdict(m.exp.dataset).items() if k in SAME_DATA_KEYS}
        diff = [k for k in SAME_DATA_KEYS if mine.get(k) != ref.get(k)]
        if diff:
            raise UserError(f"ensemble: {m.name} and {first.name} differ in dataset.{diff[0]} "
                            f"({mine.get(diff[0])!r} vs {ref.get(diff[0])!r}); "
                            "an ensemble needs one data set and split")
        test = np.load(m.dir.split)["test"]
        if len(test) != len(ref_test) or not np.array_equal(test, ref_test):
            raise UserError(f"ensemble: {m.name} and {first.name} were tested on different images "
                            f"({m.dir.split} vs {first.dir.split}); rerun them with the same "
                            f"dataset.split")


def build(results: Path, name: str, members: list[str], say: Callable[[str], None] = print) -> dict:
    """Average the members' test probabilities, test the average once, write `<results>/<name>/`."""
    from tuner import predict
    from tuner.data import ImageData, prepare
    from tuner.report.model import test_report
    from tuner.settings import cache_dir
    from tuner.metrics import classification_metrics

    results = Path(results)
    ms = _members(results, members)
    _check_same_data(ms)

    probas: list[np.ndarray] = []
    y_test: np.ndarray | None = None
    class_names: list[str] | None = None
    per_member: dict[str, dict[str, Any]] = {}  # name -> its family and test accuracy
    num_params, train_time = 0, 0.0
    decoded: dict[str, ImageData] = {}  # members with the same dataset config share one decode
    for m in ms:
        predictor = predict.load(m.dir.best, device="cpu")
        key = json.dumps(m.dir.read_space()["dataset"], sort_keys=True, default=str)
        if key not in decoded:
            decoded[key] = prepare(m.exp.dataset, cache_dir=cache_dir(), progress=False)
        data = decoded[key]
        if class_names is None or y_test is None:  # the first member
            class_names, y_test = list(data.class_names), data.y_test
        elif list(predictor.class_names) != class_names or not np.array_equal(data.y_test, y_test):
            raise UserError(f"ensemble: {m.name} has other classes or test labels than {ms[0].name}; "
                            f"an ensemble needs one data set")
        x = data.x_test
        # the bundle's own learner when the images already have its size; otherwise the predictor resizes
        same = tuple(x.shape[1:]) == (*predictor.size, predictor.channels)
        p = predictor.learner.predict_proba(x) if same else predictor.predict_proba(x)
        probas.append(np.asarray(p, dtype=np.float64))
        metrics = m.dir.read_metrics()
        per_member[m.name] = {"family": m.exp.family, "accuracy": float((p.argmax(1) == y_test).mean())}
        num_params += int(metrics.get("num_params") or 0)
        train_time += float(metrics.get("train_time_s") or 0.0)
    proba = np.mean(probas, axis=0)
    assert y_test is not None and class_names is not None  # set by the first member (check_names: two or more)

    out = RunDir(results / name)
    out.best.mkdir(parents=True, exist_ok=True)
    metrics = classification_metrics(y_test, proba)
    metrics.update(num_params=num_params, train_time_s=round(train_time, 3))
    out.write_json(out.metrics, metrics)
    write_text(out.ensemble, yaml.safe_dump(
        {"name": name, "family": "ensemble", "combine": "mean of class probabilities", "members": per_member,
         "dataset": ms[0].dir.read_space()["dataset"]}, sort_keys=False))
    test_report(out.best, y_test, proba, class_names, history=None)
    best_single = max(v["accuracy"] for v in per_member.values())
    say(f"ensemble {name} of {', '.join(members)}: test accuracy {metrics['accuracy']:.4f} "
        f"(best member {best_single:.4f}) -> {out.path}")
    return metrics
