"""A frozen-backbone head trained on cached features vs. running the frozen backbone every epoch.

Same images, same arch (the `transfer` family, same initial weights), same head, same batch size and
optimiser. The plain side is what a Keras/PyTorch script with `trainable = False` does: every epoch
every image goes through the frozen backbone again, and only the head learns. The cached side
(`trainable_layers: 0`) runs the backbone once per image into tuner's embedding cache, then each epoch
trains the head on the cached features; the one-off extraction is reported separately (every epoch of
every trial that shares the backbone reuses it).

    python benchmarks/bench_frozen.py            # 2,000 images at 96 px (STL-10 size), mobilenet_v2, 3 epochs
    python benchmarks/bench_frozen.py --quick    # 256 images at 64 px, 3 epochs: under a minute
    python benchmarks/bench_frozen.py --arch resnet50 --size 224

Weights are `none`: the time per epoch does not depend on the values of the weights. Each side reports
its fastest epoch (the others measure whatever else the machine was doing). Goal: >= 10x per epoch.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.data.base import IMAGENET_MEAN, IMAGENET_STD, ImageData  # noqa: E402
from tuner.types import RunContext  # noqa: E402
from tuner.families import get_family  # noqa: E402
from tuner.families.transfer import FrozenLearner, TransferLearner  # noqa: E402

HEAD = {"hidden": [512, 256], "dropout": 0.2, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "seed": 0}


def images(n: int, size: int, classes: int = 10, seed: int = 0) -> ImageData:
    """Noise images tinted per class: real uint8 NHWC arrays the learners cannot tell from decoded photos."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    x[np.arange(n), :, :, y % 3] += (y * 12).astype(np.uint8)[:, None, None]
    n_val = n // 5
    return ImageData(x_train=x[n_val:], y_train=y[n_val:], x_val=x[:n_val], y_val=y[:n_val],
                     x_test=x[:0], y_test=y[:0], class_names=[str(c) for c in range(classes)],
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, name="bench", key=f"bench:{n}:{size}:{seed}")


def epoch_times(learner, data, epochs: int) -> list[float]:
    out = []
    t = time.perf_counter()
    for _ in learner.fit(data, epochs):
        now = time.perf_counter()
        out.append(now - t)
        t = now
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 images at 64 px, 3 epochs (under a minute)")
    ap.add_argument("--arch", default="mobilenet_v2")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.size, args.epochs = 256, 64, 3

    data = images(args.images, args.size)
    fam = get_family("transfer")
    cfg = fam.resolve({"arch": args.arch, "weights": "none", "trainable_layers": 0, **HEAD})
    print(f"{args.arch}, {len(data.y_train)} train + {len(data.y_val)} val images at {args.size} px, head "
          f"{cfg['hidden']}, batch {cfg['batch_size']}, {args.epochs} epochs, device {args.device}, "
          f"{torch.get_num_threads()} threads")

    # plain: the same frozen model, the backbone run on every batch of every epoch
    torch.manual_seed(0)
    plain = TransferLearner(fam.build(cfg, data.info), cfg, data.info, RunContext(device=args.device))
    plain_times = epoch_times(plain, data, args.epochs)

    with tempfile.TemporaryDirectory() as cache:
        torch.manual_seed(0)
        ctx = RunContext(device=args.device, cache_dir=cache)
        cached = FrozenLearner(fam.build(cfg, data.info), cfg, data.info, ctx)
        t = time.perf_counter()
        cached.feature_set = cached._features(data)  # the one-off extraction, timed on its own
        extract = time.perf_counter() - t
        cached_times = epoch_times(cached, data, args.epochs)
        torch.manual_seed(0)
        again = FrozenLearner(fam.build(cfg, data.info), cfg, data.info,
                              RunContext(device=args.device, cache_dir=cache))
        t = time.perf_counter()
        again.feature_set = again._features(data)  # a second trial: reads the cache
        reread = time.perf_counter() - t

    # the fastest epoch of each side: on a shared machine the slower ones measure the neighbours
    p, c = min(plain_times), min(cached_times)
    trials = 8
    print(f"plain (backbone every epoch): {p:8.3f} s/epoch  {len(data.y_train) / p:9.0f} images/s")
    print(f"cached features (head only):  {c:8.3f} s/epoch  {len(data.y_train) / c:9.0f} images/s")
    print(f"one-off feature extraction:   {extract:8.3f} s (train + val); a later trial reads it in {reread:.3f} s")
    print(f"per-epoch speed-up: {p / c:.1f}x  (goal >= 10x)")
    total_plain = trials * args.epochs * p
    total_cached = extract + trials * (reread + args.epochs * c)
    print(f"a search of {trials} trials x {args.epochs} epochs: plain {total_plain:.1f} s, cached {total_cached:.1f} s "
          f"(extraction included): {total_plain / total_cached:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
