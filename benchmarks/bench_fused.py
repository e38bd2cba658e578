"""Fused trials against one configuration at a time: the same 20 digits_linear / digits_mlp configurations (the
shipped spaces' optimiser, lr, weight decay and dropout ranges; the shape keys fixed so they share groups),
trained for the same epochs by `TorchLearner` one by one and by `tuner.fused.FusedGroup` in groups, in one
process, one thread each side (a trial's usual share), alternately and repeated (the fastest counts, in CPU
seconds, so a loaded shared machine weighs on both alike). Prints config-epochs per CPU second each way, the
ratio, and whether every configuration ended with the same validation accuracy and weights.

    python benchmarks/bench_fused.py --core               # 20 configs x 10 epochs per family, groups of 20
    python benchmarks/bench_fused.py --core --group 10    # groups of 10
    python benchmarks/bench_fused.py --quick              # 4 configs x 2 epochs (seconds)

`--core` measures the training core only (no Ray, no search). `--search` runs whole searches through the CLI,
each space twice in one run, plainly and with `search.fuse` (same space, trial budget and seed): the search's
own seconds (run.json's `search_s`, Ray's start and the data left out), the command's wall seconds, and the
best validation accuracy of each side:

    python benchmarks/bench_fused.py --search             # digits_knn grid (84), digits_linear and digits_mlp (20 each)
    python benchmarks/bench_fused.py --search --quick     # 8 configurations x 3 epochs each
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"linear": {"batch_size": 32}, "mlp": {"hidden": [256, 128], "batchnorm": True, "batch_size": 64}}


def configs(family: str, n: int, seed: int = 0) -> list[dict]:
    """n configurations drawn from the shipped digits space's ranges for the keys a group may vary."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cfg = {**SHAPES[family], "optimizer": rng.choice(["sgd", "adam"]), "seed": i}
        if family == "linear":
            cfg.update(lr=10 ** rng.uniform(-3, -1), weight_decay=10 ** rng.uniform(-6, -2))
        else:
            cfg.update(lr=10 ** rng.uniform(-4, -2), dropout=rng.uniform(0.0, 0.5))
        out.append(cfg)
    return out


def one_by_one(family, cfgs: list[dict], data, epochs: int) -> tuple[float, list[float], list[dict]]:
    t0 = time.process_time()
    accs, weights = [], []
    for cfg in cfgs:
        learner = family.learner(cfg, data.info)
        accs.append([m["val_accuracy"] for m in learner.fit(data, epochs)][-1])
        weights.append(learner.state_dict()["model"])
    return time.process_time() - t0, accs, weights


def fused(family, cfgs: list[dict], data, epochs: int, group: int) -> tuple[float, list[float], list[dict]]:
    from tuner.fused.group import FusedGroup, MemberSpec
    from tuner.fused.grouping import plan_groups

    t0 = time.process_time()
    last: dict[str, float] = {}
    weights: dict[str, dict] = {}
    specs = [MemberSpec(str(i), c) for i, c in enumerate(cfgs)]
    for g in plan_groups(family, specs, max_members=group):
        run = FusedGroup(family, list(g.members), data.info)
        for epoch in run.fit(data, epochs):
            last.update({r.key: r.metrics["val_accuracy"] for r in epoch if r.metrics})
        weights.update({m.key: run.member_state(m.key)["model"] for m in g.members})
    return time.process_time() - t0, [last[s.key] for s in specs], [weights[s.key] for s in specs]


def compare(name: str, family, cfgs, data, epochs: int, group: int, repeats: int) -> dict:
    """Both sides `repeats` times, alternating (a shared machine's load then falls on both alike); the fastest
    of each, in CPU seconds of this process (one thread: what the work itself took, not the waits for a core)."""
    plain_s = fused_s = math.inf
    for _ in range(repeats):
        s, plain_acc, plain_w = one_by_one(family, cfgs, data, epochs)
        plain_s = min(plain_s, s)
        s, fused_acc, fused_w = fused(family, cfgs, data, epochs, group)
        fused_s = min(fused_s, s)
    work = len(cfgs) * epochs
    diff = max((a[k].double() - b[k].double()).abs().max().item() for a, b in zip(plain_w, fused_w) for k in a)
    row = {"family": name, "configs": len(cfgs), "epochs": epochs, "group": group,
           "plain_cpu_s": round(plain_s, 2), "fused_cpu_s": round(fused_s, 2),
           "plain_epochs_per_s": round(work / plain_s, 1), "fused_epochs_per_s": round(work / fused_s, 1),
           "speedup": round(plain_s / fused_s, 2),
           "same_val_accuracy": sum(a == b for a, b in zip(plain_acc, fused_acc)),
           "best_val_accuracy": (max(plain_acc), max(fused_acc)), "max_weight_diff": diff}
    print(f"{name:7s} {len(cfgs)} configs x {epochs} epochs, groups of {group}: one by one {plain_s:.2f} CPU s "
          f"({row['plain_epochs_per_s']} config-epochs/s), fused {fused_s:.2f} CPU s ({row['fused_epochs_per_s']}/s): "
          f"{row['speedup']}x; same final val_accuracy {row['same_val_accuracy']}/{len(cfgs)}, best "
          f"{max(plain_acc):.4f} / {max(fused_acc):.4f}, largest weight difference {diff:.1e}")
    return row


# --------------------------------------------------------------------------- whole searches
ROOT = Path(__file__).resolve().parents[1]
# (shipped space, --set options both sides get): the shape keys fixed as for --core, so configurations share groups
SEARCHES = {
    "digits_knn": ("digits_knn.yaml", []),
    "digits_linear": ("digits_linear.yaml", ["fixed.batch_size=32"]),
    "digits_mlp": ("digits_mlp.yaml", ["fixed.batch_size=64", "fixed.hidden=[256, 128]", "fixed.batchnorm=true",
                                       "fixed.activation=relu"]),
}


def search_once(space: str, sets: list[str], results: Path) -> dict:
    """One `tuner search` in a subprocess; its search seconds, wall seconds, trials and best val_accuracy."""
    import os
    import subprocess

    import pandas as pd
    import yaml

    args = [sys.executable, "-m", "tuner", "search", "--space", str(ROOT / "tuner" / "search_spaces" / space),
            "--results", str(results), "--no-retrain", "--no-dashboard"]
    for item in sets:
        args += ["--set", item]
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{space} {sets}: exit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    exp = next(p for p in results.iterdir() if (p / "run.json").is_file())
    run = yaml.safe_load((exp / "run.json").read_text())
    trials = pd.read_csv(exp / "trials.csv")
    return {"search_s": float(run["search_s"]), "wall_s": wall, "trials": len(trials),
            "best_val_accuracy": float(trials["val_accuracy"].max())}


def compare_search(name: str, sets: list[str], fuse: int) -> dict:
    import tempfile

    space, fixed = SEARCHES[name]
    with tempfile.TemporaryDirectory() as d:
        plain = search_once(space, fixed + sets, Path(d) / "plain")
        fused_run = search_once(space, fixed + sets + [f"search.fuse={fuse}"], Path(d) / "fused")
    row = {"space": name, "fuse": fuse, "trials": (plain["trials"], fused_run["trials"]),
           "search_s": (round(plain["search_s"], 1), round(fused_run["search_s"], 1)),
           "wall_s": (round(plain["wall_s"], 1), round(fused_run["wall_s"], 1)),
           "speedup": round(plain["search_s"] / fused_run["search_s"], 2),
           "wall_speedup": round(plain["wall_s"] / fused_run["wall_s"], 2),
           "best_val_accuracy": (plain["best_val_accuracy"], fused_run["best_val_accuracy"])}
    print(f"{name:13s} {plain['trials']} / {fused_run['trials']} trials, fuse {fuse}: search {plain['search_s']:.1f} s "
          f"plain, {fused_run['search_s']:.1f} s fused ({row['speedup']}x; wall {row['wall_s'][0]} / "
          f"{row['wall_s'][1]} s, {row['wall_speedup']}x); best val_accuracy {plain['best_val_accuracy']:.4f} plain, "
          f"{fused_run['best_val_accuracy']:.4f} fused", flush=True)
    return row


def main_search(names: list[str], quick: bool) -> list[dict]:
    rows = []
    for name in names:
        if name == "digits_knn":  # the whole 84-point grid; quick: 8 of its points
            sets = (["space.k={grid: [1, 3]}", "space.metric={grid: [euclidean, cosine]}", "space.normalize=none"]
                    if quick else [])
            n = 8 if quick else 84
        else:
            n = 8 if quick else 20
            sets = [f"search.num_samples={n}"] + (["scheduler.max_epochs=3"] if quick else [])
        rows.append(compare_search(name, sets, fuse=math.ceil(n / 2)))  # max_concurrent 2: two groups at a time
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--core", action="store_true", help="the training core: fused groups against one by one")
    p.add_argument("--quick", action="store_true", help="4 configs x 2 epochs")
    p.add_argument("--configs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--group", type=int, default=20, help="members per fused group at most")
    p.add_argument("--families", default="linear,mlp")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the fastest counts")
    p.add_argument("--search", action="store_true", help="whole searches, plain and with search.fuse")
    p.add_argument("--spaces", default="digits_knn,digits_linear,digits_mlp", help="with --search")
    args = p.parse_args(argv)
    if args.search:
        return main_search(args.spaces.split(","), args.quick)
    n, epochs, repeats = (4, 2, 1) if args.quick else (args.configs, args.epochs, args.repeats)

    import torch

    from tuner import spaces
    from tuner.data import prepare
    from tuner.families import get_family

    torch.set_num_threads(1)  # a trial's usual share; the fused side gets no more
    data = prepare(spaces.DatasetConfig(name="digits", split=spaces.SplitConfig(0.2, 0.2, 0)), progress=False)
    print(f"digits: {len(data.y_train)} train / {len(data.y_val)} val images; torch {torch.__version__}, 1 thread")
    rows = []
    for name in args.families.split(","):
        family = get_family(name)
        cfgs = configs(name, n)
        one_by_one(family, cfgs[:2], data, 1)  # warm-up: first-call costs (kernels, fused Adam) out of both timings
        fused(family, cfgs[:2], data, 1, 2)
        rows.append(compare(name, family, cfgs, data, epochs, min(args.group, n), repeats))
    assert all(not math.isnan(r["speedup"]) for r in rows)
    return rows


if __name__ == "__main__":
    main()
