"""Every file tuner writes is written whole or not at all: its content goes to a temporary name beside it
(same folder, so the same file system), which then replaces the file in one step (os.replace). A reader
never sees half a file, and a write that fails (a full disk, Ctrl-C) removes its temporary and leaves the
file as it was: no 0-byte model.pt or comparison.html, no `.epochs.csv.*.tmp` left behind.

    write_text(path, text)         write_bytes(path, data)
    with writing(path) as tmp:     for writers that want a path: torch.save(obj, tmp), fig.savefig(tmp),
        df.to_csv(tmp)             np.savez(tmp, ...), shutil.copyfile(src, tmp)
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator


def temporary(path: Path) -> Path:
    """A hidden name beside `path`, unique to this process and thread, ending in `path`'s suffix (writers
    such as savefig and np.savez read the format from it, or append one)."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[Path]:
    """The path to write `path`'s new content to; it replaces `path` when the block ends, and is removed
    if the block raises (anything, KeyboardInterrupt included)."""
    path = Path(path)
    tmp = temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            exc.filename = str(path)  # "the disk is full writing <the file>", not its temporary or nothing
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with writing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with writing(path) as tmp:
        tmp.write_bytes(data)
