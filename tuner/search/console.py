"""The console of a search for people: a header, a live progress line, one line per finished trial.

On a terminal the progress line is rewritten in place (a carriage return; tqdm's bar did not show
under Ray's controller loop), in a file or pipe it is printed every 10 s.

Ray's own status tables and INFO logs come back with `--verbose`.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from ray.tune import Callback

from tuner.metrics import BEST_LOSS, best_key, epoch_of, feasible, rank_key
from tuner.tables import one_line
from tuner.search.study import stopped_early
from tuner.spaces.rules import auto_fuse_off

PLAIN_COLUMNS = 120  # what a file or a pipe is taken to be: its lines stay under 120 characters
WIDTH = PLAIN_COLUMNS - 1
PLAIN_EVERY_S = 10.0  # the progress line when the output is a file or a pipe, not a terminal


def line_width(stream) -> int:
    """How long a line may be: the terminal's width less one (a full line would wrap the cursor), asked at
    each line so a resized window is followed ($COLUMNS wins, as for shutil.get_terminal_size); WIDTH when
    the output is not a terminal."""
    if not stream.isatty():
        return WIDTH
    try:
        columns = int(os.environ.get("COLUMNS", 0)) or os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = shutil.get_terminal_size((PLAIN_COLUMNS, 24)).columns
    return max(columns, 40) - 1


def quiet_ray(verbose: bool) -> None:
    """Before the Tuner starts: what Ray and Optuna print, by tuner's choice rather than theirs."""
    # tuner snapshots the experiment every 2 s (TUNE_GLOBAL_CHECKPOINT_S) and keeps 2 checkpoints a trial;
    # Ray then also forces a snapshot every 2 checkpoints of a trial (so the snapshot never names a
    # deleted checkpoint) and warns whenever two snapshots come within 5 s. With sub-second epochs that
    # is every snapshot, by design here: resume needs exactly that, so the advice does not apply.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's new output engine prints its configuration table and result paths even at verbose=0; the
    # legacy one prints nothing there. Read by Ray when the run starts.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    if not verbose:
        # a trial's error reaches the console as one line (its traceback is in its error.txt); Ray would
        # also print the whole worker traceback again when the failed result is dropped, after tuner's own
        # last line (a full disk showed 40 lines after "error: the disk is full"). Read when Ray reports it.
        os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    import optuna

    # "A new study created ..." and a line a trial
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    # a failed trial: Ray logs its whole traceback at ERROR; the console prints its one-line reason and the
    # traceback stays in the trial's error.txt, so below --verbose only Ray's CRITICAL lines get through
    logging.getLogger("ray.tune").setLevel(logging.NOTSET if verbose else logging.CRITICAL)


def header(exp, exp_dir: Path, results: Path, say: Callable[[str], None]) -> None:
    """Where the results go and the ways to watch the search (the Ray dashboard line comes from init_ray)."""
    res = "" if Path(results) == Path("results") else f" --results {_short(results)}"
    say(f"results: {_short(exp_dir)}  (trials.csv and epochs.csv grow as trials finish)")
    if exp.search.fuse:
        say(f"fused:   up to {exp.search.fuse} configurations trained as one model per Ray trial (search.fuse)")
    elif why := auto_fuse_off(exp):
        say(f"fused:   no: {why}")
    say(f"watch:   tuner dashboard --experiment {exp.name}{res}")
    say(f"         tensorboard --logdir {_short(Path(exp_dir) / 'ray')}")
    say("         (both: pip install -e '.[monitor]'; the dashboard shows trials, curves and importance)")


def _short(path: Path) -> str:
    rel = os.path.relpath(Path(path).resolve(), Path.cwd())
    return rel if not rel.startswith("..") else str(Path(path).resolve())


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.4g}"
    return str(v)


def trial_line(exp, trial_id: str, config: dict, result: dict | None, epochs: int, status: str,
               error: str = "", width: int = WIDTH) -> str:
    """One finished trial: id, outcome, best metric and its epoch, epochs run, then the searched values."""
    metric = exp.metrics[0]
    if status == "failed":
        head = f"{trial_id} failed after {epochs} epochs: {error}"
    else:
        best = (result or {}).get(best_key(metric))
        at = (result or {}).get("_best_epoch", "?")
        head = f"{trial_id} {metric} {best:.4f} (epoch {at}), {epochs} epochs, {status}" if best is not None \
            else f"{trial_id} no {metric}, {status}"
    params = " ".join(f"{k}={_fmt(config[k])}" for k in exp.param_names if k in config)  # a branch not drawn: left out
    line = f"{head} | {params}" if params else head
    return line if len(line) <= width else line[:width - 3] + "..."


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Console(Callback):
    """Prints the progress line and a line per finished trial, from Ray's trial events."""

    def __init__(self, exp, say: Callable[[str], None] = print, stream=None):
        self.exp, self.say = exp, say
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.total = exp.num_samples if exp.num_samples >= 0 else None
        self.finished = self.stopped = self.failed = 0
        self.best: tuple | None = None  # rank_key of the best finished trial
        self.seen: dict[str, int] = {}  # last epoch each trial was let go on from
        # metric, epoch, val_loss and whether the constraints held, at each trial's best epoch
        self.best_epoch: dict[str, tuple[float, int, float, bool]] = {}
        self.t0 = time.monotonic()
        self.last_plain = self.t0
        self.adopted = False  # trials that ended before a --resume: counted once, from Ray's restored state
        self.ranked: set[str] = set()  # the trials counted in `best`

    def __getstate__(self) -> dict:
        # Ray pickles the run's callbacks into tuner.pkl; the terminal stays behind
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stream = sys.stdout

    # ---------------------------------------------------------------- Ray's events
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        if total_num_samples:
            self.total = total_num_samples  # a grid multiplies num_samples by its points
        if self.total is not None and (self.total < 0 or self.total >= sys.maxsize):
            self.total = None  # "until the time budget ends": Ray counts that as sys.maxsize samples

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.trial_id
        step = epoch_of(result)
        value = result.get(self.exp.metrics[0])
        if value is not None and value == value:
            old = self.best_epoch.get(tid)
            better = old is None or (value > old[0] if self.exp.modes[0] == "max" else value < old[0])
            if better:
                self.best_epoch[tid] = (value, int(result.get("epoch", step)), result.get("val_loss", math.nan),
                                        feasible(result, self.exp.constraints))
        if not result.get("done"):  # Ray marks the result it stops a trial on as done
            self.seen[tid] = step

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = dict(trial.last_result or {})
        epochs = epoch_of(result)
        early = stopped_early(result, self.seen.get(trial.trial_id, 0), self.exp.scheduler.max_epochs)
        self.finished += 1
        self.stopped += early
        # the trial's own count of its best epoch survives a --resume; this console saw only the epochs since
        result["_best_epoch"] = result.get("best_epoch") or self.best_epoch.get(trial.trial_id, (0, "?"))[1]
        self._rank(trial.trial_id, result)
        self._print(trial_line(self.exp, trial.trial_id, trial.config, result, epochs,
                               "stopped early" if early else "completed", width=line_width(self.stream)), trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finished += 1
        self.failed += 1
        error = one_line(trial.get_error() or "see the trial's error.txt")
        self._print(trial_line(self.exp, trial.trial_id, trial.config, None,
                               epoch_of(trial.last_result), "failed", error,
                               width=line_width(self.stream)), trials)

    def on_step_begin(self, iteration, trials, **info):
        self._adopt(trials)

    def _adopt(self, trials) -> None:
        """Trials that ended before this run (a --resume): no event comes for them, so count them here, in
        the totals and the best, without a line each (the first run printed those)."""
        if self.adopted:
            return
        self.adopted = True
        for t in trials:
            if t.status not in ("TERMINATED", "ERROR") or t.trial_id in self.best_epoch:
                continue
            result = dict(t.last_result or {})
            self.finished += 1
            self.failed += t.status == "ERROR"
            self.stopped += t.status != "ERROR" and stopped_early(result, 0, self.exp.scheduler.max_epochs)
            self._rank(t.trial_id, result)

    def _rank(self, tid: str, result: dict) -> None:
        self.ranked.add(tid)
        score = result.get(best_key(self.exp.metrics[0]))
        # the best so far is the trial best.yaml would name: never one outside the constraints (trials.csv
        # marks it infeasible)
        if tid in self.best_epoch:  # read at the trial's best epoch, as trials.csv does
            _, _, loss, inside = self.best_epoch[tid]
        else:  # ended before this run (--resume): its last result is all there is
            loss, inside = result.get("val_loss", math.nan), feasible(result, self.exp.constraints)
        # the trial's own val_loss at its best epoch, which may lie before a --resume this console did not see
        loss = result[BEST_LOSS] if result.get(BEST_LOSS) is not None else loss
        if score is not None and score == score and inside:
            key = rank_key(self.exp.modes[0], score, loss, tid)
            self.best = key if self.best is None else min(self.best, key)

    def on_step_end(self, iteration, trials, **info):
        if self.tty:
            if time.monotonic() - self.last_plain >= 0.5:  # the controller steps many times a second
                self.last_plain = time.monotonic()
                self._draw(self.progress(trials))
        elif time.monotonic() - self.last_plain >= PLAIN_EVERY_S:
            self.last_plain = time.monotonic()
            self.say(self.progress(trials))

    def on_experiment_end(self, trials, **info):
        self._adopt(trials)  # a --resume of a search that had ended runs no step
        if self.tty:
            self._draw("")
            self.stream.write("\r")
        # trials the time budget stopped get no complete or error event: said once here, not left uncounted
        cut = sum(t.status in ("TERMINATED", "ERROR") for t in trials) - self.finished
        cut = cut if self.exp.search.time_budget else 0  # a Ctrl-C stops them so too; --resume goes on with them
        for t in trials:  # ranked as best.yaml ranks them: a trial the budget cut keeps its best epoch
            if cut and t.status == "TERMINATED" and t.trial_id not in self.ranked and t.trial_id in self.best_epoch:
                self._rank(t.trial_id, dict(t.last_result or {}))
        self.say(self.progress(trials, final=True) + (f" | {cut} cut by the time budget" if cut > 0 else ""))

    # ---------------------------------------------------------------- the lines
    def progress(self, trials, final: bool = False) -> str:
        running = sum(t.status == "RUNNING" for t in trials)
        elapsed = time.monotonic() - self.t0
        best = "best -"
        if self.best:
            best = f"best {-self.best[0] if self.exp.modes[0] == 'max' else self.best[0]:.4f} ({self.best[2]})"
        left = []  # seconds: the trials still to run at the pace so far, the time budget's rest
        if self.total is not None and 0 < self.finished < self.total:
            left.append(elapsed / self.finished * (self.total - self.finished))
        if self.exp.search.time_budget:
            left.append(max(0.0, self.exp.search.time_budget - elapsed))
        eta = f" eta {_clock(min(left))}" if left and not final else ""
        done = f"{self.finished}/{self.total} done, " if self.total is not None else f"{self.finished} done, "
        return (f"{done}{running} running, {self.stopped} stopped early, {self.failed} failed | "
                f"{self.exp.metrics[0]} {best} | {_clock(elapsed)}{eta}")

    def _draw(self, line: str) -> None:
        # one line rewritten in place: back to its start, the new text, blanks over the rest of the old one
        width = line_width(self.stream)
        self.stream.write("\r" + line[:width].ljust(width))
        self.stream.flush()

    def _print(self, line: str, trials) -> None:
        if self.tty:
            self._draw(line)
            self.stream.write("\n")
            self._draw(self.progress(trials))
        else:
            self.say(line)
