"""Every use of a Ray Tune or Optuna internal in tuner, in one module: what it is, why tuner needs it, and the
version it was checked against. tests/test_adapters.py checks each one (the attribute is there, with the
shape used here), so an upgrade that changes one fails a test rather than a user's search.

Checked against Ray 2.60.0 and Optuna 5.1.0.
"""
from __future__ import annotations

import copy
import csv
import fnmatch
import pickle
from pathlib import Path, PurePosixPath
from typing import Any

import optuna
import pyarrow.fs
from ray.air.constants import EXPR_PROGRESS_FILE
from ray.tune.logger import CSVLoggerCallback
from ray.tune.search import SearchGenerator
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from tuner.errors import UserError

RAY_CHECKED, OPTUNA_CHECKED = "2.60.0", "5.1.0"


# --------------------------------------------------------------------------- Tune's usage tags
def skip_callback_usage_tag() -> None:
    """Ray's tune.run tags its usage telemetry with the callback classes a search passes
    (`ray.air._internal.usage.tag_callbacks`, called as `air_usage.tag_callbacks(callbacks)` in
    ray/tune/tune.py), and to name them it imports Ray's MLflow, W&B, Comet and Aim integrations, which import
    mlflow and wandb where they are installed (tuner's tracking extra): 0.9-1.1 s of every search's time on
    the 2-core VM (py-spy), for a tag. tuner's callbacks are its own, so the tag is skipped."""
    from ray.air._internal import usage

    usage.tag_callbacks = _no_tag


def _no_tag(callbacks) -> bool:
    return False  # what tag_callbacks returns when it records nothing


# --------------------------------------------------------------------------- Ray's token on a cluster
def refused_for_token(exc: BaseException) -> bool:
    """Whether ray.init(address=...) failed because the cluster asked for Ray's token. `ray start --head`
    turns token authentication on (Ray 2.59 on), but a driver given an address sends the token only with
    RAY_AUTH_MODE=token; the GCS then answers UNAUTHENTICATED, and ray.init raises a plain ConnectionError
    ("Failed to connect to Ray cluster at ...") from a RuntimeError whose text holds the traceback of
    `ray.exceptions.AuthenticationError` (`Node._init_gcs_client`, ray/_private/node.py). So the chain's
    text is read: the error carries no other mark of the cause."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if "AuthenticationError" in str(exc) or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


# --------------------------------------------------------------------------- Ray's shutdown
def end_monitor_first() -> None:
    """ray.shutdown ends the processes of the local Ray it started one by one, the raylet and GCS first
    (`Node.kill_all_processes`, ray/_private/node.py: SIGTERM, up to a second's wait, then SIGKILL). The
    autoscaler's monitor answers SIGTERM by reporting its end to the GCS already gone (monitor.py,
    `_signal_handler`) and outlives the second: a second of every search's exit. It keeps nothing, so it is
    killed before the shutdown (`worker._global_node.all_processes`; a driver that joined a cluster has none)."""
    import subprocess

    from ray._private import ray_constants, worker

    node = worker._global_node
    monitors: list = node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node else []
    for info in monitors:
        info.process.kill()
        try:
            info.process.wait(timeout=1)  # reaped: kill_all_processes then sees it ended and goes on
        except subprocess.TimeoutExpired:
            pass


# --------------------------------------------------------------------------- keys Ray's loggers must not see
def take_from_result(result: dict, key: str):
    """Remove `key` from a trial's result before Ray's loggers write it; returns its value (None if absent).

    Ray's CSV logger (`CSVLoggerCallback.log_trial_result`) takes its columns from a trial's first result
    after a (re)start and, resuming a progress.csv, does not write the header again: a key only that result
    has (a restored trial's HISTORY) put one more field on every later row, and pandas then read the first
    column as the index. The search's callbacks come before Ray's loggers (`_create_default_callbacks`
    appends them) and every callback gets the same dict (`CallbackList.on_trial_result`), so the first of
    tuner's callbacks takes such keys out here."""
    return result.pop(key, None)


class HeaderKeepingCSVLogger(CSVLoggerCallback):
    """Ray's progress.csv logger, continuing a trial's file in the columns of the header it has.

    Ray's own takes its columns from a trial's first result after a (re)start and, continuing the file, does
    not write the header again (`CSVLoggerCallback.log_trial_result`: `_trial_csv`, `_trial_continue`), so
    after a --resume whose first result had other keys (a fused group's members come and go) every row sat
    under the wrong column. Given in the search's callbacks, it replaces Ray's (`_create_default_callbacks`
    adds one only when none is there)."""

    def log_trial_result(self, iteration: int, trial, result: dict):
        if trial not in self._trial_files:
            self._setup_trial(trial)
        if self._trial_csv.get(trial) is None and self._trial_continue.get(trial):
            with open(Path(trial.local_path, EXPR_PROGRESS_FILE), newline="") as f:
                header = next(csv.reader(f), None)
            if header:  # Ray writes only these columns of each result, and "" for those a result lacks
                self._trial_csv[trial] = csv.DictWriter(self._trial_files[trial], header)
        super().log_trial_result(iteration, trial, result)


# --------------------------------------------------------------------------- whole snapshot files
def whole_file_uploads() -> None:
    """Ray's syncer copies the driver's staging folder (experiment state, searcher state, the trials' result
    files) into a local results folder in place (`_FilesystemSyncer._sync_up_command` returns
    `_upload_to_fs_path`, which runs pyarrow's copy_files), so a SIGKILL during a copy left an empty
    experiment_state-*.json, which `Tuner.restore` took for none (`check_state_readable`). On a local file
    system each file is now written beside its place and renamed over it: a kill leaves the old file or the
    new one. Other file systems (S3, GCS) write an object whole already and keep Ray's upload."""
    from ray.train._internal import storage

    syncer = storage._FilesystemSyncer
    if getattr(syncer._sync_up_command, "_tuner_whole_files", False):
        return
    ray_command = syncer._sync_up_command

    def command(self, local_path: str, uri: str, exclude=None):
        upload, kwargs = ray_command(self, local_path, uri, exclude)
        if exclude or not isinstance(kwargs.get("fs"), pyarrow.fs.LocalFileSystem):
            return upload, kwargs
        return _upload_whole_files, {"local_path": kwargs["local_path"], "fs_path": kwargs["fs_path"]}

    command._tuner_whole_files = True  # type: ignore[attr-defined]
    syncer._sync_up_command = command  # type: ignore[method-assign]


def _upload_whole_files(local_path: str, fs_path: str) -> None:
    import os
    import shutil

    from tuner.atomic import writing

    if os.path.isfile(local_path):
        os.makedirs(os.path.dirname(fs_path) or ".", exist_ok=True)
        with writing(fs_path) as tmp:
            shutil.copyfile(local_path, tmp)
        return
    for root, _, files in os.walk(local_path):
        target = os.path.join(fs_path, os.path.relpath(root, local_path))
        os.makedirs(target, exist_ok=True)
        for name in files:
            with writing(os.path.join(target, name)) as tmp:
                shutil.copyfile(os.path.join(root, name), tmp)


# --------------------------------------------------------------------------- the restored Tuner
def restored_configs(tuner) -> tuple:
    """(TuneConfig, RunConfig) of a Tuner made by Tuner.restore, as unpickled from tuner.pkl: restore() takes
    neither, so --resume sets this run's callbacks, stopper, searcher and scheduler state on them before
    fit(). `Tuner._local_tuner._tune_config` / `._run_config` (Ray 2.60); (None, None) through ray://."""
    internal = getattr(tuner, "_local_tuner", None)
    return getattr(internal, "_tune_config", None), getattr(internal, "_run_config", None)


def experiment_state_pattern() -> str:
    """The name of Tune's experiment state file, as a glob: `TuneController.CKPT_FILE_TMPL` (Ray 2.60,
    `experiment_state-{session}.json`). tuner.rundir keeps the same glob (RAY_STATE) without importing Ray."""
    from ray.tune.execution.tune_controller import TuneController

    return TuneController.CKPT_FILE_TMPL.format("*")


def _experiment_states(ray_path: str) -> tuple[pyarrow.fs.FileSystem, list[str]]:
    """The file system of `ray_path` (a folder or a storage URI) and Tune's experiment states in it
    (`experiment_state_pattern`), newest first: named by session time, the first is the one Ray reads."""
    fs, path = (pyarrow.fs.FileSystem.from_uri(ray_path) if "://" in ray_path
                else (pyarrow.fs.LocalFileSystem(), ray_path))
    found = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return fs, sorted((f.path for f in found if fnmatch.fnmatch(PurePosixPath(f.path).name,
                                                                experiment_state_pattern())), reverse=True)


def experiment_state_saved(ray_path: str) -> bool:
    """Whether Tune has written its experiment state in `ray_path`. Without it `Tuner.restore(...).fit()`
    starts anew with num_samples=1: `TunerInternal._fit_resume` passes none."""
    return bool(_experiment_states(ray_path)[1])


def check_state_readable(ray_path: str, name: str) -> None:
    """Refuse to --resume from an experiment state a kill cut off. Ray copies it into the results folder in
    place (its syncer, after `TuneController.save_to_dir`), so a SIGKILL during the copy leaves it empty or
    truncated, and `Tuner.restore` then starts anew with num_samples=1: a resumed fused grid ran its first
    group again and never the rest (seen once in a suite under load). Ray reads the newest by name."""
    import json

    fs, states = _experiment_states(ray_path)
    if not states:
        return
    try:
        with fs.open_input_stream(states[0]) as f:
            json.loads(f.read())
    except (OSError, ValueError):
        raise UserError(f"--resume: {states[0]} is empty or cut off (the search was killed while Ray saved it), so "
                        f"there is nothing to resume from; --overwrite starts experiment {name!r} again") from None


def restore_deleted_checkpoints(ray_path: str) -> list[str]:
    """Put back the checkpoints Ray's newest experiment state names but deleted, before Tuner.restore.

    Ray 2.60 deletes a trial's checkpoint k when k+2 is registered (num_to_keep=2) and only then forces a
    snapshot; a driver SIGKILLed in between leaves a snapshot naming k, and the restore fails the trial
    ("Could not recover from checkpoint as it does not exist on storage anymore"): 1 of 14 kills timed
    just after a table write. Checkpoint k+1, kept and complete (Ray registers a checkpoint only once
    written), is copied to k's path, so the trial goes on from there; tuner's trials read their epoch from
    their own checkpoint. Read here: the state's `trial_data` (trial and run-metadata JSON) and the
    pickled `_CheckpointManager._latest_checkpoint_result` in it. Local folders only; anything unexpected
    leaves the folder as it is. Returns the paths put back."""
    import shutil

    if "://" in ray_path:
        return []
    restored: list[str] = []
    try:
        for path in snapshot_checkpoints(ray_path):
            if path.exists() or not path.parent.is_dir():
                continue
            newer = sorted(p for p in path.parent.glob("checkpoint_*") if p.is_dir() and p.name > path.name)
            if newer:
                shutil.copytree(newer[0], path)
                restored.append(str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return restored
    return restored


def snapshot_checkpoints(ray_path: str) -> list:
    """The checkpoint folder (a Path) each trial's latest checkpoint is in, as Ray's newest experiment state
    in the local folder `ray_path` names them (see restore_deleted_checkpoints)."""
    import json
    from pathlib import Path

    import cloudpickle

    states = sorted(Path(ray_path).glob(experiment_state_pattern()))  # named by session time: the last is Ray's
    out = []
    for _, metadata in json.loads(states[-1].read_text())["trial_data"] if states else []:
        manager = cloudpickle.loads(bytes.fromhex(json.loads(metadata)["checkpoint_manager"]["value"]))
        if manager._latest_checkpoint_result is not None:
            out.append(Path(manager._latest_checkpoint_result.checkpoint.path))
    return out


# --------------------------------------------------------------------------- new trials in the resumed folder
def in_folder(storage, storage_path: str, name: str):
    """A copy of a trial's StorageContext pointing at `storage_path/name`: what Ray 2.60's
    TuneController._restore_trials does to the trials it restores (`storage_fs_path`,
    `experiment_dir_name`). Ray does not do it for the trials a restored searcher creates: their context is
    the one pickled with the searcher's experiment spec, so a copied results folder's --resume put its new
    trials' checkpoints in the original folder."""
    new = copy.copy(storage)
    new.storage_fs_path = storage_path
    new.experiment_dir_name = name
    return new


class _InFolder:
    """A search algorithm whose new trials live in `home` = (storage path, experiment folder name), set by
    the driver on --resume, whatever folder the pickled state names. Kept across set_state (BasicVariant's
    restores its whole __dict__)."""

    home: tuple[str, str] | None = None

    def next_trial(self):
        trial = super().next_trial()
        if trial is not None and self.home is not None:
            trial.storage = in_folder(trial.storage, *self.home)  # no disk was touched yet (init_local_path)
        return trial

    def set_state(self, state) -> None:
        home = self.home
        super().set_state(state)  # type: ignore[misc]  # the Ray search algorithm this is mixed into has it
        self.home = home


class FolderSearchGenerator(_InFolder, SearchGenerator):
    """Ray's SearchGenerator (wrapping a Searcher), its new trials in `home` on --resume."""


class FolderVariantGenerator(_InFolder, BasicVariantGenerator):
    """Ray's BasicVariantGenerator (random, grid, PBT's population), its new trials in `home` on --resume."""


# --------------------------------------------------------------------------- Ray's OptunaSearch
class OptunaSearchAdapter(OptunaSearch):
    """Ray's OptunaSearch with its state behind names tuner owns, and a study that is never pickled.

    Ray 2.60 keeps the Optuna trial of each Ray trial in `_ot_trials`, the study in `_ot_study` (over the
    storage in `_storage`), the ids it has told in `_completed_trials`, and pickles all of it, the storage's
    absolute journal path and replay state included, into tuner.pkl and each searcher snapshot. Here the
    study is left out of both and reopened by `reopen(storage)` from the journal of the folder being
    resumed: a copied or moved folder resumes in itself, and a journal rebuilt from the tables is read as
    it is now, its trials found by their `ray_trial_id` attribute.
    """

    _REOPENED = ("_storage", "_ot_study", "_ot_trials")

    @property
    def study(self) -> optuna.Study | None:
        """The study; None from unpickling until `reopen`."""
        return self._ot_study

    def open_study(self) -> optuna.Study:
        """The study, for the calls made while the search runs (after the first suggest or `reopen`)."""
        if self._ot_study is None:
            raise RuntimeError("the Optuna study is not open: a search restored from a pickle reopens it first")
        return self._ot_study

    def optuna_trial(self, trial_id: str) -> optuna.Trial | None:
        return self._ot_trials.get(trial_id)

    def known(self) -> set[str]:
        return set(self._ot_trials)

    def is_completed(self, trial_id: str) -> bool:
        return trial_id in self._completed_trials

    def mark_completed(self, trial_id: str) -> None:
        self._completed_trials.add(trial_id)

    def reopen(self, storage) -> None:
        """The study in `storage` (created if it is not there), each trial that has a `ray_trial_id` user
        attribute the Optuna trial of that Ray trial."""
        self._storage = storage

        def direction(mode: str | None) -> str:
            return "minimize" if mode == "min" else "maximize"

        directions: dict[str, Any] = ({"directions": [direction(m) for m in self._mode]} if isinstance(self._mode, list)
                      else {"direction": direction(self._mode)})
        study = optuna.create_study(storage=storage, sampler=self._sampler, pruner=optuna.pruners.NopPruner(),
                                    study_name=self._study_name, load_if_exists=True, **directions)
        # (Ray's OptunaSearch starts _ot_study as None, so mypy takes None for its type)
        self._ot_study = study  # type: ignore[assignment]
        self._ot_trials = {t.user_attrs["ray_trial_id"]: optuna.trial.Trial(study, storage_id(t))
                           for t in study.get_trials(deepcopy=False)
                           if "ray_trial_id" in t.user_attrs and not t.user_attrs.get("warm_start")}

    def __getstate__(self) -> dict:  # tuner.pkl
        return {k: v for k, v in self.__dict__.items() if k not in self._REOPENED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({k: v for k, v in state.items() if k not in self._REOPENED})
        self._storage, self._ot_study, self._ot_trials = None, None, {}

    def save(self, checkpoint_path: str) -> None:
        # Ray's own file format (a pickled dict its restore() would read too), less the study, plus the Ray
        # trials this snapshot knows: on resume, a trial the journal has and they lack was asked for after it
        with open(checkpoint_path, "wb") as f:
            pickle.dump({**self.__getstate__(), "_snapshot_known": sorted(self._ot_trials)}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        # the study stays the one reopen() opened in this folder (an older snapshot also pickled Ray's own),
        # reopened with the snapshot's sampler: its random state goes on from the draws already made
        self.__dict__.update({k: v for k, v in saved.items() if k not in self._REOPENED})
        if self._storage is not None:
            self.reopen(self._storage)


# --------------------------------------------------------------------------- Optuna's storage
def storage_id(trial: optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (`FrozenTrial._trial_id`, Optuna 5.1): what `optuna.trial.Trial(study, id)`
    and the storage's setters take; Optuna gives no public way from a FrozenTrial to it."""
    return trial._trial_id


def fail_unfinished(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Mark a RUNNING (or WAITING) trial FAIL without a Trial object (`Study._storage`, Optuna 5.1)."""
    study._storage.set_trial_state_values(storage_id(trial), optuna.trial.TrialState.FAIL)


def drop_waiting(study: optuna.Study) -> None:
    """Fail every enqueued trial not yet asked (WAITING), so the next `ask` takes the next one enqueued."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        fail_unfinished(study, trial)


def contains(dist: optuna.distributions.BaseDistribution, value) -> bool:
    """Whether a distribution holds a value (`BaseDistribution._contains` over `to_internal_repr`, Optuna 5.1):
    a warm-start config outside today's range is left out rather than refused by create_trial."""
    return dist._contains(dist.to_internal_repr(value))


# --------------------------------------------------------------------------- ASHA's rungs
def asha_rungs(scheduler) -> list[tuple[float, dict]]:
    """ASHA's rungs, each (milestone, {trial id: recorded score}) over every bracket: Ray 2.60's
    `AsyncHyperBandScheduler._brackets[i]._rungs`, scores stored as `_metric_op * metric` (higher is better).
    TuneController.save_to_dir leaves the scheduler out of the experiment state, so a resumed ASHA starts
    with empty rungs and lets on trials an uninterrupted one would stop."""
    return [rung for bracket in scheduler._brackets for rung in bracket._rungs]


def restore_asha(scheduler, scores: dict[str, dict[int, float]]) -> int:
    """Record each trial's score at each rung it reached, as ASHA had before the interruption: its reported
    metric at the first epoch at or past the milestone (`scores`: trial id -> {epoch: metric as reported}).
    Returns how many scores were recorded."""
    op = scheduler._metric_op
    n = 0
    for milestone, recorded in asha_rungs(scheduler):
        for trial_id, by_epoch in scores.items():
            reached = [e for e in by_epoch if e >= milestone]
            if reached and trial_id not in recorded:
                recorded[trial_id] = op * by_epoch[min(reached)]
                n += 1
    return n
