"""The search's Optuna study on disk (`<results>/<name>/optuna.journal`), which `tuner dashboard` serves.

With the Optuna searcher the journal is the searcher's own storage; for random, grid and PBT searches a
callback records each finished trial into it. Either way a trial's value is its best epoch's metric
(`best_<metric>`), its intermediate values the metric of every epoch, a trial the scheduler stopped
early is PRUNED, a failed one FAIL.
"""
from __future__ import annotations

from pathlib import Path

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from tuner.metrics import best_key
from tuner.rundir import RunDir


def storage(exp_dir: Path):
    import optuna

    # the absolute path travels inside the pickled searcher, so --resume reopens the same file
    path = str(RunDir(Path(exp_dir).resolve()).journal)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch, told each trial's best-epoch score, with per-epoch values and pruned/failed states.

    Ray's own reports the searched metric as the intermediate value and tells a trial the scheduler stopped
    (or one that failed after reporting) as COMPLETE with its last value.
    """

    def __init__(self, *args, epoch_metric: str, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch_metric, self._max_epochs = epoch_metric, max_epochs
        self._seen: dict[str, int] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Ray calls this only for results after which the trial goes on (not for the one that stops it)
        step = int(result.get("training_iteration", 0))
        self._seen[trial_id] = step
        value = result.get(self._epoch_metric)
        if (trial_id in self._ot_trials and value is not None and value == value and not self._multi
                and not self._told(trial_id)):
            self._ot_trials[trial_id].report(float(value), step)

    @property
    def _multi(self) -> bool:
        return isinstance(self.metric, (list, tuple))

    def _setup_study(self, mode):
        super()._setup_study(mode)
        # optuna-dashboard labels the values by these names ("val_accuracy"), not "Objective 0"
        name_values(self._ot_study, metric_names(self.metric))

    def _told(self, trial_id: str) -> bool:
        # after --resume of a killed driver the journal may already hold the end of a trial that the
        # searcher's older snapshot still counts as running; the journal refuses a second ending
        ot_trial = self._ot_trials[trial_id]
        return ot_trial.study._storage.get_trial(ot_trial._trial_id).state.is_finished()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if self._told(trial_id):
            self._completed_trials.add(trial_id)
            return
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("ray_trial_id", trial_id)  # the id in trials.csv and on the console
        if self._multi:
            # Optuna keeps no intermediate values and prunes nothing in a multi-objective study: a trial the
            # scheduler stopped is told its objectives at its best epoch like any other
            values = [(result or {}).get(m) for m in self.metric]
            if error or any(v is None or v != v for v in values):
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            else:
                self._ot_study.tell(ot_trial, [float(v) for v in values])
            self._completed_trials.add(trial_id)
            return
        value = (result or {}).get(self.metric)
        step = int((result or {}).get("training_iteration", 0))
        if step and step > self._seen.get(trial_id, 0):  # the result that stopped it: still an epoch's value
            epoch_value = result.get(self._epoch_metric)
            if epoch_value is not None and epoch_value == epoch_value:
                ot_trial.report(float(epoch_value), step)
        if error:
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        elif value is None or value != value:
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        elif stopped_early(result, self._seen.get(trial_id, 0), self._max_epochs):
            ot_trial.set_user_attr(self.metric, float(value))  # the pruned trial's best-epoch score
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, float(value))
        self._completed_trials.add(trial_id)


    def restore(self, checkpoint_path: str) -> None:
        # --resume: the journal may hold trials asked for after the searcher's last snapshot (a killed
        # driver); Ray does not know them and will never finish them, so they are marked failed
        import optuna

        super().restore(checkpoint_path)
        known = {t._trial_id for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t._trial_id not in known:
                self._ot_study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def name_values(study, names: list[str]) -> None:
    """study.set_metric_names, without its ExperimentalWarning on the console (stable since Optuna 3.2)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def metric_names(metric) -> list[str]:
    """The study's value names: the metrics as the user wrote them (the searcher is told best_<metric>, each
    trial's best epoch, which is what the value holds)."""
    keys = list(metric) if isinstance(metric, (list, tuple)) else [metric]
    return [k[len(best_key("")):] if k.startswith(best_key("")) else k for k in keys]


def stopped_early(result: dict | None, last_continued: int, max_epochs: int) -> bool:
    """Whether the scheduler stopped the trial: its last epoch came after the last one it was let go on
    from, and before max_epochs (a trial that stopped itself, by early_stopping, was let go on from its last)."""
    step = int((result or {}).get("training_iteration", 0))
    return bool(result) and last_continued < step < max_epochs


def open_journal(exp_dir: Path) -> str:
    """The journal's path, or a UserError saying why there is none."""
    from tuner.errors import UserError

    path = RunDir(exp_dir).journal
    if not path.is_file():
        raise UserError(f"{path}: no study recorded there; searches write it as they run (tuner search --space FILE)")
    return str(path)


class StudyRecorder(Callback):
    """Writes the trials of a search without the Optuna searcher into the journal, as each one ends."""

    def __init__(self, exp, exp_dir: Path):
        self.exp, self.exp_dir = exp, Path(exp_dir)
        self.epochs: dict[str, dict[int, float]] = {}
        self.stopped: set[str] = set()
        self._study = None

    def study(self):
        import optuna

        if self._study is None:
            self._study = optuna.create_study(storage=storage(self.exp_dir), study_name=self.exp.name,
                                              directions=["maximize" if m == "max" else "minimize"
                                                          for m in self.exp.modes],
                                              load_if_exists=True)
            name_values(self._study, list(self.exp.metrics))
        return self._study

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.exp.metrics[0])
        if value is not None and value == value and not self.exp.multi:
            self.epochs.setdefault(trial.trial_id, {})[int(result.get("training_iteration", 0))] = float(value)
        if result.get("done") and int(result.get("training_iteration", 0)) < self.exp.scheduler.max_epochs:
            self.stopped.add(trial.trial_id)  # Ray marks the result the scheduler stops a trial on as done

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, error=True)

    def _record(self, trial, error: bool) -> None:
        import optuna

        from tuner.search.domains import optuna_params

        last = trial.last_result or {}
        values = [last.get(best_key(m)) for m in self.exp.metrics]
        state = optuna.trial.TrialState.COMPLETE
        if error:
            state, values = optuna.trial.TrialState.FAIL, None
        elif any(v is None or v != v for v in values):
            state, values = optuna.trial.TrialState.PRUNED, None
        elif trial.trial_id in self.stopped and not self.exp.multi:
            state, values = optuna.trial.TrialState.PRUNED, None
        # the same parameter names and distributions as the Optuna searcher's (branches of a conditional space)
        params, dists = optuna_params(self.exp.searched, trial.config) or ({}, {})
        self.study().add_trial(optuna.trial.create_trial(
            state=state, values=values, params=params, distributions=dists,
            intermediate_values=self.epochs.get(trial.trial_id) or None,
            user_attrs={"ray_trial_id": trial.trial_id}))
