"""Retrain the best config without Ray, for the full epoch budget, then test it once."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pandas as pd

from tuner import interrupt
from tuner.atomic import write_text
from tuner.engine import gpu_share, pick_device
from tuner.metrics import classification_metrics
from tuner.errors import UserError
from tuner.bundle import save_bundle
from tuner.families import RunContext, get_family
from tuner.rundir import RunDir


def retrain_best(exp_dir: Path, data=None, say: Callable[[str], None] = print, entry: dict | None = None) -> dict:
    """Fit the best trial's config (or `entry`'s, a best.yaml entry of another trial) on the training split,
    keep the best validation epoch, test once.

    Writes `best/`: model.pt, metrics.json, confusion_matrix.csv/.png, classification_report.csv, curves.png.
    """
    from tuner.data import prepare
    from tuner.settings import cache_dir

    from tuner.report.model import test_report

    run = RunDir(exp_dir)
    if entry is None and not run.best_yaml.is_file():
        raise UserError(f"{run.path}: no best.yaml; run `tuner search` for this experiment first")
    best = entry if entry is not None else run.read_best()
    exp = run.experiment()
    if data is None:
        data = prepare(exp.dataset, cache_dir=cache_dir())
    family = get_family(exp.family)
    config = best["config"]
    run.best.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    # the same learner the trials trained; `resources: auto` retrains on whatever GPU the driver sees
    gpus = None if exp.resources.auto else exp.resources.gpu
    device = pick_device(gpus)
    ctx = RunContext(device=str(device), cache_dir=str(cache_dir()), augment=exp.dataset.augment, keep_best=True,
                     progress=True, gpu_share=gpu_share(gpus))
    learner = family.learner(config, data.info, ctx)
    if learner.checkpoint_every_epoch:
        which = f"trial {best['trial_id']}'s" if best.get("trial_id") else "the best"
        say(f"retraining {which} config: up to {exp.scheduler.max_epochs} epochs on {len(data.y_train)} images "
            f"({device})")
    history = []
    for m in learner.fit(data, exp.scheduler.max_epochs):
        interrupt.signal_for_tests("retrain")
        history.append(m)
        if learner.checkpoint_every_epoch:  # an epoch of a trained family, not a one-step fit
            say(f"  retrain epoch {m['epoch']}: train_loss {m['train_loss']:.4f} val_accuracy {m['val_accuracy']:.4f}")
    learner.restore_best()
    train_time = time.perf_counter() - t0
    say(f"testing on {len(data.y_test)} images")
    proba = learner.predict_proba(data.x_test)
    metrics = classification_metrics(data.y_test, proba)
    metrics.update(num_params=int(learner.num_params), train_time_s=round(train_time, 3))
    # metrics.json last: `compare` and `list` take it as the sign of a finished retrain, so a write that
    # fails before it (a full disk) leaves no row for a model that is not there
    save_bundle(run.model, exp, config, learner, data, metrics)
    write_text(run.history, pd.DataFrame(history).to_csv(index=False))
    test_report(run.best, data.y_test, proba, data.class_names, history)
    run.write_json(run.metrics, metrics)
    return metrics
