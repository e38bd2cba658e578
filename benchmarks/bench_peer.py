"""tuner against the same search written by hand with Ray Tune, as Ray's own examples show it.

The hand-written side is what a careful Ray Tune user writes from Ray's docs ("Tuning PyTorch",
"Running Tune experiments with Optuna", "ASHA"): the digits arrays handed to a function trainable with
`tune.with_parameters`, a DataLoader, the same CNN as tuner's `cnn` family for the same config keys,
a checkpoint every epoch (`tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(...))`,
restored with `tune.get_checkpoint()`), `OptunaSearch` with a seeded TPE sampler, `ASHAScheduler`,
`reuse_actors=True`, and the search budget of `search_spaces/digits_cnn.yaml` (num_samples, max_epochs,
grace period, reduction factor, concurrent trials, CPUs per trial). Its best config is then retrained
on the training split for max_epochs, the best validation epoch kept, and tested once (as tuner does).
The split is the same (stratified 60/20/20, seed 0), so both sides are tested on the same images.

tuner's side is `tuner search --space search_spaces/digits_cnn.yaml --no-dashboard` as a subprocess
into a temporary results folder; its search wall is `run.json`'s `search_s` (the `Tuner.fit()` call,
as timed here for the hand-written side) and its test accuracy `best/metrics.json`'s `accuracy`.

Goal (issue 14): tuner's search wall <= 0.6x the hand-written one, at equal or better test accuracy.

    python benchmarks/bench_peer.py            # the budget of digits_cnn.yaml (20 trials x <= 20 epochs)
    python benchmarks/bench_peer.py --quick    # 4 trials x <= 2 epochs, about a minute
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import ray
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "digits_cnn.yaml"


# --------------------------------------------------------------------------- the hand-written Ray Tune search
def load_digits_split(seed: int = 0):
    """scikit-learn digits, stratified 60/20/20 train/val/test, normalised with the training split's mean/std."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # N, 1, 8, 8 in [0, 1]
    y = d.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.25, stratify=y_rest,
                                                      random_state=seed)
    mean, std = x_train.mean(), x_train.std()
    return {k: ((v - mean) / std if k.startswith("x") else v) for k, v in
            dict(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test).items()}


def make_cnn(config: dict, num_classes: int = 10):
    """tuner's `cnn` family for these keys: blocks of (conv3x3 -> BN -> ReLU) x convs_per_block, then a
    2x2 max-pool, channels doubling per block; global average pooling, dropout, a linear classifier."""
    layers, c_in, c, size = [], 1, int(config["channels"]), 8
    for _ in range(int(config["blocks"])):
        for _ in range(int(config["convs_per_block"])):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c *= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if config["dropout"]:
        layers.append(nn.Dropout(config["dropout"]))
    layers.append(nn.Linear(c_in, num_classes))
    return nn.Sequential(*layers)


def make_optimizer(model, config: dict):
    lr, wd = config["lr"], config["weight_decay"]
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    if config["optimizer"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)


def loaders(data: dict, batch_size: int):
    def ds(part):
        return TensorDataset(torch.from_numpy(data[f"x_{part}"]), torch.from_numpy(data[f"y_{part}"]))

    return (DataLoader(ds("train"), batch_size=batch_size, shuffle=True),
            DataLoader(ds("val"), batch_size=256), DataLoader(ds("test"), batch_size=256))


def train_epoch(model, optimizer, loader) -> float:
    model.train()
    total, n = 0.0, 0
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        n += len(y)
    return total / n


def evaluate(model, loader) -> tuple[float, float]:
    model.eval()
    loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    return loss / n, correct / n


def train_digits(config: dict, data: dict, max_epochs: int) -> None:
    """The function trainable: one `tune.report` with a checkpoint per epoch; resumes from a checkpoint."""
    torch.manual_seed(0)
    model = make_cnn(config)
    optimizer = make_optimizer(model, config)
    train_loader, val_loader, _ = loaders(data, config["batch_size"])
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "checkpoint.pt"))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"]
    for epoch in range(start, max_epochs):
        train_loss = train_epoch(model, optimizer, train_loader)
        val_loss, val_acc = evaluate(model, val_loader)
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
                       os.path.join(d, "checkpoint.pt"))
            tune.report({"train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc},
                        checkpoint=tune.Checkpoint.from_directory(d))


def hand_written(budget: dict, storage: Path) -> dict:
    data = load_digits_split()
    t0 = time.perf_counter()
    ray.init(include_dashboard=False)  # as `tuner search --no-dashboard`
    ray_start = time.perf_counter() - t0
    param_space = {
        "lr": tune.loguniform(1e-4, 3e-2),
        "batch_size": tune.choice([32, 64, 128]),
        "channels": tune.choice([16, 32, 64]),
        "convs_per_block": tune.randint(1, 3),  # 1 or 2
        "dropout": tune.uniform(0.0, 0.5),
        "optimizer": tune.choice(["adam", "adamw", "sgd"]),
        "weight_decay": tune.loguniform(1e-6, 1e-3),
        "blocks": 2,
    }
    trainable = tune.with_resources(
        tune.with_parameters(train_digits, data=data, max_epochs=budget["max_epochs"]), {"cpu": budget["cpu"]})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="val_accuracy", mode="max",
            search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=budget["seed"])),
            scheduler=ASHAScheduler(max_t=budget["max_epochs"], grace_period=budget["grace_period"],
                                    reduction_factor=budget["reduction_factor"]),
            num_samples=budget["num_samples"], max_concurrent_trials=budget["max_concurrent"], reuse_actors=True),
        run_config=tune.RunConfig(name="hand_written", storage_path=str(storage)),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    search_s = time.perf_counter() - t0
    best = results.get_best_result(metric="val_accuracy", mode="max")
    ray.shutdown()

    # retrain the best config from scratch, keep the best validation epoch, test once
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = make_cnn(best.config)
    optimizer = make_optimizer(model, best.config)
    train_loader, val_loader, test_loader = loaders(data, best.config["batch_size"])
    best_val, best_state = -1.0, None
    for _ in range(budget["max_epochs"]):
        train_epoch(model, optimizer, train_loader)
        _, val_acc = evaluate(model, val_loader)
        if val_acc > best_val:
            best_val, best_state = val_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    _, test_acc = evaluate(model, test_loader)
    trial_sum = sum(r.metrics.get("time_total_s", 0.0) for r in results if r.metrics)
    return {"trials": len(results), "ray_start_s": ray_start, "search_s": search_s, "trial_sum_s": trial_sum,
            "retrain_s": time.perf_counter() - t0, "search_best_val": best.metrics["val_accuracy"],
            "test_accuracy": test_acc}


# --------------------------------------------------------------------------- tuner, through its CLI
def tuner_cli(overrides: list[str], results: Path) -> dict:
    import pandas as pd

    cmd = [sys.executable, "-m", "tuner", "search", "--space", str(SPACE), "--results", str(results),
           "--no-dashboard", "--overwrite"] + [a for kv in overrides for a in ("--set", kv)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"tuner search exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    exp_dir = results / yaml.safe_load(SPACE.read_text())["name"]
    run = json.loads((exp_dir / "run.json").read_text())
    metrics = json.loads((exp_dir / "best" / "metrics.json").read_text())
    best = yaml.safe_load((exp_dir / "best.yaml").read_text())
    trial_sum = float(pd.read_csv(exp_dir / "trials.csv")["time_s"].sum())
    return {"trials": run["trials"], "search_s": run["search_s"], "trial_sum_s": trial_sum, "total_s": total,
            "search_best_val": best["metrics"]["val_accuracy"], "test_accuracy": metrics["accuracy"]}


def same_model_as_tuner() -> None:
    """The hand-written CNN must be tuner's: same parameter count for a few configs of the space."""
    from tuner.data.base import DataInfo
    from tuner.families import get_family

    cnn = get_family("cnn")
    info = DataInfo(num_classes=10, channels=1, height=8, width=8, mean=(0.0,), std=(1.0,))
    for channels, convs, dropout in ((16, 1, 0.0), (64, 2, 0.3)):
        cfg = {"blocks": 2, "pool": "gap", "channels": channels, "convs_per_block": convs, "dropout": dropout}
        theirs = cnn.build(cnn.resolve(cfg), info)
        ours = make_cnn(cfg)
        n = [sum(p.numel() for p in m.parameters()) for m in (theirs, ours)]
        assert n[0] == n[1] and len(list(theirs.modules())) == len(list(ours.modules())), (cfg, n)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 trials x <= 2 epochs")
    args = p.parse_args(argv)

    space = yaml.safe_load(SPACE.read_text())
    budget = {"num_samples": space["search"]["num_samples"], "max_concurrent": space["search"]["max_concurrent"],
              "seed": space["search"]["seed"], "max_epochs": space["scheduler"]["max_epochs"],
              "grace_period": space["scheduler"]["grace_period"],
              "reduction_factor": space["scheduler"]["reduction_factor"], "cpu": space["resources"]["cpu"]}
    overrides = []
    if args.quick:
        budget.update(num_samples=4, max_epochs=2, grace_period=1)
        overrides = ["search.num_samples=4", "scheduler.max_epochs=2", "scheduler.grace_period=1"]
    same_model_as_tuner()
    if ray.is_initialized():  # e.g. left by another benchmark in the same process: start both sides clean
        ray.shutdown()

    with tempfile.TemporaryDirectory() as tmp:
        ours = tuner_cli(overrides, Path(tmp) / "results")  # its own Ray, gone when it exits
        theirs = hand_written(budget, Path(tmp) / "ray_results")
    ratio = ours["search_s"] / theirs["search_s"]
    print(f"digits CNN search, {budget['num_samples']} trials x <= {budget['max_epochs']} epochs, "
          f"{budget['max_concurrent']} concurrent, {os.cpu_count()} CPUs")
    # trial s sum: the trials' own time as Ray measured it, to tell training from what the search adds
    print(f"{'side':<14} {'trials':>6} {'search s':>9} {'trial s sum':>11} {'best val acc':>12} {'test acc':>9}")
    for name, r in (("tuner", ours), ("hand-written", theirs)):
        print(f"{name:<14} {r['trials']:6d} {r['search_s']:9.2f} {r['trial_sum_s']:11.2f} "
              f"{r['search_best_val']:12.4f} {r['test_accuracy']:9.4f}")
    met = ratio <= 0.6 and ours["test_accuracy"] >= theirs["test_accuracy"]
    print(f"search wall tuner / hand-written: {ratio:.3f} (goal <= 0.6 at equal or better test accuracy: "
          f"{'met' if met else 'NOT met'})")
    return {"tuner": ours, "hand_written": theirs, "ratio": round(ratio, 3), "goal_met": met}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
