"""The retrained best as an MLflow model: a pyfunc around the tuner bundle (model.pt), so `mlflow.pyfunc.load_model`
predicts as `tuner.load` does: uint8 images in (N, H, W, C), class probabilities out, one column a class.
Its signature is inferred from a real batch through the model, and it can be registered by name."""
from __future__ import annotations

from pathlib import Path

import contextlib
import io

import mlflow.pyfunc
import numpy as np

# MLflow advises type hints when the class is made, under a warning filter of its own; the signature is given
# explicitly at logging, so the advice goes nowhere
with contextlib.redirect_stderr(io.StringIO()):

    class BundleModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]  # mlflow has no type hints
        """Loads the bundle with tuner.load (torch.load(weights_only=True): no code runs from the file)."""

        def load_context(self, context):
            import tuner

            self.predictor = tuner.load(context.artifacts["bundle"], device="cpu")

        def predict(self, context, model_input, params=None):
            return probabilities(self.predictor, np.asarray(model_input))


def probabilities(predictor, images: np.ndarray):
    """One row an image, one column a class (named as the bundle names it)."""
    import pandas as pd

    return pd.DataFrame(predictor.predict_proba(images), columns=[str(c) for c in predictor.class_names])


def example_batch(bundle: Path):
    """A black and a white image of the training size and what the model answers for them (the signature's
    example). Both, since uint8 images that are all dark could be in a data set's narrower range (digits' 0-16)
    and tuner.load refuses to guess (tuner.predict.input_range)."""
    from tuner.predict import load

    predictor = load(bundle, device="cpu")
    info = predictor.info
    images = np.zeros((2, info.height, info.width, info.channels), dtype=np.uint8)
    images[1] = 255
    return images, probabilities(predictor, images)


def log_model(uri: str | None, run_id: str, bundle: Path, register: str | None) -> str:
    """Log `bundle` as the model of `run_id` (and register it as `register`); returns a line saying where."""
    import contextlib
    import io
    import logging
    import os
    import warnings

    from mlflow.models import infer_signature

    import tuner

    images, proba = example_batch(bundle)
    if uri:
        mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    quiet = logging.getLogger("mlflow")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:  # MLflow's advice, progress bars and links would come between tuner's lines; the outcome is said below
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), mlflow.start_run(run_id=run_id):
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=BundleModel(), artifacts={"bundle": str(bundle)},
                signature=infer_signature(images, proba), input_example=images,
                # written out, so MLflow does not load the model in a subprocess to guess them
                pip_requirements=[f"tuner-hpo=={tuner.__version__}", "torch", "torchvision", "numpy", "pandas"],
                registered_model_name=register)
    finally:
        quiet.setLevel(level)
    version = getattr(info, "registered_model_version", None)
    registered = f", registered as {register} version {version}" if register else ""
    return f"MLflow model: {info.model_uri}{registered}"
