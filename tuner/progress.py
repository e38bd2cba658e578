"""Progress bars on stderr for the driver's long one-off steps (decoding, embedding, neighbour tables, the
retrain's epochs, the test pass): one look for all of them, and none inside trials (`RunContext.progress`)."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import weakref

_open: weakref.WeakSet = weakref.WeakSet()  # every bar made here and not yet collected (see close_open)


def bar(total: int, desc: str, enabled: bool = True, unit: str = "img", leave: bool = True):
    """A tqdm bar on stderr, redrawn at most twice a second; a no-op one when not `enabled`."""
    return _bar_class()(total=total, desc=desc, unit=unit, disable=not enabled, file=_BarStream(),
                        mininterval=0.5, leave=leave, dynamic_ncols=True)


def note(msg: str, enabled: bool = True) -> None:
    """One line on stderr (what a finished step took), when progress is shown."""
    if enabled:
        print(msg, file=sys.stderr, flush=True)


class _BarStream:
    """sys.stderr as the bars write to it, remembering whether their last write left a line open: a signal can
    cut into tqdm's own close() after it marked the bar closed and before it ended the line, or into a write
    whose text is already shown (CI: 'testing: 0%|...| 0/300 [...]interrupted; ...'); a bar's state cannot
    say that; what was written can."""

    line_open = False

    def write(self, s: str) -> int:
        if s:  # open while it is written: a signal handled inside the write leaves its text shown, the flag unset
            _BarStream.line_open = True
        n = sys.stderr.write(s)
        if s:
            _BarStream.line_open = s[-1] not in "\r\n"
        return n

    def __getattr__(self, name: str):  # flush, fileno, encoding, isatty: stderr's own
        return getattr(sys.stderr, name)


def close_open() -> None:
    """End the bars still open, before a last line (tuner.interrupt), so the line starts a line of its own:
    a signal raised inside a bar's constructor, after its first draw and before its `with` took it, or inside
    its close(), left 'testing: 0%|...|' on the line and the line was appended to it."""
    for shown in list(_open):
        with contextlib.suppress(Exception):  # half made or half closed: its attributes may be missing
            shown.close()
    if _BarStream.line_open:  # a bar whose close or write was cut off, or whose close could not run
        try:
            _BarStream().write("\n")
        except RuntimeError:  # the signal came inside a write to stderr (reentrant): past its buffer, as the line
            os.write(2, b"\n")
        except Exception:  # noqa: BLE001 - the line is said all the same
            pass


@functools.cache
def _bar_class():
    from tqdm import tqdm

    from tuner import interrupt

    interrupt.before_line(close_open)  # from the first bar on, a Ctrl-C's line ends the open ones first

    class Bar(tqdm):
        def __new__(cls, *args, **kwargs):  # noted before __init__ draws, so a bar cut off in it is known
            made = super().__new__(cls, *args, **kwargs)
            _open.add(made)
            return made

    return Bar


def say(msg: str) -> None:
    """One line on stdout, tuner's own (a command's answer, the search's header and result lines)."""
    # one write, line and newline together: print() writes them apart, and a Ctrl-C or SIGTERM handled
    # between the two put tuner's last line at the end of this one ("testing on 300 imagesstopped by SIGTERM")
    sys.stdout.write(f"{msg}\n")
    sys.stdout.flush()
