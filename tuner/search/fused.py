"""A fused search (`search.fuse: N`), the driver's side: configurations asked of the study as that many trials,
handed out N at a time to one Ray trial each (`fused_trial.run_group`), and turned back into one trial per
configuration (a *member*, id `<group>_m<k>`) for everything a user sees.

- `GroupSearch`: the Ray searcher. It asks the Optuna study (the journal: `searchers.study_search`) for each
  member under its own id, so the study holds members, never groups, and tells it each member's end by the
  same rule as a plain trial's (`study.StudySearch`). A grid is the study's enqueued points.
- `MemberEvents`: the callback that replays each group result as member events to the live tables
  (`live.LiveResults`) and the console (`console.Console`), so trials.csv, epochs.csv and best.yaml hold members.
- `RungsActor`: one `tuner.fused.rungs.Rungs` (ASHA's rule) every member of every group reports to; the
  Ray scheduler is FIFO, since it would judge whole groups.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import ray
from ray.tune import Callback
from ray.tune.search import Searcher

from tuner.fused.rungs import Rungs
from tuner.metrics import HISTORY, best_key
from tuner.search.adapters import drop_waiting, take_from_result
from tuner.search.fused_trial import MEMBERS
from tuner.spaces.rules import planned_configs


# --------------------------------------------------------------------------- the searcher
def member_points(exp) -> list[dict]:
    """A grid's configurations (num_samples passes) as Optuna params, asked first; [] for other searches."""
    from tuner.search.domains import optuna_params
    from tuner.spaces import grid_configs

    if exp.search.algorithm != "grid":
        return []
    grid = grid_configs(exp.searched, exp.search.grid_points) * max(exp.num_samples, 1)
    points = []
    for cfg in grid:
        fitted = optuna_params(exp.searched, cfg)
        assert fitted is not None, cfg  # drawn from this very space
        points.append(fitted[0])
    return points


class GroupSearch(Searcher):
    """Each Ray trial a group: up to `size` configurations asked of `searcher` (a StudySearch) as members
    `<trial_id>_m<k>`; each member told to it as it ends."""

    def __init__(self, searcher, size: int, total: int | None, constants: dict, points: Sequence[dict] = ()):
        super().__init__()
        self.searcher = searcher  # named so: the driver's --resume walks `.searcher` down to the study
        self.size, self.total, self.constants = size, total, dict(constants)
        # a grid's points (Optuna params), each put in the study's queue just before it is asked: Ray's
        # OptunaSearch queues its points_to_evaluate again when a search is restored, and runs some twice
        self.points = list(points)
        self.asked = 0
        self.groups: dict[str, list[str]] = {}  # the members of each group still running
        self.told: set[str] = set()
        self.last: dict[str, dict] = {}  # each running member's last result

    # Ray's Searcher.suggest says dict | None, yet its own searchers return Searcher.FINISHED (a str)
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        n = self.size if self.total is None else min(self.size, self.total - self.asked)
        if n <= 0:
            return Searcher.FINISHED
        members: list[dict] = []
        if self.asked < len(self.points):
            # each point is enqueued and asked at once, so a point waiting now is a killed run's (--resume):
            # asked first, it put one configuration twice in a group and left another out
            drop_waiting(self.searcher.study)
        for k in range(n):
            key = f"{trial_id}_m{k}"
            if self.asked + len(members) < len(self.points):
                self.searcher.study.enqueue_trial(self.points[self.asked + len(members)])
            config = self.searcher.suggest(key)
            if config is None or config == Searcher.FINISHED:
                break
            members.append({"key": key, "config": {**self.constants, **config}})
        if not members:
            return Searcher.FINISHED
        self.asked += len(members)
        self.groups[trial_id] = [m["key"] for m in members]
        return {MEMBERS: members}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        for key, metrics in members_of(result).items():
            if key in self.told:
                continue
            if "epoch" in metrics:
                self.last[key] = _plain(metrics)
            if metrics.get("ended"):
                self.told.add(key)
                self.searcher.on_trial_complete(key, self.last.pop(key, None), error=bool(metrics.get("error")))
            elif "epoch" in metrics:
                self.searcher.on_trial_result(key, self.last[key])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.on_trial_result(trial_id, result or {})
        # members the group did not end: it failed (they fail), or the time budget cut it (they were stopped)
        for key in self.groups.pop(trial_id, []):
            if key not in self.told:
                self.told.add(key)
                last = self.last.pop(key, None)
                self.searcher.on_trial_complete(key, last, error=error or last is None)

    # a wrapper as Ray's ConcurrencyLimiter is: Ray saves its state beside the study searcher's own file
    def get_state(self) -> dict:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "searcher"})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def members_of(result: dict) -> dict[str, dict]:
    """A group's result -> {member id: its metrics}: nested as the trial reports it (callbacks), or flattened
    to `members/<id>/<metric>` as Ray hands results to searchers."""
    if isinstance(result.get(MEMBERS), dict):
        return result[MEMBERS]
    out: dict[str, dict] = {}
    for k, v in result.items():
        parts = k.split("/", 2)
        if len(parts) == 3 and parts[0] == MEMBERS:
            out.setdefault(parts[1], {})[parts[2]] = v
    return out


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in (HISTORY, "ended", "stopped", "error")}


# --------------------------------------------------------------------------- members as trials
@dataclass
class MemberTrial:
    """What the callbacks read of a Ray trial, for one member."""

    trial_id: str
    config: dict
    status: str = "RUNNING"
    last_result: dict = field(default_factory=dict)
    error: str | None = None

    def get_error(self) -> str | None:
        return self.error


class MemberEvents(Callback):
    """Ray's events of group trials, replayed as member events to `callbacks` (live tables, console)."""

    def __init__(self, callbacks: list, live):
        self.callbacks, self.live = list(callbacks), live
        self.members: dict[str, MemberTrial] = {}

    def _all(self) -> list[MemberTrial]:
        return list(self.members.values())

    def _each(self, event: str, **kw) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(**kw)

    def setup(self, **info):
        for cb in self.callbacks:
            cb.setup(**info)
        self._adopt_ended()

    def _adopt_ended(self) -> None:
        """Members that ended before this run (--resume: the live tables have their rows from trials.csv). A
        finished group says nothing of them and a restored one says them once more; known as ended here, they
        are counted (the console adopts them as it adopts plain trials ended before) and never said twice."""
        metric = self.live.exp.metrics[0]
        for key, (row, _) in self.live.done.items():
            epochs = int(row.get("epochs") or 0)
            result = {best_key(metric): row.get(metric), "val_loss": row.get("val_loss"), "epoch": epochs,
                      "training_iteration": epochs}
            error = row.get("error") or None
            self.members[key] = MemberTrial(key, dict(row.get("_config") or {}), "ERROR" if error else "TERMINATED",
                                            result, error)

    def on_step_begin(self, iteration, trials, **info):
        self._each("on_step_begin", iteration=iteration, trials=self._all())

    def on_step_end(self, iteration, trials, **info):
        self._each("on_step_end", iteration=iteration, trials=self._all())

    def on_experiment_end(self, trials, **info):
        # a group Tune ended without an event (the time budget) ends its members still training with it; the
        # console then says them cut by the budget, as it says plain trials the budget stopped
        for trial in trials:
            if trial.status == "TERMINATED":
                for m in trial.config.get(MEMBERS, []):
                    member = self.members.get(m["key"])
                    if member is not None and member.status == "RUNNING":
                        member.status = "TERMINATED"
        self._each("on_experiment_end", trials=self._all())

    def on_trial_start(self, iteration, trials, trial, **info):
        for m in trial.config.get(MEMBERS, []):
            self.members.setdefault(m["key"], MemberTrial(m["key"], m["config"]))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.on_trial_start(iteration, trials, trial)
        for key, metrics in members_of(result).items():
            history = take_from_result(metrics, HISTORY)  # a restored group's: the member's epochs before
            member = self.members[key]
            if member.status != "RUNNING":
                continue
            if history is not None:
                self.live.results[key] = list(history)
            if "epoch" in metrics:
                plain = _plain(metrics)
                plain["done"] = bool(metrics.get("stopped"))  # as Ray marks the result it stops a trial on
                member.last_result = plain
                self._each("on_trial_result", iteration=iteration, trials=self._all(), trial=member, result=plain)
            if metrics.get("ended"):
                self._end(iteration, member, metrics.get("error"))

    def _end(self, iteration, member: MemberTrial, error: str | None) -> None:
        member.status, member.error = ("ERROR", error) if error else ("TERMINATED", None)
        event = "on_trial_error" if error else "on_trial_complete"
        self._each(event, iteration=iteration, trials=self._all(), trial=member)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended_group(iteration, trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended_group(iteration, trial, trial.get_error() or "the group's trial failed")

    def _ended_group(self, iteration, trial, error: str | None) -> None:
        self.on_trial_start(iteration, [], trial)
        for m in trial.config.get(MEMBERS, []):
            member = self.members[m["key"]]
            if member.status == "RUNNING":
                self._end(iteration, member, error)


def configurations(grid) -> int:
    """The trials a user counts in a fused search: the members of its groups (a Ray trial each)."""
    return sum(len((result.config or {}).get(MEMBERS, [])) for result in grid)


def add_ended_before(exp, grid, live) -> int:
    """On --resume: rows for the members of groups that ended before the interruption but that the tables
    lack (the driver was killed between a group's end and the next write of trials.csv, at most 2 s). Ray
    restores such a group as finished and sends no event for it, and the study was then made equal to the
    tables: a SIGKILLed 6-configuration search resumed ended with 3. Each member as its group's last
    checkpoint has it (`MemberState`: every epoch it reported, how it ended). Returns how many were added."""
    from tuner.search.fused_trial import saved_members
    from tuner.tables import trial_row

    added = 0
    for result in grid:
        members = (result.config or {}).get(MEMBERS, [])
        missing = [m for m in members if m["key"] not in live.done]
        if not missing or result.checkpoint is None:
            continue
        states = saved_members(result.checkpoint)
        for m in missing:
            st = states.get(m["key"])
            if st is None:
                continue
            # as MemberEvents ends them: a member its group did not end failed with the group, or was cut
            error = st.error or (str(result.error) if result.error and not st.ended else None)
            df = pd.DataFrame(st.history) if st.history else None
            live.done[m["key"]] = trial_row(exp, m["key"], m["config"], df, error)
            added += 1
    return added


# --------------------------------------------------------------------------- ASHA for members
@ray.remote(num_cpus=0)
class RungsActor(Rungs):
    """The one record of rung scores that every group's members report to."""


def rungs_actor(exp, scores: dict[str, dict[int, float]]):
    """The actor for scheduler asha (None for fifo), holding `scores` (`driver.rung_scores`, on --resume)
    replayed epoch by epoch: each member recorded at the rungs it had reached before the interruption."""
    s = exp.scheduler
    if s.name != "asha":
        return None
    rungs = Rungs(s.grace_period, s.max_epochs, s.reduction_factor, exp.modes[0])
    for key, by_epoch in scores.items():
        for epoch in sorted(by_epoch):
            rungs.complete(key, epoch, by_epoch[epoch])
    # (mypy takes ray.remote's result for the class itself, which has no .remote)
    actor = RungsActor.remote(rungs.grace_period, rungs.max_t, rungs.rf, rungs.mode)  # type: ignore[attr-defined]
    ray.get(actor.load_state_dict.remote(rungs.state_dict()))
    return actor


# --------------------------------------------------------------------------- what the driver wires in
def build(exp, exp_dir: Path):
    """The search algorithm of a fused search (for `driver._new_tuner`), and Ray's num_samples: at most one
    group per configuration (the searcher says when it has asked for all of them)."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from tuner.search.adapters import FolderSearchGenerator
    from tuner.search.searchers import study_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = planned_configs(exp)
    groups = GroupSearch(study_search(exp, exp_dir, []), exp.search.fuse, total, exp.constants, member_points(exp))
    search = FolderSearchGenerator(ConcurrencyLimiter(groups, max_concurrent=exp.search.max_concurrent))
    return search, -1 if total is None else total


def trainable(exp, data, spec, resources: dict, scores: dict[str, dict[int, float]], ended: dict[str, int]):
    """The group trial, with the data, the trial spec and the rungs' actor (ASHA) sent once. On --resume,
    `scores`: each member's rung scores so far; `ended`: the members trials.csv records as ended."""
    from ray import tune

    from tuner.search.fused_trial import run_group

    rungs = rungs_actor(exp, scores)
    return tune.with_resources(tune.with_parameters(run_group, data=data, spec=spec, rungs=rungs, ended=ended),
                               resources)


def callbacks(all_callbacks: list, live) -> list:
    """The run's callbacks with the live tables and the console hearing members (`MemberEvents`); the
    journal is the study's own (`GroupSearch`), so no recorder."""
    from tuner.search.console import Console
    from tuner.search.live import LiveResults
    from tuner.search.study import StudyRecorder

    members = [c for c in all_callbacks if isinstance(c, (LiveResults, Console))]
    rest = [c for c in all_callbacks if c not in members and not isinstance(c, StudyRecorder)]
    return [MemberEvents(members, live)] + rest
