"""The one owner of a results folder, `results/<name>/`: the name of every file in it, the folder's safety
(a real folder directly under results, one search at a time, replaced only when it is an experiment) and
the readers and writers of its files.

    results/<name>/
      space.yaml            the experiment as it ran (what --resume continues)
      trials.csv            one row per trial
      epochs.csv            one row per trial and epoch
      best.yaml             the best trial: id, config, metrics
      pareto.csv            multi-objective searches: the trials no other beats on every objective
      split.npz             the train/val/test indices of the search
      run.json              the search's timings
      optuna.journal        the Optuna study (tuner dashboard)
      plots/                the search plots
      best/                 the retrained best model: model.pt, metrics.json, history.csv, reports
      ray/                  Ray's trial checkpoints and experiment state
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from pathlib import Path

from tuner.errors import UserError
from tuner.spaces import check_name


class RunDir:
    """The paths of one experiment's results folder (nothing is created by asking for a path)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    space = property(lambda self: self.path / "space.yaml", doc="the experiment as it ran")
    trials = property(lambda self: self.path / "trials.csv", doc="one row per trial")
    epochs = property(lambda self: self.path / "epochs.csv", doc="one row per trial and epoch")
    best_yaml = property(lambda self: self.path / "best.yaml", doc="the best trial: id, config, metrics")
    pareto = property(lambda self: self.path / "pareto.csv", doc="the Pareto front (several objectives)")
    split = property(lambda self: self.path / "split.npz", doc="the search's train/val/test indices")
    run_json = property(lambda self: self.path / "run.json", doc="the search's timings")
    journal = property(lambda self: self.path / "optuna.journal", doc="the Optuna study")
    plots = property(lambda self: self.path / "plots", doc="the search plots")
    best = property(lambda self: self.path / "best", doc="the retrained best model and its reports")
    model = property(lambda self: self.path / "best" / "model.pt", doc="the retrained best model's bundle")
    metrics = property(lambda self: self.path / "best" / "metrics.json", doc="its test metrics")
    ray = property(lambda self: self.path / "ray", doc="Ray's checkpoints and experiment state")
    lock = property(lambda self: self.path / LOCK_FILE, doc="held while a search of it runs")

    @classmethod
    def files(cls) -> dict[str, str]:
        """Every path above, relative to the folder -> what it holds (the README's results section lists these)."""
        probe = cls("")
        return {str(getattr(probe, k)): getattr(cls, k).__doc__ for k, v in vars(cls).items()
                if isinstance(v, property) and k != "name"}

    def __fspath__(self) -> str:
        return str(self.path)


LOCK_FILE = "search.lock"


def experiment_dir(results: Path, name: str) -> Path:
    """`<results>/<name>`, resolved, refused when it is anything but a real folder directly under results."""
    check_name(name, "experiment name")  # also when run() is called from Python, not the CLI
    try:
        root = results.expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--results {results}: cannot create the folder ({exc.strerror}); give a writable "
                        f"folder") from None
    if not root.is_dir():
        raise UserError(f"--results {results}: not a folder")
    exp_dir = root / name
    if exp_dir.is_symlink() or (exp_dir.exists() and not exp_dir.is_dir()):
        raise UserError(f"{exp_dir}: is a link or a file, not an experiment folder; pick another name or remove "
                        f"it by hand")
    if exp_dir.resolve().parent != root:  # cannot happen for a checked name; never rely on that alone
        raise UserError(f"{exp_dir}: not directly under {root}; pick another name")
    return exp_dir


def check_replaceable(exp_dir: Path) -> None:
    """A new search replaces an old experiment, never a folder that only happens to have the same name."""
    if exp_dir.is_dir() and not (exp_dir / "space.yaml").is_file() and set(os.listdir(exp_dir)) - {LOCK_FILE}:
        raise UserError(f"{exp_dir}: exists but is not a tuner experiment (no space.yaml); pick another name "
                        f"or remove it by hand")


@contextlib.contextmanager
def search_lock(exp_dir: Path):
    """One search per experiment folder at a time. An OS lock: it dies with the process, so a killed search
    never leaves a stale lock behind and --resume works after it."""
    exp_dir.mkdir(exist_ok=True)
    f = open(exp_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{exp_dir}: another search of this experiment is running ({who}); wait for it, stop it, "
                        f"or pick another --name") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock; the file stays, empty of meaning


def clear(exp_dir: Path) -> None:
    """Empty an old experiment's folder, keeping our lock file (removing it would let a second search in)."""
    for p in exp_dir.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)  # rmtree never follows links inside
        else:
            p.unlink()
