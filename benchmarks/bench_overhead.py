"""What a tuner search costs on top of the training it runs.

The same trials (a grid of digits CNN configs, a fixed number of epochs, no early stopping) are run
twice: once as a plain Python loop calling the family's learner directly, once through `tuner`
(Ray Tune, checkpoints every epoch, results files, plots). Reported:

  per-trial overhead  = (search wall time x concurrent trials - sum of plain trial times) / trials
  wall / floor        = search wall time / (sum of plain trial times / concurrent trials)

Goals on the 2-core reference machine: <= 0.2 s per trial, <= 1.25.

    python benchmarks/bench_overhead.py            # 16 trials x 5 epochs
    python benchmarks/bench_overhead.py --quick    # 4 trials x 2 epochs, under a minute
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def space(trials: int, epochs: int, concurrent: int) -> dict:
    lrs = [1e-3, 3e-3, 1e-2, 3e-2][: max(1, trials // 4)]
    return {
        "name": "bench_overhead", "family": "cnn", "dataset": {"name": "digits"},
        "search": {"algorithm": "grid", "max_concurrent": concurrent, "seed": 0},
        "scheduler": {"name": "fifo", "max_epochs": epochs},
        "resources": {"cpu": 1, "gpu": 0},
        "fixed": {"blocks": 2},
        "space": {"lr": {"grid": lrs}, "batch_size": {"grid": [32, 64]}, "channels": {"grid": [16, 32]}},
    }


def plain_loop(exp, data) -> list[float]:
    """The baseline: each config trained in this process, one after another, one thread each."""
    from tuner.engine import set_threads
    from tuner.families import get_family

    set_threads(exp.resources.cpu)
    grid = {k: d.grid_values(0) for k, d in exp.searched.items()}
    times = []
    for values in itertools.product(*grid.values()):
        cfg = {**exp.constants, **dict(zip(grid, values))}
        t0 = time.perf_counter()
        learner = get_family(exp.family).learner(cfg, data.info)
        for _ in learner.fit(data, exp.scheduler.max_epochs):
            pass
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 trials x 2 epochs")
    p.add_argument("--trials", type=int, default=16, help="4, 8 or 16")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.epochs = 4, 2

    from tuner import driver, spaces
    from tuner.data import prepare

    exp = spaces.parse_experiment(space(args.trials, args.epochs, args.concurrent))
    data = prepare(exp.dataset, progress=False)
    plain = plain_loop(exp, data)

    t0 = time.perf_counter()
    driver.init_ray(None, dashboard=False, say=lambda m: None)
    ray_start = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        exp_dir = driver.run(exp, Path(tmp), retrain=False, dashboard=False, say=lambda m: None)
        whole = time.perf_counter() - t1
        search_s = json.loads((exp_dir / "run.json").read_text())["search_s"]
        trials = pd.read_csv(exp_dir / "trials.csv")
    n, c = len(plain), args.concurrent
    floor = sum(plain) / c
    out = {
        "trials": n, "epochs": args.epochs, "concurrent": c, "cpus": os.cpu_count(),
        "plain_sum_s": round(sum(plain), 2), "compute_floor_s": round(floor, 2),
        "ray_start_s": round(ray_start, 2), "search_wall_s": round(search_s, 2),
        "run_wall_s (search + data + results files + plots)": round(whole, 2),
        "ray_trial_time_sum_s": round(float(trials["time_s"].sum()), 2),
        "per_trial_overhead_s": round((search_s * c - sum(plain)) / n, 3),
        "wall_over_floor": round(search_s / floor, 3),
    }
    for k, v in out.items():
        print(f"{k:55s} {v}")
    print(f"goal: per-trial overhead <= 0.2 s ({'met' if out['per_trial_overhead_s'] <= 0.2 else 'NOT met'}), "
          f"wall/floor <= 1.25 ({'met' if out['wall_over_floor'] <= 1.25 else 'NOT met'})")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
