"""Where a search's time goes as it grows: wall time for 8, 16 and 32 trials, with 1 and 2 concurrent
trials, against the compute floor (the trials' own training time / concurrent trials).

Every run is the same digits CNN with a fixed number of epochs and no early stopping, so the work per
trial is constant and any growth beyond the floor is the tool's.

    python benchmarks/bench_scaling.py            # trials 8, 16, 32 x concurrency 1, 2; 3 epochs
    python benchmarks/bench_scaling.py --quick    # trials 2, 4 x concurrency 1, 2; 1 epoch
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd


def raw_space(trials: int, concurrent: int, epochs: int) -> dict:
    return {"name": f"scale_{trials}_{concurrent}", "family": "cnn", "dataset": {"name": "digits"},
            "search": {"algorithm": "random", "num_samples": trials, "max_concurrent": concurrent, "seed": 0},
            "scheduler": {"name": "fifo", "max_epochs": epochs}, "resources": {"cpu": 1, "gpu": 0},
            "fixed": {"blocks": 2, "channels": 16},
            "space": {"lr": {"loguniform": [1e-3, 1e-2]}, "batch_size": {"choice": [32, 64]}}}


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    sizes, epochs = ([2, 4], 1) if args.quick else ([8, 16, 32], args.epochs)

    from tuner import spaces
    from tuner.commands import run_search
    from tuner.search import cluster

    cluster.init_ray(None, dashboard=False, say=lambda m: None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for concurrent in (1, 2):
            for n in sizes:
                exp = spaces.parse_experiment(raw_space(n, concurrent, epochs))
                exp_dir = run_search(exp, Path(tmp), retrain=False, dashboard=False, say=lambda m: None, overwrite=True)
                run = json.loads((exp_dir / "run.json").read_text())
                trials = pd.read_csv(exp_dir / "trials.csv")
                compute = float(trials["time_s"].sum())
                rows.append({"trials": n, "concurrent": concurrent, "search_wall_s": run["search_s"],
                             "trial_time_sum_s": round(compute, 2),
                             "floor_s": round(compute / concurrent, 2),
                             "wall_over_floor": round(run["search_s"] / (compute / concurrent), 2),
                             "wall_per_trial_s": round(run["search_s"] / n, 3)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
