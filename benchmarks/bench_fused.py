"""Fused trials against one configuration at a time: the same 20 digits_linear / digits_mlp configurations (the
shipped spaces' optimiser, lr, weight decay and dropout ranges; the shape keys fixed so they share groups),
trained for the same epochs by `TorchLearner` one by one and by `tuner.fused.FusedGroup` in groups, in one
process, one thread each side (a trial's usual share), alternately and repeated (the fastest counts, in CPU
seconds, so a loaded shared machine weighs on both alike). Prints config-epochs per CPU second each way, the
ratio, and whether every configuration ended with the same validation accuracy and weights.

    python benchmarks/bench_fused.py --core               # 20 configs x 10 epochs per family, groups of 20
    python benchmarks/bench_fused.py --core --group 10    # groups of 10
    python benchmarks/bench_fused.py --quick              # 4 configs x 2 epochs (seconds)

`--core` measures the training core only (no Ray, no search); the search comparison (per-trial overhead
included, best validation accuracy of the two searches) is still to come in this script.
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


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--core", action="store_true", help="the training core: fused groups against one by one")
    p.add_argument("--quick", action="store_true", help="4 configs x 2 epochs")
    p.add_argument("--configs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--group", type=int, default=20, help="members per fused group at most")
    p.add_argument("--families", default="linear,mlp")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the fastest counts")
    args = p.parse_args(argv)
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
