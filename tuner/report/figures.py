"""What every report figure shares: the resolution, the saving, the shortening of long labels."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tuner.atomic import writing  # noqa: E402

DPI = 100


def save(fig, path: Path) -> Path:
    """The figure as `path` (whole or not at all: tuner.atomic), then closed."""
    try:
        with writing(path) as tmp:
            fig.savefig(tmp, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def short(name: str, width: int = 26) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"
