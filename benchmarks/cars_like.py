"""A synthetic image folder shaped like Stanford Cars, for `bench_seed_scale.py` and its test.

Stanford Cars (16,185 photos, 196 classes, split about in half into train and test by its authors) cannot be
fetched on the machines tuner is benchmarked on, so this makes a stand-in with what matters for timing and
memory: the same number of JPEGs, of the same pixel sizes (widths about 100-1,600 px, mean about 700x480),
at JPEG quality 90, with detail that makes the files about as large as photos (so decoding costs what it
costs on photos), in `train/<class>/` and `test/<class>/` as the `imagefolder` reader reads an already-split
data set. Each class is a shape x colour x texture a CNN can learn, drawn at a random position and scale on
a random smooth background with noise, so a search on it has something to find.

    from cars_like import make_cars_like
    make_cars_like(Path("/tmp/cars"), images=300)        # a few hundred for a test, in seconds

The folder is made once per (images, classes, seed) and reused: `make_cars_like` returns at once when a
complete one is there (a marker file written last says so).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

CARS_IMAGES = 16_185
CARS_TRAIN = 8_144         # Stanford Cars' own split: 8,144 train, 8,041 test
CARS_CLASSES = 196
QUALITY = 90
SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "hexagon", "cross", "ring")
HUES = (0, 50, 100, 150, 200, 250, 300)                   # 7 colours, degrees
TEXTURES = ("plain", "stripes", "checks", "dots")         # 7 x 7 x 4 = 196 classes
MARKER = ".complete.json"


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) as Cars' photos: log-normal widths clipped to 100-1,600 px (mean ~690), landscape
    aspect ratios around 1.47 (mean height ~470)."""
    w = int(np.clip(rng.lognormal(math.log(620), 0.45), 100, 1600))
    aspect = float(np.clip(rng.normal(1.47, 0.18), 1.0, 2.5))
    return w, max(60, int(w / aspect))


def _colour(hue: float, sat: float, val: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(hue / 360.0 % 1.0, sat, val)) * 255.0


_NOISE: np.ndarray | None = None   # one bank of noise per process; each image takes a window of it


def _noise(rng, w: int, h: int) -> np.ndarray:
    global _NOISE
    if _NOISE is None:
        _NOISE = np.random.default_rng(12345).normal(0.0, 9.0, size=(1700, 1700, 1)).round().astype(np.int16)
    oy, ox = int(rng.integers(0, len(_NOISE) - h + 1)), int(rng.integers(0, _NOISE.shape[1] - w + 1))
    return _NOISE[oy:oy + h, ox:ox + w]


def _background(rng, w: int, h: int) -> np.ndarray:
    """A smooth random field of colours (upsampled from 4x3), with noise: H x W x 3 uint8."""
    from PIL import Image

    small = rng.integers(40, 216, size=(3, 4, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), dtype=np.int16)
    return np.clip(field + _noise(rng, w, h), 0, 255).astype(np.uint8)


def _texture(kind: str, w: int, h: int, rng) -> np.ndarray:
    """Shading in [0.35, 1] of the object's box, H x W x 1."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = max(6.0, min(w, h) / 6.0)
    if kind == "stripes":
        t = np.sin((xx + yy) * (2 * math.pi / period)) > 0
    elif kind == "checks":
        t = ((xx // period).astype(int) + (yy // period).astype(int)) % 2 == 0
    elif kind == "dots":
        t = (np.sin(xx * (2 * math.pi / period)) * np.sin(yy * (2 * math.pi / period))) < 0.4
    else:
        t = np.ones((h, w), dtype=bool)
    return np.where(t, 1.0, 0.35).astype(np.float32)[..., None]


def _mask(shape: str, w: int, h: int):
    from PIL import Image, ImageDraw

    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    box = (0, 0, w - 1, h - 1)
    cx, cy = w / 2, h / 2
    if shape == "ellipse":
        d.ellipse(box, fill=255)
    elif shape == "rectangle":
        d.rectangle((w * 0.1, h * 0.2, w * 0.9, h * 0.8), fill=255)
    elif shape == "triangle":
        d.polygon([(cx, 0), (w - 1, h - 1), (0, h - 1)], fill=255)
    elif shape == "diamond":
        d.polygon([(cx, 0), (w - 1, cy), (cx, h - 1), (0, cy)], fill=255)
    elif shape == "hexagon":
        d.regular_polygon((cx, cy, min(w, h) / 2 - 1), 6, fill=255)
    elif shape == "cross":
        d.rectangle((w * 0.35, 0, w * 0.65, h - 1), fill=255)
        d.rectangle((0, h * 0.35, w - 1, h * 0.65), fill=255)
    else:  # ring
        d.ellipse(box, fill=255)
        d.ellipse((w * 0.3, h * 0.3, w * 0.7, h * 0.7), fill=0)
    return m


def render(index: int, label: int, seed: int) -> tuple[bytes, tuple[int, int]]:
    """One JPEG (its bytes and size) of class `label`; the same (index, seed) always gives the same file."""
    import io

    from PIL import Image

    rng = np.random.default_rng([seed, index])
    w, h = image_size(rng)
    shape = SHAPES[label % len(SHAPES)]
    hue = HUES[(label // len(SHAPES)) % len(HUES)] + rng.normal(0, 6)
    texture = TEXTURES[(label // (len(SHAPES) * len(HUES))) % len(TEXTURES)]
    img = _background(rng, w, h)
    side = min(w, h) * rng.uniform(0.35, 0.8)          # random scale
    ow, oh = max(8, int(side * rng.uniform(0.9, 1.3))), max(8, int(side))
    ow = min(ow, w)
    x0, y0 = int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))   # random position
    colour = _colour(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    obj = colour * _texture(texture, ow, oh, rng)
    mask = np.asarray(_mask(shape, ow, oh), dtype=np.float32)[..., None] / 255.0
    region = img[y0:y0 + oh, x0:x0 + ow].astype(np.float32)
    blend = region * (1 - mask) + (obj + _noise(rng, ow, oh)) * mask
    img[y0:y0 + oh, x0:x0 + ow] = np.clip(blend, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="JPEG", quality=QUALITY)
    return out.getvalue(), (w, h)


def plan(images: int, classes: int) -> list[tuple[str, int, int]]:
    """(split, index, label) of every image: Cars' train share (8,144 of 16,185) in train/, the rest in
    test/, classes round-robin so each is about equally large in both."""
    n_train = round(images * CARS_TRAIN / CARS_IMAGES)
    return [("train" if i < n_train else "test", i, i % classes) for i in range(images)]


def _write(job: tuple[Path, str, int, int, int]) -> tuple[int, int, int]:
    root, split, index, label, seed = job
    data, (w, h) = render(index, label, seed)
    folder = root / split / f"class_{label:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{index:05d}.jpg").write_bytes(data)
    return len(data), w, h


def make_cars_like(root: Path, images: int = CARS_IMAGES, classes: int = CARS_CLASSES, seed: int = 0,
                   workers: int | None = None, say=print) -> dict:
    """The folder at `root` (made once; reused when complete), and what it holds: images, bytes, mean size."""
    root = Path(root)
    want = {"images": images, "classes": classes, "seed": seed, "quality": QUALITY, "version": 1}
    marker = root / MARKER
    if marker.is_file():
        made = json.loads(marker.read_text())
        if {k: made.get(k) for k in want} == want:
            return made
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = [(tmp, split, i, label, seed) for split, i, label in plan(images, classes)]
    t0 = time.perf_counter()
    say(f"making {images:,} Cars-sized JPEGs in {root} (once; reused by later runs)")
    # spawned, not forked: the caller may run Ray (a test's in-process Ray, the benchmark's own), and a child
    # forked from a process with such threads can inherit a held lock and hang (the suite hung 20 min so)
    with get_context("spawn").Pool(workers or os.cpu_count() or 1) as pool:
        sizes = pool.map(_write, jobs, chunksize=32)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    arr = np.array(sizes, dtype=np.float64)
    made = want | {"bytes": int(arr[:, 0].sum()), "mean_width": round(float(arr[:, 1].mean()), 1),
                   "mean_height": round(float(arr[:, 2].mean()), 1), "min_width": int(arr[:, 1].min()),
                   "max_width": int(arr[:, 1].max()), "train": sum(1 for j in jobs if j[1] == "train"),
                   "make_s": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(made, indent=1))
    return made
