"""`tuner best --export --format onnx`: the bundle's network as `model.onnx`, plus `preprocessing.json`.

The ONNX model takes exactly what `tuner.load(...).images(x)` produces: uint8 NHWC at the training size
(grey images with one channel, colour with three), any batch size. Scaling to 0-1, the per-channel mean/std
normalisation, grey -> RGB for ImageNet backbones and the final softmax are inside the graph, so a deployment
only resizes the image and hands over the bytes; the output is class probabilities, in the order of
`class_names` in preprocessing.json.

Only the families that are one `nn.Module` export: linear, mlp, cnn, transfer. knn and features keep their
training set and a scikit-learn model in the bundle and are used through `tuner.load`.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tuner.atomic import writing
from tuner.engine import TorchLearner
from tuner.errors import UserError

ONNX_FAMILIES = ("linear", "mlp", "cnn", "transfer")
OPSET = 17
INPUT, OUTPUT = "images", "probabilities"


def check_family(family: str) -> None:
    if family not in ONNX_FAMILIES:
        raise UserError(f"family {family}: ONNX export supports linear, mlp, cnn and transfer; knn/features "
                        f"bundles are used through tuner.load")


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise UserError("--format onnx needs the onnx package: pip install 'tuner-hpo[onnx]'") from None
    return onnx


class Deployed(nn.Module):
    """uint8 NHWC -> class probabilities: the learner's own preprocessing, its network and a softmax."""

    def __init__(self, pre: nn.Module, model: nn.Module):
        super().__init__()
        self.pre, self.model = pre, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.pre(x)).float(), dim=1)


def preprocessing(predictor) -> dict:
    """What a deployment needs to feed model.onnx and read its output."""
    h, w = predictor.size
    return {
        "format": "tuner-onnx/1", "family": predictor.family, "experiment": predictor.bundle.get("experiment", ""),
        "input": {"name": INPUT, "dtype": "uint8", "layout": "NHWC", "shape": ["batch", h, w, predictor.channels],
                  "range": [0, 255]},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", len(predictor.class_names)],
                   "meaning": "class probabilities (softmax), in the order of class_names"},
        "height": h, "width": w, "channels": predictor.channels,
        "color": "grey" if predictor.channels == 1 else "RGB",
        "resize": "bilinear to height x width before the model (as tuner.load's images() does)",
        "mean": list(predictor.info.mean), "std": list(predictor.info.std),
        "normalization": "inside the model: x / 255, then (x - mean) / std per channel",
        # the pixel values of the training data as its data set gave them (digits: 0-16 grey levels)
        "value_range": list(predictor.trained_range or (0, 255)),
        "to_input": "images in value_range [lo, hi] become uint8 as round((x - lo) * 255 / (hi - lo)); "
                    "0-255 images as they are",
        "class_names": list(predictor.class_names), "opset": OPSET,
    }


def export_onnx(bundle_dir: Path) -> Path:
    """Write model.onnx and preprocessing.json beside the bundle (model.pt) in `bundle_dir`."""
    from tuner.bundle import read_bundle
    from tuner.predict import load

    bundle_dir = Path(bundle_dir)
    check_family(read_bundle(bundle_dir).get("family", ""))
    onnx = require_onnx()
    predictor = load(bundle_dir, device="cpu")
    learner = predictor.learner
    assert isinstance(learner, TorchLearner)  # check_family above: only torch families export to ONNX
    net = Deployed(learner.pre, learner.model).eval()
    h, w = predictor.size
    example = torch.zeros(2, h, w, predictor.channels, dtype=torch.uint8)
    path = bundle_dir / "model.onnx"
    graph = io.BytesIO()  # built in memory, then written whole or not at all with its preprocessing.json
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter: the dynamo one needs onnxscript, and this graph has nothing it needs
        # (torch warns that the exporter is legacy; that is for torch's developers, not for our users)
        warnings.simplefilter("ignore", DeprecationWarning)
        # (torch's annotation says a path; the exporter writes to any file object, as its docs say)
        torch.onnx.export(net, (example,), graph,  # type: ignore[arg-type]
                          dynamo=False, opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    onnx.checker.check_model(onnx.load_from_string(graph.getvalue()))
    with contextlib.ExitStack() as staged:  # both are replaced only once both are written
        staged.enter_context(writing(path)).write_bytes(graph.getvalue())
        staged.enter_context(writing(bundle_dir / "preprocessing.json")).write_text(
            json.dumps(preprocessing(predictor), indent=2) + "\n")
    return path


def onnx_proba(model_path: Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities from model.onnx through onnxruntime (uint8 NHWC in, as preprocessing.json says)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(images, dtype=np.uint8)})[0]
