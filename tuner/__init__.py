"""tuner: hyperparameter search for image classifiers on Ray Tune, Optuna and PyTorch.

    import tuner
    exp = tuner.load_space("search_spaces/digits_cnn.yaml")
    tuner.search(exp)                       # the same as `tuner search --space ...`
    model = tuner.load("results/digits_cnn/export")
    model.predict(image)                    # -> class names
"""
from __future__ import annotations

from pathlib import Path

from tuner.errors import UserError
from tuner.export import Predictor, load
from tuner.spaces import Experiment, Suite
from tuner.spaces import load as load_space

__all__ = ["Experiment", "Predictor", "Suite", "UserError", "load", "load_space", "search"]
__version__ = "0.1.0"


def search(exp: Experiment, results: str | Path = "results", **kwargs) -> Path:
    """Run an experiment (see `tuner.driver.run` for the keyword arguments); returns its folder."""
    from tuner.driver import run

    return run(exp, Path(results), **kwargs)
