"""The top of the house: a bundle (`tuner.bundle`) turned back into a working model (`Predictor`, `load`),
and `tuner best --export`'s copy of the retrained model into a deployable folder."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import numpy as np

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

    def images(self, x: Any) -> np.ndarray:
        """PIL image(s) or arrays (HW, HWC or NHWC; uint8 0-255 or float 0-1) -> uint8 NHWC at the model's size."""
        from PIL import Image

        if isinstance(x, Image.Image):
            items = [x]
        elif isinstance(x, (list, tuple)):
            items = list(x)
        else:
            a = np.asarray(x)
            single = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4))  # HW or HWC; else a batch
            items = [a] if single else list(a)
        out = np.empty((len(items), *self.size, self.channels), dtype=np.uint8)
        for i, item in enumerate(items):
            if not isinstance(item, Image.Image):
                a = np.asarray(item)
                if a.dtype != np.uint8:
                    a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
                if a.ndim == 3 and a.shape[-1] == 1:
                    a = a[..., 0]
                item = Image.fromarray(a)
            item = item.convert("L" if self.channels == 1 else "RGB")
            if item.size != (self.size[1], self.size[0]):
                item = item.resize((self.size[1], self.size[0]), Image.BILINEAR)
            arr = np.asarray(item, dtype=np.uint8)
            out[i] = arr[..., None] if arr.ndim == 2 else arr
        return out

    def predict_proba(self, x: Any) -> np.ndarray:
        return self.learner.predict_proba(self.images(x))

    def predict(self, x: Any) -> list[str]:
        return [self.class_names[i] for i in self.predict_proba(x).argmax(1)]


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
    try:
        dest.mkdir(parents=True, exist_ok=True)
        probe = dest / ".tuner-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # the CLI says "disk full" in one place
            raise
        raise UserError(f"--export {dest}: cannot write there ({exc.strerror}); give a folder you can write to") from None


def export(exp_dir: Path, dest: Path) -> Path:
    """Copy the retrained best model and its reports into a deployable folder."""
    check_destination(exp_dir, dest)
    src = RunDir(exp_dir).best
    try:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, dest / f.name)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise UserError(f"--export {dest}: cannot write {exc.filename} ({exc.strerror})") from None
    return dest
