"""The one owner of a results folder, `results/<name>/`: the name of every file in it, the readers of its
files (a corrupt file is one line naming it and what to do), the atomic writer, the running marker, and the
folder's safety (a real folder directly under results, one search at a time, replaced only when it is an
experiment). What a trials.csv row or best.yaml holds is tuner/tables.py's.

    results/<name>/
      space.yaml            the experiment as it ran (what --resume, the retrain and ensembles read back)
      split.npz             the train/val/test indices of the search
      run.json              the search's timings, and whether it was a --smoke run
      trials.csv            one row per trial
      epochs.csv            one row per trial and epoch
      best.yaml             the best trial: id, config, metrics
      pareto.csv            multi-objective searches: the trials no other beats on every objective
      plots/                the search plots
      best/                 the retrained best model: model.pt, metrics.json, history.csv, reports
      export/               the deployable bundle (tuner best --export)
      optuna.journal        the Optuna study (tuner dashboard)
      running.json          while the search runs: its process id and start time
      search.lock           held while a search of it runs
      ray/                  Ray's trial checkpoints and experiment state
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import yaml

from tuner import files
from tuner.atomic import write_text
from tuner.errors import UserError
from tuner.spaces import check_name

MAX_RESULT_BYTES = 16 << 20  # best.yaml, space.yaml, metrics.json are a few kB; more is not ours
LOCK_FILE = "search.lock"
# Ray Tune's experiment state in ray/: what `--resume` goes on from. Tune writes it at the first pass of its
# loop, before any trial starts, and tuner.pkl earlier, when the Tuner is made. A ray/ folder without it was
# stopped before Tune began: Tune's own restore then runs num_samples=1 (Ray 2.60 passes no num_samples on
# resume unless it finds this state), so such a search is started again, not resumed. The same glob as
# tuner.search.adapters.experiment_state_pattern, read from Ray (test_adapters checks they agree).
RAY_STATE = "experiment_state-*.json"


def _path(rel: str, doc: str) -> property:
    return property(lambda self: self.path / rel, doc=doc)


class RunDir:
    """The files of one experiment's results folder (nothing is created by asking for a path)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    space = _path("space.yaml", "the experiment as it ran")
    split = _path("split.npz", "the search's train/val/test indices")
    run_json = _path("run.json", "the search's timings, and whether it was a --smoke run")
    trials = _path("trials.csv", "one row per trial")
    epochs = _path("epochs.csv", "one row per trial and epoch")
    best_yaml = _path("best.yaml", "the best trial: id, config, metrics")
    pareto = _path("pareto.csv", "the Pareto front (several objectives)")
    plots = _path("plots", "the search plots")
    best = _path("best", "the retrained best model and its reports")
    model = _path("best/model.pt", "the retrained best model's bundle")
    metrics = _path("best/metrics.json", "its test metrics")
    history = _path("best/history.csv", "the retrain's epochs")
    confusion_csv = _path("best/confusion_matrix.csv", "the test confusion matrix")
    confusion_png = _path("best/confusion_matrix.png", "the test confusion matrix, drawn")
    classification_report = _path("best/classification_report.csv", "per-class precision, recall, F1")
    curves = _path("best/curves.png", "the retrain's learning curves")
    export = _path("export", "the deployable bundle (tuner best --export)")
    report = _path("report.html", "one self-contained page of it all, for a browser (tuner report)")
    journal = _path("optuna.journal", "the Optuna study")
    running = _path("running.json", "while the search runs: its process id and start time")
    lock = _path(LOCK_FILE, "held while a search of it runs")
    ray = _path("ray", "Ray's checkpoints and experiment state")
    ensemble = _path("ensemble.yaml", "a suite's ensemble folder only, instead of space.yaml: its members")

    @classmethod
    def files(cls) -> dict[str, str]:
        """Every path above, relative to the folder -> what it holds (docs/results.md lists these)."""
        probe = cls("")
        return {str(getattr(probe, k)): getattr(cls, k).__doc__ for k, v in vars(cls).items()
                if isinstance(v, property) and k != "name"}

    def is_experiment(self) -> bool:
        return self.space.is_file()

    # the readers: a corrupt file is a CorruptResult naming it
    def read_space(self) -> dict:
        """space.yaml as a mapping (the experiment as it ran)."""
        return read_result(self.space)

    def experiment(self):
        """space.yaml parsed and validated: the one place a finished experiment's space is read back."""
        from tuner.spaces import parse_experiment

        return parse_experiment(self.read_space(), self.space, ran=True)

    def read_best(self) -> dict:
        """best.yaml: the best trial's `config` and validation `metrics`, both mappings."""
        best = read_result(self.best_yaml, ("config", "metrics"))
        for key in ("config", "metrics"):
            if not isinstance(best[key], dict):
                raise _corrupt(self.best_yaml, f"{key} is not a mapping")
        return best

    def read_trials(self):
        return read_trials(self.trials)

    def read_metrics(self) -> dict:
        return read_result(self.metrics)

    def ray_saved(self) -> bool:
        """Whether Ray's folder holds an experiment state (`RAY_STATE`): something `--resume` goes on from."""
        return any(self.ray.glob(RAY_STATE))

    def was_smoke(self) -> bool:
        """Whether the search here was a --smoke run (run.json says so): one that may be replaced unasked."""
        try:
            return self.run_json.is_file() and read_result(self.run_json).get("smoke") is True
        except CorruptResult:
            return False

    # the writers: a reader never sees half a file
    def write_best(self, entry: dict) -> None:
        replace(self.best_yaml, yaml.safe_dump(entry, sort_keys=False))

    def write_json(self, path: Path, data: dict) -> None:
        replace(path, json.dumps(data, indent=2))

    # is a search writing this folder now?
    def mark_running(self) -> None:
        replace(self.running, json.dumps({"pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
                                          "started": time.strftime("%Y-%m-%d %H:%M:%S")}))

    def clear_running(self) -> None:
        self.running.unlink(missing_ok=True)

    def running_search(self) -> dict | None:
        """The marker of the search writing this folder now, or None; a marker whose process is gone means none."""
        try:
            info = json.loads(self.running.read_text())
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        ticks = _start_ticks(int(info["pid"]))
        if info.get("start_ticks") and ticks and ticks != info["start_ticks"]:
            return None
        return info

    def running_note(self) -> str:
        """'' or one line for `tuner list` / `tuner best` saying the search is still running."""
        info = self.running_search()
        return f"search running (pid {info['pid']}, started {info['started']}): results so far" if info else ""

    def __fspath__(self) -> str:
        return str(self.path)


def _start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot): a pid reused by another process has another."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def replace(path: Path, text: str) -> None:
    """Write `text` as `path`, whole or not at all (tuner.atomic): a reader never sees half a file."""
    write_text(path, text)


# --------------------------------------------------------------------------- reading results
class CorruptResult(UserError):
    """A results file that cannot be read. `list` and `compare` skip its folder with a warning; `best` and
    the retrain stop on it (exit 2), naming the file and what to do."""


# what to do about each file, said once
_REDO = {
    "space.yaml": "it is the space the search ran; restore it from the space file, or remove the experiment folder",
    "best.yaml": "run the search again (`tuner search --resume` rewrites it), or remove the experiment folder",
    "trials.csv": "run the search again (`tuner search --resume` rewrites it), or remove the experiment folder",
    "metrics.json": "remove the best/ folder and run `tuner best --export` to retrain and test again",
    "ensemble.yaml": "run the suite again to rebuild the ensemble, or remove its folder",
}


def _corrupt(path: Path, why) -> CorruptResult:
    why = " ".join(str(why).split())[:200]  # one line, whatever the parser said
    return CorruptResult(f"{path}: cannot be read ({why}); {_REDO.get(Path(path).name, 'remove or restore it')}")


def read_regular(path: Path, limit: int | None = MAX_RESULT_BYTES) -> bytes:
    """The bytes of a regular file (at most `limit`), or a CorruptResult; a FIFO or a device in a file's
    place is refused without reading from it (`tuner.files.read_regular`)."""
    try:
        return files.read_regular(path, limit)
    except OSError as exc:
        raise _corrupt(Path(path), exc.strerror if exc.strerror and not isinstance(exc, files.NotRegular)
                       else exc) from None


def read_result(path: Path, need: tuple[str, ...] = ()) -> dict:
    """A results YAML or JSON file that must be a mapping holding the keys in `need`, or a CorruptResult."""
    from tuner.spaces import safe_yaml

    path = Path(path)
    try:
        text = read_regular(path).decode("utf-8")
        # tuner wrote it (yaml.safe_dump): read it back as written, YAML 1.1, where 508172e8 is a string
        data = json.loads(text) if path.suffix == ".json" else safe_yaml(text, yaml.SafeLoader)
    except CorruptResult:
        raise
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, UserError) as exc:
        raise _corrupt(path, exc) from None
    if not isinstance(data, dict):
        raise _corrupt(path, f"expected a mapping, found {type(data).__name__}")
    missing = [k for k in need if k not in data]
    if missing:
        raise _corrupt(path, f"no {', '.join(missing)}")
    return data


def read_best(exp_dir: Path) -> dict:
    """best.yaml of `exp_dir`: see RunDir.read_best."""
    return RunDir(exp_dir).read_best()


def read_trials(path: Path):
    """trials.csv with its trial_id column, or a CorruptResult."""
    import pandas as pd

    path = Path(path)
    data = read_regular(path, limit=None)  # a table grows with the trials: no size limit
    try:
        df = pd.read_csv(io.BytesIO(data), dtype={"trial_id": str})
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise _corrupt(path, exc) from None
    if "trial_id" not in df:
        raise _corrupt(path, "no trial_id column")
    return df


def warn(msg: str) -> None:
    """One `warning:` line on stderr: something was skipped, the command goes on."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the folder's safety
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


# what a search leaves that its user would not want thrown away unasked: its tables, its retrained and
# exported models, and Ray's state (what --resume continues)
KEPT = ("trials.csv", "best.yaml", "best", "export", "ray")


def check_replaceable(exp_dir: Path, overwrite: bool = False) -> None:
    """A new search replaces an old experiment only when told to (--overwrite) or when the old one was a
    --smoke run, and never a folder that only happens to have the same name."""
    run = RunDir(exp_dir)
    check_unlocked(exp_dir)
    if exp_dir.is_dir() and not run.is_experiment() and set(os.listdir(exp_dir)) - {LOCK_FILE}:
        raise UserError(f"{exp_dir}: exists but is not a tuner experiment (no space.yaml); pick another name "
                        f"or remove it by hand")
    if overwrite or not run.is_experiment() or run.was_smoke():
        return
    there = [f"{name}/" if (exp_dir / name).is_dir() else name for name in KEPT if (exp_dir / name).exists()
             and (name != "ray" or run.ray_saved())]
    if not there:  # a search that stopped before it wrote anything worth keeping
        return
    try:
        there[0] = f"{len(run.read_trials())} trials in trials.csv" if there[0] == "trials.csv" else there[0]
    except CorruptResult:
        pass
    raise UserError(f"{exp_dir}: holds a search of {run.name} ({', '.join(there)}); --resume continues it, "
                    f"--overwrite replaces it and its export, --name OTHER searches beside it")


@contextlib.contextmanager
def search_lock(exp_dir: Path):
    """One search per experiment folder at a time. An OS lock: it dies with the process, so a killed search
    never leaves a stale lock behind and --resume works after it."""
    exp_dir.mkdir(exist_ok=True)
    with os_lock(exp_dir / LOCK_FILE, _busy(exp_dir)):
        yield


def check_unlocked(exp_dir: Path) -> None:
    """The error search_lock would give, before anything else is said about the folder: a running search is
    the first thing to know about it."""
    if (exp_dir / LOCK_FILE).is_file():
        with os_lock(exp_dir / LOCK_FILE, _busy(exp_dir)):
            pass


def _busy(exp_dir: Path) -> str:
    return (f"{exp_dir}: another search of this experiment is running ({{who}}); wait for it, stop it, or pick "
            f"another --name")


@contextlib.contextmanager
def os_lock(path: Path, busy: str):
    """An exclusive flock on `path` for the block, or UserError(busy) naming the holder ({who} in `busy`)."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise UserError(busy.format(who=who)) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock; the file stays, empty of meaning


def remove_if_empty(exp_dir: Path) -> None:
    """Remove a folder a search created and left holding nothing but its lock file (a search refused before
    it wrote anything, e.g. for missing data): no stub that `tuner list` and `tuner best` would show."""
    try:
        if set(os.listdir(exp_dir)) <= {LOCK_FILE}:
            (exp_dir / LOCK_FILE).unlink(missing_ok=True)
            exp_dir.rmdir()
    except OSError:
        pass  # not ours to fight over: another search may have just started in it


def clear(exp_dir: Path) -> None:
    """Empty an old experiment's folder, keeping our lock file (removing it would let a second search in)."""
    for p in exp_dir.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)  # rmtree never follows links inside
        else:
            p.unlink()


def results_folder(results: Path) -> Path | None:
    """The results folder to read, None if there is none; a file given as --results is a user error."""
    if results.exists() and not results.is_dir():
        raise UserError(f"--results {results}: is a file, not a folder; give the folder `tuner search` wrote")
    return results if results.is_dir() else None


def find_experiment(results: Path, name: str | None) -> Path:
    """The experiment folder `--experiment NAME` (a name under --results, or a path) names; without a name the
    one whose best.yaml changed last. A UserError naming the flag and the fix when there is none."""
    if name:
        p = Path(name)
        d = p if RunDir(p).is_experiment() else results / name
        if not RunDir(d).is_experiment():
            raise UserError(f"--experiment {name}: no experiment there (looked in {d}); see `tuner list`")
        return d
    runs = [RunDir(p).best_yaml for p in results.iterdir()] if results_folder(results) else []
    runs = [p for p in runs if p.is_file()]
    if not runs:
        raise UserError(f"--results {results}: no finished experiment; run `tuner search --space FILE` first")
    return max(runs, key=lambda p: p.stat().st_mtime).parent
