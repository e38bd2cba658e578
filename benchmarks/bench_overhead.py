"""What a tuner search costs on top of the training it runs.

The same trials (a grid of digits CNN configs, a fixed number of epochs, no early stopping) are run
twice: once as a plain Python loop calling the family's learner directly, once through `tuner`
(Ray Tune, checkpoints every epoch, results files, plots). Reported, at two search sizes N1 < N2:

  per-trial overhead  = (search wall time x concurrent trials - sum of plain trial times) / trials
  wall / floor        = search wall time / (sum of plain trial times / concurrent trials)
  marginal overhead   = the same per-trial overhead between the two sizes (what one more trial costs)
  start-up            = what is left: once per search (trial actors start, import torch, warm up)

Goals on the 2-core reference machine: <= 0.2 s per trial, <= 1.25.

    python benchmarks/bench_overhead.py            # 16 and 48 trials x 5 epochs
    python benchmarks/bench_overhead.py --quick    # 4 and 8 trials x 2 epochs, under a minute
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
    lrs = [1e-3, 3e-3, 1e-2, 3e-2][: max(1, min(4, trials // 4))]
    seeds = list(range(max(1, trials // 16)))  # past 16 trials the same grid again with other seeds
    return {
        "name": "bench_overhead", "family": "cnn", "dataset": {"name": "digits"},
        "search": {"algorithm": "grid", "max_concurrent": concurrent, "seed": 0},
        "scheduler": {"name": "fifo", "max_epochs": epochs},
        "resources": {"cpu": 1, "gpu": 0},
        "fixed": {"blocks": 2},
        "space": {"lr": {"grid": lrs}, "batch_size": {"grid": [32, 64]}, "channels": {"grid": [16, 32]},
                  "seed": {"grid": seeds}},
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


def measure(trials: int, epochs: int, concurrent: int, tmp: Path) -> dict:
    from tuner import spaces
    from tuner.commands import run_search
    from tuner.data import prepare

    exp = spaces.parse_experiment(space(trials, epochs, concurrent))
    data = prepare(exp.dataset, progress=False)
    plain = plain_loop(exp, data)
    exp_dir = run_search(exp, tmp, retrain=False, dashboard=False, say=lambda m: None, overwrite=True)
    search_s = json.loads((exp_dir / "run.json").read_text())["search_s"]
    ray_sum = float(pd.read_csv(exp_dir / "trials.csv")["time_s"].sum())
    return {"trials": len(plain), "plain_sum_s": sum(plain), "search_s": search_s, "ray_trial_sum_s": ray_sum}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 and 8 trials x 2 epochs")
    p.add_argument("--sizes", type=int, nargs=2, default=[16, 48], help="two search sizes (multiples of 16)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.epochs = [4, 8], 2

    from tuner.search import cluster

    t0 = time.perf_counter()
    cluster.init_ray(None, dashboard=False, say=lambda m: None)
    ray_start = time.perf_counter() - t0
    c = args.concurrent
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(n, args.epochs, c, Path(tmp)) for n in args.sizes]
    print(f"{'trials':>6} {'plain sum s':>11} {'floor s':>8} {'search s':>9} {'Ray trial sum s':>15} "
          f"{'overhead s/trial':>16} {'wall/floor':>10}")
    for r in runs:
        floor = r["plain_sum_s"] / c
        r["overhead_s"] = (r["search_s"] * c - r["plain_sum_s"]) / r["trials"]
        r["wall_over_floor"] = r["search_s"] / floor
        print(f"{r['trials']:6d} {r['plain_sum_s']:11.2f} {floor:8.2f} {r['search_s']:9.2f} "
              f"{r['ray_trial_sum_s']:15.2f} {r['overhead_s']:16.3f} {r['wall_over_floor']:10.3f}")
    a, b = runs
    marginal = (((b["search_s"] - a["search_s"]) * c - (b["plain_sum_s"] - a["plain_sum_s"]))
                / (b["trials"] - a["trials"]))
    startup = (a["search_s"] * c - a["plain_sum_s"] - marginal * a["trials"]) / c
    out = {"epochs": args.epochs, "concurrent": c, "cpus": os.cpu_count(), "ray_start_s": round(ray_start, 2),
           "marginal_overhead_s_per_trial": round(marginal, 3), "startup_s_per_search": round(startup, 2),
           "overhead_s_per_trial": [round(r["overhead_s"], 3) for r in runs],
           "wall_over_floor": [round(r["wall_over_floor"], 3) for r in runs]}
    for k, v in out.items():
        print(f"{k:32s} {v}")
    print(f"goal per-trial overhead <= 0.2 s: marginal {out['marginal_overhead_s_per_trial']} s "
          f"({'met' if marginal <= 0.2 else 'NOT met'}); amortised over {b['trials']} trials {b['overhead_s']:.3f} s "
          f"({'met' if b['overhead_s'] <= 0.2 else 'NOT met'})")
    print(f"goal wall/floor <= 1.25 at {b['trials']} trials: {b['wall_over_floor']:.3f} "
          f"({'met' if b['wall_over_floor'] <= 1.25 else 'NOT met'})")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
