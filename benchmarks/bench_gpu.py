"""Is tuner at the model's speed on a GPU? One run, the same images and model on every side:

- ceiling: a plain training loop on images already resident on the device (bf16 autocast and
  channels-last on CUDA), no per-batch sync;
- peer: a plain torchvision ImageFolder + DataLoader loop decoding the PNG files every epoch;
- tuner: the `transfer` family's learner (fine-tuning everything), through the family registry.

Each side runs a training epoch plus a validation pass, and img/s counts both. Then: tuner's first epoch
against a steady one (the warm-up), feature extraction img/s (`embeddings.compute`), a frozen head on
cached features against running the frozen backbone every epoch, and the digits_cnn search through the
CLI on the GPU (4 trials at `resources.gpu=0.25`) against the CPU. Without CUDA it prints what it can on
the CPU and says "no CUDA".

    python benchmarks/bench_gpu.py            # ResNet50, 224 px, 4,800 images
    python benchmarks/bench_gpu.py --quick    # ResNet18, 32 px, 96 images, smoke searches: on any machine
    python benchmarks/bench_gpu.py --compile  # only: tuner's learner with `compile: true` against without
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner import embeddings  # noqa: E402
from tuner.engine import amp_dtype, pick_device  # noqa: E402
from tuner.families import RunContext, get_family  # noqa: E402
from tuner.families.base import DataInfo  # noqa: E402
from tuner.families.transfer import TransferLearner  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_folder(root: Path, n: int, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An ImageFolder of PNGs (class = a tint, plus noise) and the same images decoded, uint8 NHWC."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = rng.integers(0, 160, (n, size, size, 3), dtype=np.uint8)
    x[..., 0] += (y * (90 // classes)).astype(np.uint8)[:, None, None]
    for i in range(n):
        d = root / f"class{y[i]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(d / f"{i:05d}.png")
    return x, y


def make_model(arch: str, classes: int, device: torch.device) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    m = getattr(torchvision.models, arch)(num_classes=classes).to(device)
    return m.to(memory_format=torch.channels_last) if device.type == "cuda" else m


def plain_resident(arch, x, y, xv, yv, bs, epochs, device) -> list[float]:
    """The ceiling: uint8 images on the device, indexed there; one sync per epoch."""
    model = make_model(arch, int(y.max()) + 1, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    xd, yd = torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device)
    xvd = torch.from_numpy(xv).to(device)
    dtype = amp_dtype(device)

    def prep(b):
        return ((b.permute(0, 3, 1, 2).float() / 255 - mean) / std).contiguous(
            memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)

    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), device=device)
        for s in range(0, len(x) - bs + 1, bs):
            idx = order[s:s + bs]
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = F.cross_entropy(model(prep(xd[idx])).float(), yd[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for s in range(0, len(xv), 4 * bs):
                model(prep(xvd[s:s + 4 * bs]))
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def plain_dataloader(arch, root: Path, val_root: Path, classes, bs, epochs, device, workers) -> list[float]:
    """The peer: torchvision ImageFolder + DataLoader, decoding the files every epoch."""
    import torchvision
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    kw = {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}
    train = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(root), tf), batch_size=bs,
                                        shuffle=True, drop_last=True, **kw)
    val = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(val_root), tf), batch_size=4 * bs, **kw)
    model = make_model(arch, classes, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = amp_dtype(device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for xb, yb in train:
            xb = xb.to(device, non_blocking=True).contiguous(memory_format=fmt)
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = F.cross_entropy(model(xb).float(), yb.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for xb, _ in val:
                model(xb.to(device, non_blocking=True).contiguous(memory_format=fmt))
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def plain_inference(frozen, x, device) -> float:
    """The extraction ceiling: the frozen body alone on resident uint8 images, float32 with TF32 off (as
    tuner extracts), channels-last on CUDA, inference mode, batches of 256; the faster of two passes."""
    from tuner.engine import precision

    frozen.model.eval()
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    xd = torch.from_numpy(x).to(device)
    best = float("inf")
    with torch.inference_mode(), precision(device, exact=True):
        for _ in range(2):
            sync(device)
            t0 = time.perf_counter()
            for s in range(0, len(x), 256):
                frozen.model.features(((xd[s:s + 256].permute(0, 3, 1, 2).float() / 255 - mean) / std)
                                      .contiguous(memory_format=fmt))
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return len(x) / best


def search_seconds(device_set: list[str], quick: bool, results: Path) -> float:
    cmd = [sys.executable, "-m", "tuner", "search", "--space", str(ROOT / "search_spaces" / "digits_cnn.yaml"),
           "--results", str(results), "--no-dashboard", "--no-retrain", "--name", "bench_gpu_digits", "--overwrite"]
    cmd += ["--smoke"] if quick else []
    for s in device_set:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def compile_timing(cfg: dict, info, data, device: torch.device, epochs: int) -> None:
    """`compile: true` against the same learner without: the first epoch pays for the compiling, so the
    line says after how many epochs of a trial it has paid for itself (never, if steady epochs are not faster)."""
    times = {}
    for flag in (False, True):
        learner = get_family("transfer").learner({**cfg, "compile": flag}, info, RunContext(device=device))
        times[flag] = [m["epoch_time_s"] for m in learner.fit(data, epochs)]
    plain, comp = (statistics.median(times[f][1:] or times[f]) for f in (False, True))
    extra = (times[True][0] - comp) - (times[False][0] - plain)  # first-epoch cost beyond a steady epoch
    gain = plain - comp
    pays = f"pays back after {extra / gain:.0f} epochs" if gain > 0 else "never pays back"
    print(f"compile: first epoch {times[True][0]:.1f} s (uncompiled {times[False][0]:.1f} s), steady "
          f"{comp:.2f} s against {plain:.2f} s ({plain / comp:.2f}x); {pays}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="only time `compile: true` against without")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = pick_device(None)
    arch, size, n, classes, bs = ("resnet18", 32, 96, 4, 16) if args.quick else ("resnet50", 224, 4800, 10, 128)
    epochs = args.epochs or 3
    workers = 0 if args.quick else min(8, os.cpu_count() or 1)
    name = torch.cuda.get_device_name(0) if cuda else f"no CUDA: CPU only ({os.cpu_count()} cores)"
    print(f"device: {name}; {arch}, {size} px, {n} train + {n // 4} val images, batch {bs}, {epochs} epochs")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x, y = write_folder(tmp / "train", n, size, classes)
        xv, yv = write_folder(tmp / "val", n // 4, size, classes)
        per_epoch = n + n // 4

        info = DataInfo(num_classes=classes, channels=3, height=size, width=size, mean=MEAN, std=STD)
        splits = {"train": (x, y), "val": (xv, yv)}
        data = SimpleNamespace(x_train=x, y_train=y, x_val=xv, y_val=yv, info=info, key=f"bench_gpu:{n}:{size}",
                               split=splits.__getitem__)
        cfg = {"arch": arch, "weights": "none", "trainable_layers": "all", "batch_size": bs, "optimizer": "sgd",
               "lr": 0.01}
        if args.compile:
            compile_timing(cfg, info, data, device, max(epochs, 4))
            return
        ceiling = plain_resident(arch, x, y, xv, yv, bs, epochs, device)
        peer = plain_dataloader(arch, tmp / "train", tmp / "val", classes, bs, epochs, device, workers)
        learner = get_family("transfer").learner(cfg, info, RunContext(device=device))
        ours = [m["epoch_time_s"] for m in learner.fit(data, epochs)]

        def rate(times):
            return per_epoch / statistics.median(times[1:] or times)

        print(f"steady img/s (train + val): ceiling {rate(ceiling):.0f}, peer DataLoader({workers} workers) "
              f"{rate(peer):.0f}, tuner {rate(ours):.0f}")
        print(f"tuner / ceiling {rate(ours) / rate(ceiling):.2f} (goal >= 0.9); tuner / peer "
              f"{rate(ours) / rate(peer):.2f} (goal >= 2)")
        steady = statistics.median(ours[1:] or ours)
        print(f"warm-up: tuner's first epoch {ours[0]:.2f} s, steady {steady:.2f} s, "
              f"{ours[0] / steady:.2f}x (goal <= 1.5x + the CUDA start)")

        # extraction at the model's inference speed (float32, TF32 off: see tuner/embeddings.py)
        frozen_cfg = {**cfg, "trainable_layers": 0}
        fam = get_family("transfer")
        frozen = fam.learner(frozen_cfg, info, RunContext(device=device, cache_dir=str(tmp / "cache")))
        embeddings.compute(frozen.model.features, frozen.pre, x[:bs], device)  # first-call start-up
        plain = plain_inference(frozen, x, device)
        sync(device)
        t0 = time.perf_counter()
        embeddings.compute(frozen.model.features, frozen.pre, x, device)
        ours_rate = n / (time.perf_counter() - t0)
        print(f"extraction: {ours_rate:.0f} img/s; plain float32 inference of the same body {plain:.0f} img/s "
              f"({ours_rate / plain:.2f}x)")

        # the head's epochs are short: five of them give a steadier median than `epochs`
        on_cache = [m["epoch_time_s"] for m in frozen.fit(data, max(epochs, 5))]  # epoch 1 includes the extraction
        every = TransferLearner(fam.build(fam.resolve(frozen_cfg), info), fam.resolve(frozen_cfg), info,
                                RunContext(device=device))
        backbone = [m["epoch_time_s"] for m in every.fit(data, epochs)]
        ratio = statistics.median(backbone[1:] or backbone) / statistics.median(on_cache[1:] or on_cache)
        print(f"frozen head on cached features: {ratio:.1f}x faster per epoch than the backbone every epoch "
              f"(goal >= 10x)")

        if not cuda:
            print("digits search on the GPU: no CUDA; on the CPU only")
        cpu_s = search_seconds(["resources.gpu=0"], args.quick, tmp / "results")
        line = f"digits_cnn search{' (--smoke)' if args.quick else ''}: CPU {cpu_s:.1f} s"
        if cuda:
            gpu_s = search_seconds(["resources.gpu=0.25", "search.max_concurrent=4"], args.quick, tmp / "results")
            line += f", GPU (4 trials at 0.25) {gpu_s:.1f} s, GPU / CPU {gpu_s / cpu_s:.2f} (goal <= 1)"
        print(line)


if __name__ == "__main__":
    main()
