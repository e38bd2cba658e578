"""The top of the house: a bundle (`tuner.bundle`) turned back into a working model (`Predictor`, `load`),
and `tuner best --export`'s copy of the retrained model into a deployable folder."""
from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tuner.atomic import writing
from tuner.bundle import data_info, read_bundle
from tuner.engine import pick_device
from tuner.errors import UserError
from tuner.families import RunContext, get_family
from tuner.rundir import RunDir


class Predictor:
    """A loaded bundle: `predict` takes PIL images or numpy arrays and returns class names."""

    def __init__(self, bundle: dict, device: str | None = None):
        self.bundle = bundle
        self.family = bundle["family"]
        self.config = bundle["config"]
        self.class_names: list[str] = list(bundle["class_names"])
        self.info = data_info(bundle)
        self.size = (self.info.height, self.info.width)
        self.channels = self.info.channels
        fam = get_family(self.family)
        device = device or str(pick_device())
        self.learner = fam.learner(self.config, self.info, RunContext(device=device))
        self.learner.load_weights(bundle["weights"])
        self.metrics = bundle.get("metrics", {})
        # the range of the pixel values the training images came in (digits: 0-16); None in older bundles
        recorded = bundle["preprocessing"].get("value_range")
        self.trained_range: tuple[float, float] | None = (float(recorded[0]), float(recorded[1])) if recorded else None

    def images(self, x: Any, value_range: tuple[float, float] | None = None) -> np.ndarray:
        """PIL image(s) or arrays (HW, HWC or NHWC) -> uint8 NHWC at the model's size.

        An array's values are taken in `value_range` (lo, hi) when given; else uint8 as 0-255, and other
        dtypes as 0-1 floats, as the range the training images came in (the bundle's `value_range`: digits
        0-16), or as 0-255: the narrowest that holds them all. What fits none, or uint8 that fits the training
        range too (0-16 grey levels or dark 0-255 pixels?), is a UserError saying what to pass."""
        from PIL import Image

        items: list  # PIL images and arrays, mixed
        if isinstance(x, Image.Image):
            items = [x]
        elif isinstance(x, (list, tuple)):
            items = list(x)
        else:
            a = np.asarray(x)
            single = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4))  # HW or HWC; else a batch
            items = [a] if single else list(a)
        arrays = [np.asarray(i) for i in items if not isinstance(i, Image.Image)]
        scale = self._scale(arrays, value_range) if self.trained_range or value_range else None
        out = np.empty((len(items), *self.size, self.channels), dtype=np.uint8)
        for i, item in enumerate(items):
            if not isinstance(item, Image.Image):
                a = np.asarray(item)
                if scale is not None:
                    a = scale(a)
                elif a.dtype != np.uint8:  # a bundle from before value_range: as it always was
                    a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
                if a.ndim == 3 and a.shape[-1] == 1:
                    a = a[..., 0]
                item = Image.fromarray(a)
            item = item.convert("L" if self.channels == 1 else "RGB")
            if item.size != (self.size[1], self.size[0]):
                item = item.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(item, dtype=np.uint8)
            out[i] = arr[..., None] if arr.ndim == 2 else arr
        return out

    def _scale(self, arrays: list[np.ndarray], value_range) -> Callable[[np.ndarray], np.ndarray]:
        """array -> uint8 0-255, from `value_range` or the range `input_range` reads off all the arrays."""
        if value_range is not None:
            lo, hi = check_range(value_range)
        else:
            assert self.trained_range is not None  # images() scales with one of the two
            lo, hi = input_range(arrays, self.trained_range)
        if arrays and value_range is not None:
            low, high = min(float(a.min()) for a in arrays), max(float(a.max()) for a in arrays)
            if low < lo or high > hi:
                raise UserError(f"images: values from {low:g} to {high:g} are outside value_range=({lo:g}, "
                                f"{hi:g}); pass the range they are in")
        if (lo, hi) == (0, 255):
            return lambda a: a if a.dtype == np.uint8 else np.clip(np.round(a), 0, 255).astype(np.uint8)
        factor = 255.0 / (hi - lo)
        return lambda a: np.clip(np.round((a.astype(np.float64) - lo) * factor), 0, 255).astype(np.uint8)

    def predict_proba(self, x: Any, value_range: tuple[float, float] | None = None) -> np.ndarray:
        return self.learner.predict_proba(self.images(x, value_range))

    def predict(self, x: Any, value_range: tuple[float, float] | None = None) -> list[str]:
        """Class names. `value_range`: the range an array's values are in, when not the one guessed (images())."""
        return [self.class_names[i] for i in self.predict_proba(x, value_range).argmax(1)]


def check_range(value_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise UserError(f"value_range={value_range!r}: give (low, high), two finite numbers with low < high, "
                        f"such as (0, 255) or (0, 1)")
    return lo, hi


def input_range(arrays: list[np.ndarray], trained: tuple[float, float]) -> tuple[float, float]:
    """The range images are in, read off their values: see Predictor.images."""
    if not arrays:
        return 0.0, 255.0
    low, high = min(float(a.min()) for a in arrays), max(float(a.max()) for a in arrays)
    is_uint8 = all(a.dtype == np.uint8 for a in arrays)
    narrower = trained != (0, 255) and 1 < trained[1] < 255  # e.g. digits' 0-16 grey levels
    if is_uint8 and narrower and high <= trained[1]:
        raise UserError(f"images: uint8 values from {low:g} to {high:g}, and the model was trained on images "
                        f"in {trained[0]:g}-{trained[1]:g}; pass value_range=({trained[0]:g}, {trained[1]:g}) "
                        f"if they are in that range, or value_range=(0, 255)")
    candidates = [(0.0, 255.0)] if is_uint8 else [(0.0, 1.0), tuple(map(float, trained)), (0.0, 255.0)]
    for lo, hi in sorted(set(candidates), key=lambda r: r[1] - r[0]):
        if lo <= low and high <= hi:
            return lo, hi
    raise UserError(f"images: values from {low:g} to {high:g} fit none of 0-1, 0-255 or the training images' "
                    f"{trained[0]:g}-{trained[1]:g}; pass value_range=(low, high), the range they are in")


def load(path: str | Path, device: str | None = None) -> Predictor:
    """A bundle folder (or its model.pt) -> a `Predictor`."""
    bundle = read_bundle(path)
    get_family(bundle["family"], where=f"{path}: family")
    try:
        return Predictor(bundle, device=device)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:  # weights that do not fit the model
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path}: the bundle's weights do not fit its model ({type(exc).__name__}: {first}); "
                        f"export it again with `tuner best --export`") from None


def check_destination(exp_dir: Path, dest: Path) -> None:
    """`--export DEST` is a folder we may write, and not the experiment's best/ it copies from."""
    src = RunDir(exp_dir).best.resolve()
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--export {dest}: is a file; give a folder (it is created if missing)")
    target = dest.resolve()
    if target == src or src in target.parents:
        raise UserError(f"--export {dest}: is the experiment's own best/ folder (the export is copied from "
                        f"it); give another folder, or leave DIR out for {RunDir(exp_dir).export}")
    probe = dest / ".tuner-write-check"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_bytes(b"")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # the CLI says "disk full" in one place
            raise
        raise UserError(f"--export {dest}: cannot write there ({exc.strerror}); "
                        "give a folder you can write to") from None


def export(exp_dir: Path, dest: Path) -> Path:
    """Copy the retrained best model and its reports into a deployable folder, whole or not at all: every
    file is copied to a temporary name first (tuner.atomic) and only once all are, they replace the old ones;
    a full disk leaves the folder as it was, never a 0-byte model.pt or a new metrics.json beside an old model."""
    check_destination(exp_dir, dest)
    src = RunDir(exp_dir).best
    try:
        with contextlib.ExitStack() as staged:
            for f in sorted(src.iterdir()):
                if f.is_file():
                    tmp = staged.enter_context(writing(dest / f.name))
                    # not shutil.copy2: on a full disk it names the file copied from, not the one written
                    with open(f, "rb") as src_file, open(tmp, "wb") as out:
                        shutil.copyfileobj(src_file, out)
                    shutil.copystat(f, tmp)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise UserError(f"--export {dest}: cannot write {exc.filename} ({exc.strerror})") from None
    return dest
