"""Reading a file that must be a regular one, without ever waiting on a FIFO or a device (a leaf: imports
nothing from tuner). A plain open() of a FIFO blocks until a writer comes: `tuner best` hung on one."""
from __future__ import annotations

import os
import stat
from pathlib import Path


class NotRegular(OSError):
    """A FIFO, a device or a folder where a file should be; or a file larger than its limit."""


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path` (at most `limit` bytes, or NotRegular). Opened without
    blocking and checked on the open descriptor, so nothing can be swapped in between."""
    fd = os.open(Path(path), os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegular("not a regular file (a FIFO, a device or a folder in its place)")
        if limit is not None and info.st_size > limit:
            raise NotRegular(f"{info.st_size} bytes, larger than any file tuner writes")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)
