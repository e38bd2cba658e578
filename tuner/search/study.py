"""The search's Optuna study on disk (`<results>/<name>/optuna.journal`), which `tuner dashboard` serves.

With the Optuna searcher the journal is the searcher's own storage; for random, grid and PBT searches a
callback records each finished trial into it. Either way it holds what the tables hold, by one rule
(`Rule.outcome`): a trial's value is its best epoch's metric (`best_<metric>`), its intermediate values the
metric of every epoch, a trial that ended before max_epochs (stopped by the scheduler or the time budget,
not by its own early_stopping) is PRUNED, a failed one FAIL.

Faults can make the two drift (a driver SIGKILLed after the journal heard of a trial's end but before Ray's
snapshot did; a damaged file), so the tables are the reference: `repair` rebuilds a journal that cannot be
read from trials.csv and epochs.csv before --resume or the dashboard open it, and `reconcile` makes it equal
to them at the end of every run.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd
from ray.tune import Callback

from tuner.errors import UserError
from tuner.metrics import best_key, constraint_values, epoch_of
from tuner.rundir import RunDir
from tuner.search.adapters import OptunaSearchAdapter, fail_unfinished
from tuner.search.domains import optuna_params
from tuner.tables import EPOCH_COLUMNS, read_epochs, row_config

if TYPE_CHECKING:
    import optuna


def storage(exp_dir: Path, path: Path | None = None):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = path or RunDir(Path(exp_dir).resolve()).journal
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _directions(metrics, modes) -> list[Any]:  # Optuna's annotation: literals, which a list comprehension is not
    return ["maximize" if m == "max" else "minimize" for m in modes]


def constraint_attrs(values: list[float], constraints: dict[str, dict]) -> dict[str, float]:
    """`metrics.constraint_values` under Optuna 5's names: one `constraints:<metric>.<max|min>` system attr
    each, which every constrained sampler reads (Trial.set_constraint; `constraints_func` is deprecated)."""
    keys = [f"{name}.{side}" for name, bound in constraints.items() for side in ("max", "min") if side in bound]
    return {f"constraints:{k}": float(v) for k, v in zip(keys, values)}



# --------------------------------------------------------------------------- warm starts from a folder
def folder_trials(exp) -> list[tuple]:
    """An earlier experiment's finished trials, as (params, distributions, values, constraints) under this
    space; trials whose config this space cannot express are left out."""
    ws = exp.search.warm_start
    if not isinstance(ws, str):
        return []
    from tuner.rundir import read_trials

    trials = read_trials(Path(ws) / "trials.csv")  # a regular file, within limits (tuner.files)
    trials = trials[trials.get("status", "TERMINATED") != "ERROR"] if "status" in trials else trials
    out = []
    for _, row in trials.iterrows():
        if any(m not in row or pd.isna(row[m]) for m in exp.metrics):
            continue
        fit = optuna_params(exp.searched, row_config(exp, row))
        if fit is None or not fit[0]:
            continue
        values = [float(row[m]) for m in exp.metrics]
        cons = constraint_values(row.to_dict(), exp.constraints) if exp.constraints else None
        out.append((fit[0], fit[1], values, cons))
    return out


def seed_trials(exp) -> list:
    """`folder_trials` as the study's finished trials, marked `warm_start` (not trials of this search)."""
    import optuna

    return [optuna.trial.create_trial(params=params, distributions=dists, values=values,
                                      user_attrs={"warm_start": True},
                                      system_attrs=constraint_attrs(cons, exp.constraints) if cons is not None else {})
            for params, dists, values, cons in folder_trials(exp)]


# --------------------------------------------------------------------------- one rule for every writer
@dataclass(frozen=True)
class Rule:
    """How a finished trial reads in the study, from what a trials.csv row also holds."""

    metrics: tuple[str, ...]
    max_epochs: int
    iterative: bool

    @classmethod
    def of(cls, exp) -> "Rule":
        from tuner.families import get_family

        return cls(tuple(exp.metrics), exp.scheduler.max_epochs, get_family(exp.family).iterative)

    def outcome(self, *, error: bool, values: list, epochs: int, best_epoch, config: dict) -> tuple:
        """(TrialState, values or None). Several objectives: nothing is pruned (Optuna prunes none)."""
        import optuna

        state = optuna.trial.TrialState
        values = [math.nan if v is None else float(v) for v in values]
        if error:
            return state.FAIL, None
        if len(values) > 1:
            return (state.FAIL, None) if any(v != v for v in values) else (state.COMPLETE, values)
        if values[0] != values[0]:
            return state.PRUNED, None
        return (state.PRUNED if self.stopped(epochs, best_epoch, config) else state.COMPLETE), values

    def stopped(self, epochs: int, best_epoch, config: dict) -> bool:
        """Ended before max_epochs, and not by its own early_stopping (patience used up after its best epoch)."""
        if not self.iterative or not 0 < epochs < self.max_epochs:
            return False
        patience = int(config.get("early_stopping") or 0)
        return not (patience and best_epoch == best_epoch and best_epoch and epochs - int(best_epoch) >= patience)


def table_trial(exp, rule: Rule, row, epochs: pd.DataFrame | None):
    """The study's trial for a trials.csv row (a Series or trial_row's dict) and its epochs."""
    import optuna

    config = row_config(exp, row)
    state, values = rule.outcome(error=row.get("status") == "ERROR", values=[row.get(m) for m in exp.metrics],
                                 epochs=int(row.get("epochs") or 0), best_epoch=row.get("best_epoch"), config=config)
    metric = exp.metrics[0]
    steps = {}
    if epochs is not None and metric in epochs and not exp.multi:
        steps = {int(e): float(v) for e, v in zip(epochs["epoch"], epochs[metric]) if v == v}
    attrs = {"ray_trial_id": str(row["trial_id"])}
    if state == optuna.trial.TrialState.PRUNED and values:
        attrs[best_key(metric)] = values[0]  # the pruned trial's best-epoch score
    if state != optuna.trial.TrialState.COMPLETE:
        # Optuna's tell() gives a pruned trial its last intermediate value, and a failed one none
        last = steps[max(steps)] if steps and state == optuna.trial.TrialState.PRUNED else None
        values = None if last is None else [last]
    system = {}
    if exp.constraints and state == optuna.trial.TrialState.COMPLETE:
        system = constraint_attrs(constraint_values(dict(row), exp.constraints), exp.constraints)
    params, dists = optuna_params(exp.searched, config) or ({}, {})
    return optuna.trial.create_trial(state=state, values=values, params=params, distributions=dists,
                                     intermediate_values=steps or None, user_attrs=attrs, system_attrs=system)


# --------------------------------------------------------------------------- the journal against the tables
def expected(exp, exp_dir: Path) -> list:
    """The study's trials as trials.csv and epochs.csv say (no table yet: none)."""
    run = RunDir(exp_dir)
    if not run.trials.is_file():
        return []
    trials, epochs, rule = run.read_trials(), read_epochs(run), Rule.of(exp)
    by_trial = dict(iter(epochs.groupby(epochs["trial_id"].astype(str))))
    return [table_trial(exp, rule, row, by_trial.get(str(row["trial_id"]))) for _, row in trials.iterrows()]


def _key(exp, t) -> tuple:
    """What must agree between the journal and the tables for one trial (floats to 10 digits)."""
    r = lambda v: None if v is None else float(f"{v:.10g}")  # noqa: E731
    steps = {k: r(v) for k, v in t.intermediate_values.items()} if exp.metrics[0] in EPOCH_COLUMNS else {}
    params = {k: r(v) if isinstance(v, float) else v for k, v in t.params.items()}
    values = [r(v) for v in t.values] if t.state.name == "COMPLETE" and t.values else None
    return t.state.name, values, r(t.user_attrs.get(best_key(exp.metrics[0]))), steps, params


def differences(exp, exp_dir: Path) -> list[str]:
    """How the journal differs from the tables, one entry a trial ([] when they agree); the warm-start trials
    seeded from an earlier folder are the journal's own and not compared."""
    want = {t.user_attrs["ray_trial_id"]: _key(exp, t) for t in expected(exp, exp_dir)}
    have, out = {}, []
    for t in load(exp, exp_dir).get_trials(deepcopy=False):
        rid = t.user_attrs.get("ray_trial_id")
        if t.user_attrs.get("warm_start"):
            continue
        if rid is None or rid in have:
            out.append(f"{rid or f'#{t.number}'}: {'again' if rid else 'no ray_trial_id'} ({t.state.name})")
            continue
        have[rid] = _key(exp, t)
    out += [f"{rid}: not in the journal" for rid in want.keys() - have.keys()]
    out += [f"{rid}: not in trials.csv ({have[rid][0]})" for rid in have.keys() - want.keys()]
    out += [f"{rid}: {have[rid]} in the journal, {want[rid]} in the tables" for rid in want.keys() & have.keys()
            if have[rid] != want[rid]]
    return sorted(out)


def load(exp, exp_dir: Path, strict: bool = True):
    """The study in the journal; any failure to read it (a damaged file) raises. `strict`: every record must
    be whole. Optuna skips a broken last line as one still being written, and the next record appended after
    it would then make the file unreadable; not strict for a journal a search is writing."""
    import json

    import optuna

    path = RunDir(exp_dir).journal
    if not path.is_file():
        raise FileNotFoundError(str(path))
    data = path.read_bytes() if strict else b""
    if data and not data.endswith(b"\n"):
        raise ValueError("its last record is cut off")
    for line in data.splitlines():
        json.loads(line)  # UnicodeDecodeError, JSONDecodeError
    return optuna.load_study(study_name=exp.name, storage=storage(exp_dir))


def rebuild(exp, exp_dir: Path, seeds: list | None = None) -> int:
    """Write the journal afresh from the tables (plus `seeds`, the warm-start trials), whole or not at all.
    Returns the number of trials in it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in Journal ..." is not news
    run = RunDir(exp_dir)
    tmp = run.journal.with_name(f".{run.journal.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        study = optuna.create_study(storage=storage(exp_dir, tmp), study_name=exp.name,
                                    directions=_directions(exp.metrics, exp.modes))
        name_values(study, list(exp.metrics))
        trials = list(seeds if seeds is not None else _seeds(exp, exp_dir)) + expected(exp, exp_dir)
        study.add_trials(trials)
        os.replace(tmp, run.journal)
    finally:
        tmp.unlink(missing_ok=True)
    return len(trials)


def _seeds(exp, exp_dir: Path) -> list:
    """The warm-start trials: the journal's own when it can be read, else drawn again from the folder."""
    try:
        return [t for t in load(exp, exp_dir).get_trials() if t.user_attrs.get("warm_start")]
    except Exception:  # noqa: BLE001 - unreadable: the warm-start folder still has them
        return seed_trials(exp)


def repair(exp, exp_dir: Path, say: Callable[[str], None]) -> None:
    """Before --resume or the dashboard opens it: a journal that cannot be read is rebuilt from the tables
    (a missing one is simply made), a folder in its place refused in one line."""
    path = RunDir(exp_dir).journal
    if path.is_dir() or path.is_symlink():
        raise UserError(f"{path}: is a {'link' if path.is_symlink() else 'folder'}, not the study's journal; "
                        f"remove it by hand, and tuner rebuilds the journal from trials.csv")
    try:
        load(exp, exp_dir)
        return
    except FileNotFoundError:
        why = None
    except Exception as exc:  # noqa: BLE001 - bytes appended, a torn line, a record missing: all unreadable
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:120]
    n = rebuild(exp, exp_dir)
    if why is not None:
        say(f"warning: {path} could not be read ({why}); rebuilt from trials.csv and epochs.csv ({n} trials)")


def reconcile(exp, exp_dir: Path, say: Callable[[str], None]) -> None:
    """At the end of a run: the journal made equal to the tables if they differ (after a SIGKILL and
    --resume, a trial the journal heard end that Ray ran again, or one asked for that Ray never ran)."""
    try:
        diffs = differences(exp, exp_dir)
    except Exception as exc:  # noqa: BLE001 - unreadable: rebuilt like any other difference
        diffs = [f"unreadable ({type(exc).__name__})"]
    if diffs:
        n = rebuild(exp, exp_dir)
        # trials the time budget stopped were never told to the study: they differ without any interruption
        why = "the time budget or an interruption" if exp.search.time_budget else "an interruption"
        differed = f"{len(diffs)} trial{'s' * (len(diffs) != 1)} differed"
        say(f"optuna.journal: made equal to trials.csv ({differed} after {why}; {n} now)")


def open_journal(exp_dir: Path) -> str:
    """The journal's path for `tuner dashboard`: rebuilt from the tables when damaged (unless a search is
    writing it), or a UserError saying why there is none."""
    from tuner.rundir import warn

    run = RunDir(exp_dir)
    missing = not run.journal.exists() and not run.journal.is_symlink()
    if missing and run.running_search():
        raise UserError(f"{run.journal}: not there yet: the search that is starting writes it as Ray starts its "
                        f"trials; run tuner dashboard again in a few seconds")
    if missing and not run.trials.is_file():
        raise UserError(f"{run.journal}: no study recorded there; searches write it as they run "
                        f"(tuner search --space FILE)")
    exp = run.experiment()
    if missing:  # deleted after the search: the tables hold every trial, as --resume rebuilds it
        warn(f"{run.journal} was missing; rebuilt from trials.csv and epochs.csv ({rebuild(exp, exp_dir)} trials)")
    elif run.running_search():
        try:
            load(exp, exp_dir, strict=False)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{run.journal}: cannot be read ({type(exc).__name__}) while its search runs; "
                            f"the search rebuilds it from trials.csv when it ends") from None
    else:
        repair(exp, exp_dir, lambda line: warn(line.removeprefix("warning: ")))
    return str(run.journal)


# --------------------------------------------------------------------------- the Optuna searcher
class StudySearch(OptunaSearchAdapter):
    """Ray's OptunaSearch, told each trial's best-epoch score, its per-epoch values and its state by `Rule`,
    each trial's constraint values (`Trial.set_constraint`, which Ray's OptunaSearch never calls), its study
    reopened in the folder being resumed.

    Ray's own reports the searched metric as the intermediate value and tells a trial the scheduler stopped
    (or one that failed after reporting) as COMPLETE with its last value.
    """

    def __init__(self, *args, rule: Rule, constants: dict, constraints: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._rule, self._constants, self._constraints = rule, dict(constants), constraints or {}
        self._configs: dict[str, dict] = {}
        self._steps: dict[str, set[int]] = {}

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self.optuna_trial(trial_id)
        if config is not None and ot_trial is not None and trial_id not in self._configs:
            # named from the first ask: on --resume the journal's trials are found by it (reopen)
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            self._configs[trial_id] = {**self._constants, **config}
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Ray calls this only for results after which the trial goes on (not for the one that stops it)
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        ot_trial = self.optuna_trial(trial_id)
        value = result.get(self._rule.metrics[0])
        step = epoch_of(result)
        if (ot_trial is None or len(self._rule.metrics) > 1 or value is None or value != value or not step
                or step in self._steps.setdefault(trial_id, set()) or self._told(ot_trial)):
            return  # a step reported before (a trial resumed from an earlier checkpoint) keeps its first value
        ot_trial.report(float(value), step)
        self._steps[trial_id].add(step)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        # optuna-dashboard labels the values by these names ("val_accuracy"), not "Objective 0"
        name_values(self._ot_study, metric_names(self.metric))

    def _told(self, ot_trial: optuna.Trial) -> bool:
        # after --resume of a killed driver the journal may already hold the end of a trial that Ray's older
        # snapshot still counts as running; the journal refuses a second ending (reconcile fixes the values)
        return self.open_study().get_trials(deepcopy=False)[ot_trial.number].state.is_finished()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self.optuna_trial(trial_id)
        if self.is_completed(trial_id) or ot_trial is None or self._told(ot_trial):
            self.mark_completed(trial_id)
            return
        result = result or {}
        self._report(trial_id, result)  # the result that stopped it is still an epoch's value
        if self._constraints and result:
            for key, v in constraint_attrs(constraint_values(result, self._constraints), self._constraints).items():
                ot_trial.set_constraint(key.split(":", 1)[1], v)
        config = self._configs.get(trial_id, self._constants)
        state, values = self._rule.outcome(
            error=error, values=[result.get(best_key(m)) for m in self._rule.metrics],
            epochs=epoch_of(result), best_epoch=result.get("best_epoch"),
            config=config)
        if state.name == "PRUNED" and values:
            ot_trial.set_user_attr(best_key(self._rule.metrics[0]), values[0])
        self.open_study().tell(ot_trial, values if state.name == "COMPLETE" else None, state=state)
        self.mark_completed(trial_id)

    def reopen(self, storage) -> None:
        super().reopen(storage)
        self._sync_steps()

    def _sync_steps(self) -> None:
        self._steps = {rid: set(t.intermediate_values) for t in self.open_study().get_trials(deepcopy=False)
                       if (rid := t.user_attrs.get("ray_trial_id"))}

    def restore(self, checkpoint_path: str) -> None:
        # --resume: the journal may hold trials asked for after the searcher's last snapshot (a killed
        # driver); Ray does not know them and will never run them, so they are marked failed (and dropped
        # when the run ends: reconcile)
        import optuna

        super().restore(checkpoint_path)
        known = set(self.__dict__.pop("_snapshot_known", self.known()))
        for t in self.open_study().get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("ray_trial_id") not in known:
                fail_unfinished(self.open_study(), t)
        self._sync_steps()  # the snapshot's record is older than the journal's


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
    step = epoch_of(result)
    return bool(result) and last_continued < step < max_epochs


# --------------------------------------------------------------------------- the recorder
class StudyRecorder(Callback):
    """Writes the trials of a search without the Optuna searcher into the journal, as each one ends: each
    from its row in the live tables (`live`, the LiveResults callback, which Ray calls first)."""

    def __init__(self, exp, exp_dir: Path, live):
        self.exp, self.exp_dir, self.live = exp, Path(exp_dir), live
        self.rule = Rule.of(exp)
        self._study = None
        self._recorded: set[str] = set()

    def study(self):
        import optuna

        if self._study is None:
            self._study = optuna.create_study(storage=storage(self.exp_dir), study_name=self.exp.name,
                                              directions=_directions(self.exp.metrics, self.exp.modes),
                                              load_if_exists=True)
            name_values(self._study, list(self.exp.metrics))
            # a --resume: what the first run recorded is there already
            self._recorded = {t.user_attrs.get("ray_trial_id") for t in self._study.get_trials(deepcopy=False)}
        return self._study

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial)

    def _record(self, trial) -> None:
        study = self.study()
        if trial.trial_id in self._recorded or trial.trial_id not in self.live.done:
            return
        row, epochs = self.live.done[trial.trial_id]
        study.add_trial(table_trial(self.exp, self.rule, row, epochs))
        self._recorded.add(trial.trial_id)
