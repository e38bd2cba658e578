"""Ctrl-C (SIGINT) and SIGTERM: whatever a command is doing, it stops with one line and exit status 130 or 143
(128 + the signal's number, as a shell reports a process that signal ended), never a traceback.

The first signal raises `Interrupted` in the main thread, wherever the program is; during a search's Tune run
it is passed on to Tune instead (`forwarding`, used by tuner.search.driver), which then saves the experiment
so that `--resume` continues it. A signal after the one that raised ends the process at once (os._exit):
the user asked twice. `cli.main` installs the handler whatever the process inherited: a search started in
the background of a shell script inherits SIGINT ignored, and `kill -INT` was lost until its Tune run began.
Ray replaces the SIGTERM handler when it starts (a C++ one that aborts with a stack dump), so the handler
is installed again after Ray's start; and a signal whose exception Python dropped is sent again
(`_unraisable`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# after SIGTERM the process is gone within this many seconds, saved or not: a batch system (Slurm) sends it
# to every process of the job, Ray's too, and with its GCS gone Ray's shutdown waits 60 s and exits 1
SIGTERM_GRACE_S = 20.0
TEST_HOOK = "TUNER_TEST_SIGNAL"  # tests only: see signal_for_tests


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the command stops, with exit status 128 + `signum`."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class _State:
    line: Callable[[int], str] = lambda signum: "interrupted"  # the one line said on the way out
    first: int | None = None        # the first signal received
    raised: bool = False            # ... and already raised in the main thread (or passed on and raised since)
    said: bool = False              # the line is written
    resend: bool = False            # the raise was lost (see _unraisable) and the signal sent again
    forward: Callable[[], bool] | None = None  # while Tune runs: pass the first signal on; True if taken
    resumable: Callable[[], bool] | None = None  # has the search saved anything --resume can continue?


_state = _State()
_unraisable_before = sys.__unraisablehook__
_before_line: list[Callable[[], None]] = []  # run before the line is written (see before_line)


def before_line(fn: Callable[[], None]) -> None:
    """Run `fn` before the last line is written (once, however often registered): tuner.progress closes the
    bars still open there. A hook rather than an import, as this module imports nothing from tuner."""
    if fn not in _before_line:
        _before_line.append(fn)


def begin(line: Callable[[int], str]) -> dict:
    """A command starts: forget earlier signals, take SIGINT and SIGTERM; `line(signum)` is what `finish`
    prints. Returns what it replaced, for `restore`."""
    global _state
    _state = _State(line=line)
    previous = install()
    global _unraisable_before
    if sys.unraisablehook is not _unraisable:
        previous["unraisablehook"] = _unraisable_before = sys.unraisablehook
        sys.unraisablehook = _unraisable
    return previous


def install() -> dict:
    """Take SIGINT and SIGTERM (main thread only; again after Ray's start). Returns the handlers before."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}


def reinstall() -> None:
    """After Ray's start, within a tuner command: take SIGTERM back from Ray (a library caller's are left)."""
    if signal.getsignal(signal.SIGINT) is _on_signal:
        install()


def restore(previous: dict) -> None:
    previous = dict(previous)
    if "unraisablehook" in previous:
        sys.unraisablehook = previous.pop("unraisablehook")
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def exiting() -> None:
    """The command has returned: a signal while the process shuts down (Ray's, in atexit) exits quietly."""
    _state.raised = _state.said = True


def note_resumable(check: Callable[[], bool] | None) -> None:
    """The search now running: `check()` says whether it has saved what `--resume` needs."""
    _state.resumable = check


def resumable(default: bool) -> bool:
    """Whether `--resume` would continue the interrupted search; `default` before a search noted how to tell."""
    try:
        return _state.resumable() if _state.resumable is not None else default
    except Exception:  # noqa: BLE001 - only the hint depends on it
        return default


def stop(signum: int) -> Interrupted:
    """A signal that reached us some other way (Ray's own SIGTERM handler during its start): stop as for ours."""
    _state.first = _state.first or signum
    _state.raised = True
    return Interrupted(_state.first)


def _on_signal(signum: int, frame) -> None:
    if _state.resend:  # our own signal again, after the first raise was lost
        _state.resend = False
        raise Interrupted(_state.first or signum)
    if _state.raised:  # asked again while stopping: now
        _exit_now(_state.first or signum)
    if _state.first is None:
        _state.first = signum
        if signum == signal.SIGTERM:  # the stop may hang on Ray's processes, ended by the same SIGTERM
            timer = threading.Timer(SIGTERM_GRACE_S, _exit_now, (signum,))
            timer.daemon = True
            timer.start()
        if _state.forward is not None and _state.forward():
            return  # Tune stops and saves; the driver raises once it has (raise_received)
    _state.raised = True
    raise Interrupted(_state.first)


def _unraisable(unraisable) -> None:
    """Python drops an exception raised where nothing can catch it (a fork's at-fork hook, __del__, a weakref
    callback) with an "Exception ignored in" traceback. A signal handled there raised its Interrupted into
    the void: Ray's start forks a dozen processes, and a Ctrl-C during it was lost that way while the search
    ran on. So the signal is sent again a moment later, to be raised where the program is then. The same
    for SIGTERM while ray.init holds it (its handler raises SystemExit(SIGTERM): tuner.search.cluster)."""
    exc = unraisable.exc_value
    if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM and not _state.said:
        exc = Interrupted(signal.SIGTERM)
    if isinstance(exc, Interrupted) and not _state.said:
        _state.resend = True
        timer = threading.Timer(0.05, os.kill, (os.getpid(), exc.signum))
        timer.daemon = True
        timer.start()
        return
    _unraisable_before(unraisable)


def raise_received() -> None:
    """After a Tune run: raise the signal that was passed on to Tune, if one was."""
    if _state.first is not None:
        _state.raised = True
        raise Interrupted(_state.first)


@contextlib.contextmanager
def forwarding(to: Callable[[], bool]):
    """While the block runs, the first signal goes to `to()` (which returns False when it cannot take it yet:
    the signal is then raised as usual); a second one raises. Outside `tuner` commands (tuner.search() from
    Python) the handler is installed for the block alone."""
    global _state
    if signal.getsignal(signal.SIGINT) is not _on_signal:
        _state = _State()  # a library call: nothing of an earlier one counts
    previous = install()
    _state.forward = to
    try:
        yield
    finally:
        _state.forward = None
        restore(previous)


def finish(exc: KeyboardInterrupt) -> int:
    """The exit status for `exc`, after saying the line once."""
    signum = getattr(exc, "signum", _state.first or signal.SIGINT)
    _state.raised = True  # from here on, a further signal exits at once
    _say(signum)
    return 128 + signum


def _say(signum: int) -> None:
    if _state.said:
        return
    on_main = threading.current_thread() is threading.main_thread()
    if on_main:  # a signal while writing waits until the line is whole
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        _state.said = True
        for before in _before_line:  # tuner.progress ends its open bars: the line starts a line of its own
            with contextlib.suppress(Exception):  # whatever a hook meets, the line is still said
                before()
        with contextlib.suppress(Exception):
            text = _state.line(signum) + "\n"
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
            except RuntimeError:  # a signal handler's write cut into one of the main thread's (reentrant)
                os.write(2, text.encode(errors="replace"))
    finally:
        if on_main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _exit_now(signum: int) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    _say(signum)
    os._exit(128 + signum)  # Ray's processes go with the driver (tuner.search.cluster's watchdog)


def signal_for_tests(phase: str) -> None:
    """Tests only: with TUNER_TEST_SIGNAL=PHASE[+WHEN]:SIG[,SIG...] (e.g. `prepare:SIGINT`, `fit:SIGINT,SIGINT`,
    `ray+fork:SIGTERM`) the process sends itself those signals on reaching PHASE, 0.3 s apart; so a test
    interrupts a named moment, not a lucky one. WHEN: SECONDS later, or `fork`: the first one handled inside
    the at-fork hook of the next process this one starts (Ray's start: where Python drops what a handler
    raises); `now`: sent from this thread, so it is handled before PHASE's next step. `-SIGTERM` goes to the
    whole process group, Ray's processes included, as a batch system sends it. Phases: start (cli), prepare
    (the data), ray (its start), tuner (the Tuner made, its fit not begun), fit (the first trial result),
    retrain."""
    want, _, sigs = os.environ.get(TEST_HOOK, "").partition(":")
    name, _, when = want.partition("+")
    if name != phase or not sigs:
        return
    os.environ.pop(TEST_HOOK)  # once
    names = sigs.split(",")

    def send(names: list[str], delay: float) -> None:
        time.sleep(delay)
        for i, sig in enumerate(names):
            time.sleep(0.3 if i else 0)
            if sig.startswith("-"):
                os.killpg(os.getpgrp(), getattr(signal, sig[1:]))
            else:
                os.kill(os.getpid(), getattr(signal, sig))

    if when == "now":
        send(names, 0.0)
        return
    if when != "fork":
        threading.Thread(target=send, args=(names, float(when or 0)), daemon=True).start()
        return
    armed = [True]

    def after_fork() -> None:
        if armed:
            armed.clear()
            threading.Thread(target=send, args=(names[1:], 0.3), daemon=True).start()
            signal.raise_signal(getattr(signal, names[0]))  # handled here, inside the hook

    os.register_at_fork(after_in_parent=after_fork)
