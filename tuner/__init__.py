"""tuner: hyperparameter search for image classifiers on Ray Tune, Optuna and PyTorch.

    import tuner
    exp = tuner.load_space("search_spaces/digits_cnn.yaml")
    tuner.search(exp)                       # the same as `tuner search --space ...`
    model = tuner.load("results/digits_cnn/export")
    model.predict(image)                    # -> class names

The names below are loaded on first use (module `__getattr__`), so `import tuner` (and `tuner list`)
loads neither torch nor ray.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["Experiment", "Predictor", "Suite", "UserError", "load", "load_space", "search"]
__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    "Experiment": ("tuner.spaces", "Experiment"),
    "Suite": ("tuner.spaces", "Suite"),
    "load_space": ("tuner.spaces", "load"),
    "Predictor": ("tuner.predict", "Predictor"),
    "load": ("tuner.predict", "load"),
    "UserError": ("tuner.errors", "UserError"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def search(exp, results: str | Path = "results", **kwargs) -> Path:
    """Run an experiment as `tuner search` does (see `tuner.commands.run_search` for the keyword arguments);
    returns its results folder."""
    from tuner.commands import run_search

    return run_search(exp, Path(results), **kwargs)
