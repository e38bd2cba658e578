"""Epochs over the decode-once cache vs. torchvision ImageFolder + DataLoader decoding JPEGs every epoch.

Same JPEG files (random crops of scikit-learn's two sample photos, 64 px), same training images, same
CNN (the `cnn` family, same initial weights), same batch size, same optimiser. The cache side pays its
decode once (reported separately, it is amortised over every epoch of every trial); the loader side
decodes, resizes and normalises every image every epoch, as a plain PyTorch script does.

    python benchmarks/bench_cache.py            # 5,000 JPEGs, 3 epochs each side
    python benchmarks/bench_cache.py --quick    # 1,000 JPEGs, 1 epoch: under a minute
    python benchmarks/bench_cache.py --family linear   # a model too cheap to hide the decoding (as on a GPU)

It prints images/s for the data side alone and for whole training epochs, and the ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.data import prepare  # noqa: E402
from tuner.engine import train_batches  # noqa: E402
from tuner.families import RunContext, get_family  # noqa: E402
from tuner.spaces import DatasetConfig, SplitConfig  # noqa: E402

# the model both sides train; on a CPU a CNN's own compute bounds the ratio, `--family linear` shows the
# data-bound case (what a GPU sees, where the model step is fast and decoding is the bottleneck)
MODELS = {"cnn": {"blocks": 2, "channels": 16, "convs_per_block": 1},
          "mlp": {"hidden": [256]},
          "linear": {}}
MODEL = {"batch_size": 64, "optimizer": "sgd", "lr": 0.01, "seed": 0}
FAMILY = "cnn"


def write_jpegs(root: Path, n: int, size: int, classes: int = 10) -> None:
    """n real-photo JPEGs of size x size: crops of the two sample photos, a class per photo and band."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % classes
        photo = photos[c % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(size, min(h, w) // 2))
        band = (c // len(photos)) * (h - side) // max(1, classes // len(photos) - 1)
        x0 = int(rng.integers(0, w - side))
        crop = Image.fromarray(photo[band:band + side, x0:x0 + side]).resize((size, size), Image.BILINEAR)
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        crop.save(d / f"{i:05d}.jpg", quality=90)


def cached_epochs(root: Path, cache: Path, size: int, epochs: int,
                  device: str) -> tuple[float, float, float, float, object]:
    cfg = DatasetConfig(name="imagefolder", root=str(root), image_size=size, split=SplitConfig(val=0.1, test=0.1))
    t0 = time.perf_counter()
    data = prepare(cfg, cache_dir=cache, progress=False)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = prepare(cfg, cache_dir=cache, progress=False)  # what every later experiment pays
    reuse = time.perf_counter() - t0
    learner = get_family(FAMILY).learner(MODEL, data.info, RunContext(device=device))
    # the data side alone: shuffled batches -> normalised float tensors on the device, no model
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in train_batches(len(data.y_train), MODEL["batch_size"], learner.gen):
            learner.inputs(data.x_train[idx.numpy()], train=True)
    data_rate = epochs * len(data.y_train) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        learner.train_epoch(data.x_train, data.y_train, MODEL["batch_size"])
    rate = epochs * len(data.y_train) / (time.perf_counter() - t0)
    return data_rate, rate, build, reuse, data


def loader_epochs(root: Path, data, size: int, epochs: int, workers: int, device: str) -> tuple[float, float]:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize(data.mean, data.std)])
    folder = datasets.ImageFolder(str(root), transform=tf)
    assert folder.classes == data.class_names  # same files in the same order: indices carry over
    train = Subset(folder, data.indices["train"].tolist())
    loader = DataLoader(train, batch_size=MODEL["batch_size"], shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for _ in range(epochs):  # the data side alone, as for the cache
        for xb, yb in loader:
            xb.to(device)
    data_rate = epochs * len(train) / (time.perf_counter() - t0)
    learner = get_family(FAMILY).learner(MODEL, data.info, RunContext(device=device))  # same weights, same optimiser
    model, opt = learner.model, learner.optimizer
    model.train()
    t0 = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(yb)
    return data_rate, seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1,000 images, 1 epoch: under a minute")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader worker processes")
    p.add_argument("--family", choices=sorted(MODELS), default="cnn", help="the model both sides train")
    # 1 = what a trial with resources.cpu: 1 gets (engine.set_threads); more threads on a busy machine spin
    p.add_argument("--threads", type=int, default=1, help="torch threads in the training process, both sides")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dir", type=Path, default=None, help="keep the JPEGs and the cache here (default: a temp dir)")
    args = p.parse_args(argv)
    global FAMILY
    FAMILY = args.family
    MODEL.update(MODELS[args.family])
    if args.quick:
        args.images, args.epochs = 1000, 1
    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        root, cache = base / f"jpegs_{args.images}_{args.size}", base / "cache"
        if not root.is_dir():
            write_jpegs(root, args.images, args.size)
        torch.set_num_threads(args.threads)
        cache_data, cache_rate, build, reuse, data = cached_epochs(root, cache, args.size, args.epochs, args.device)
        loader_data, loader_rate = loader_epochs(root, data, args.size, args.epochs, args.workers, args.device)
    print(f"{args.images} JPEGs at {args.size}px, {len(data.y_train)} trained per epoch, {args.epochs} epoch(s), "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, device {args.device}, "
          f"model {args.family}, "
          f"DataLoader with {args.workers} workers")
    print(f"cache build (decode once): {build:.2f} s ({args.images / build:.0f} img/s); reuse: {reuse:.3f} s")
    print(f"{'':28s}{'cache':>10s}{'DataLoader':>12s}{'ratio':>8s}")
    print(f"{'data only (img/s)':28s}{cache_data:10.0f}{loader_data:12.0f}{cache_data / loader_data:7.2f}x")
    print(f"{'training epochs (img/s)':28s}{cache_rate:10.0f}{loader_rate:12.0f}{cache_rate / loader_rate:7.2f}x")
    print(f"ratio cache / DataLoader, training epochs: {cache_rate / loader_rate:.2f}x  (goal >= 3x)")


if __name__ == "__main__":
    main()
