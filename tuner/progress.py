"""Progress bars on stderr for the driver's long one-off steps (decoding, embedding, neighbour tables, the
retrain's epochs, the test pass): one look for all of them, and none inside trials (`RunContext.progress`)."""
from __future__ import annotations

import sys


def bar(total: int, desc: str, enabled: bool = True, unit: str = "img", leave: bool = True):
    """A tqdm bar on stderr, redrawn at most twice a second; a no-op one when not `enabled`."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, mininterval=0.5,
                leave=leave, dynamic_ncols=True)


def note(msg: str, enabled: bool = True) -> None:
    """One line on stderr (what a finished step took), when progress is shown."""
    if enabled:
        print(msg, file=sys.stderr, flush=True)
