"""The deployable bundle's file format: one `model.pt` with weights, config, class names and preprocessing.

It is loaded with `torch.load(weights_only=True)`: nothing in it is unpickled as code, so a bundle from
someone else cannot run anything on your machine. This is the format only (torch, errors, types); turning a
bundle back into a working model needs the family registry and is `tuner.predict`'s job.
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch

from tuner.atomic import writing
from tuner.errors import UserError
from tuner.types import DataInfo

FORMAT = "tuner-bundle/1"


def save_bundle(path: Path, exp, config: dict, learner, data, metrics: dict | None = None) -> None:
    """`path` (model.pt), whole or not at all (tuner.atomic): a full disk leaves no 0-byte bundle."""
    info = data.info
    bundle = {
        "format": FORMAT, "family": exp.family, "experiment": exp.name, "config": dict(config),
        "class_names": list(data.class_names),
        "preprocessing": {"height": info.height, "width": info.width, "channels": info.channels,
                          "mean": list(info.mean), "std": list(info.std), "dataset": data.name,
                          # the pixel values the data set gave (digits 0-16): predict reads arrays in it
                          "value_range": [float(v) for v in getattr(data, "value_range", (0, 255))]},
        "weights": learner.weights(), "metrics": dict(metrics or {}),
    }
    with writing(path) as tmp:
        torch.save(bundle, tmp)


def bundle_config(path: str | Path) -> dict | None:
    """The config a bundle's model was trained with (its weights are mapped, not read), or None when there is
    no readable bundle: `tuner best` compares it with best.yaml's before it ships best/."""
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - missing, damaged or refused: in every case not best.yaml's model
        return None
    return bundle.get("config") if isinstance(bundle, dict) else None


def read_bundle(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise UserError(f"{path}: no model bundle there; make one with `tuner best --export`")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message is six lines that end by suggesting weights_only=False, i.e. running the
        # file's code; the one thing to say is that it was refused
        raise UserError(f"{path}: refused: it holds Python objects that are not weights or plain data, and "
                        f"tuner does not unpickle code; use a bundle written by `tuner best --export`") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to replace
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path}: not a readable tuner bundle ({type(exc).__name__}: {first}); "
                        f"export it again with `tuner best --export`") from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise UserError(f"{path}: not a tuner bundle (no format {FORMAT!r}); export one with `tuner best --export`")
    _check_bundle(bundle, path)
    return bundle


# what a Predictor reads from a bundle, and the type each must have
BUNDLE_KEYS = {"family": str, "config": dict, "class_names": list, "preprocessing": dict, "weights": dict}
PREPROCESSING_KEYS = {"height": int, "width": int, "channels": int, "mean": list, "std": list}


def _check_bundle(bundle: dict, path: Path) -> None:
    """Every key a Predictor reads is there with the right type, or a UserError naming the first that is not."""
    for where, keys in (("", BUNDLE_KEYS), ("preprocessing.", PREPROCESSING_KEYS)):
        block = bundle["preprocessing"] if where else bundle  # a dict by then: the first round checked it
        for key, typ in keys.items():
            if key not in block:
                raise UserError(f"{path}: the bundle has no {where}{key}; it is damaged or from another version, "
                                f"export it again with `tuner best --export`")
            if not isinstance(block[key], typ) or isinstance(block[key], bool):
                raise UserError(f"{path}: the bundle's {where}{key} is not a {typ.__name__}; "
                                f"export it again with `tuner best --export`")
    value_range = bundle["preprocessing"].get("value_range")  # bundles from before it have none
    if value_range is not None and not (isinstance(value_range, list) and len(value_range) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value_range)
            and value_range[0] < value_range[1]):
        raise UserError(f"{path}: the bundle's preprocessing.value_range is not [low, high]; "
                        f"export it again with `tuner best --export`")


def data_info(bundle: dict) -> DataInfo:
    """The `DataInfo` a bundle's model was built with (the one place a bundle's preprocessing becomes one)."""
    p = bundle["preprocessing"]
    return DataInfo(num_classes=len(bundle["class_names"]), channels=int(p["channels"]), height=int(p["height"]),
                    width=int(p["width"]), mean=tuple(p["mean"]), std=tuple(p["std"]))
