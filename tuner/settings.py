"""Settings read from the environment (a leaf: imports nothing from tuner)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Decoded images and embeddings are cached here ($TUNER_CACHE, else ~/.cache/tuner), shared by every
    experiment on this machine."""
    return Path(os.environ.get("TUNER_CACHE", Path.home() / ".cache" / "tuner")).expanduser()
