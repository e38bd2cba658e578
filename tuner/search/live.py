"""The Ray callback that keeps the results tables (tuner/tables.py) current while the search runs."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from ray.tune import Callback

from tuner import interrupt
from tuner.metrics import HISTORY
from tuner.search.adapters import take_from_result
from tuner.rundir import RunDir
from tuner.tables import MEASURED, read_epochs, row_config, trial_row, write_tables


class LiveResults(Callback):
    """Rewrites the tables at most every `every_s` seconds while trials report or end, and at the end.

    Each write is every finished trial's row and every epoch so far: writing at every trial's end made a
    search's table work grow with the square of its trials (20 ms a trial at 32 trials, on the driver that
    shares the cores with them). A trial that ends between two writes is in the next one, `every_s` later at
    most (`on_step_end` runs every pass of Tune's loop), so `tuner list` still sees it within seconds.
    """

    def __init__(self, exp, exp_dir: Path, every_s: float = 2.0):
        self.exp, self.exp_dir, self.every_s = exp, Path(exp_dir), every_s
        self.results: dict[str, list[dict]] = {}
        self.done: dict[str, tuple[dict, pd.DataFrame | None]] = {}
        self.config: dict[str, dict] = {}
        self.last_write = 0.0
        self.pending = False  # a trial ended since the last write

    def setup(self, **info):
        run = RunDir(self.exp_dir)
        run.mark_running()
        # a new search starts in an emptied folder; on --resume, trials finished before the interruption
        # send no more events: keep their rows
        if not run.trials.is_file():
            return
        ep = read_epochs(run)
        for _, r in run.read_trials().iterrows():
            tid = r["trial_id"]
            e = ep[ep["trial_id"] == tid].rename(columns={"time_s": "time_this_iter_s"})
            # the config as the trial had it (a list from its YAML text), as `tuner best --trial` reads it
            error = r["error"] if isinstance(r.get("error"), str) and r["error"] else None
            row, epochs = trial_row(self.exp, tid, {**self.exp.constants, **row_config(self.exp, r)},
                                    e if len(e) else None, error)
            # what epochs.csv does not hold (measured once a trial, its total time): from its row as written
            row.update({k: r[k] for k in MEASURED + ["time_s"] if k in r and pd.notna(r[k])})
            self.done[tid] = (row, epochs)

    def on_experiment_end(self, trials, **info):
        self.write()
        RunDir(self.exp_dir).clear_running()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        interrupt.signal_for_tests("fit")
        rows = self.results.setdefault(trial.trial_id, [])
        if history := take_from_result(result, HISTORY):  # restored: the epochs its checkpoint holds
            seen = {r.get("epoch") for r in rows}
            rows[:0] = [h for h in history if h.get("epoch") not in seen]
        if "epoch" in result:  # a trial restored from a checkpoint older than its last report reports it again
            rows[:] = [r for r in rows if r.get("epoch", -1) < result["epoch"]]
        rows.append(result)
        self.config[trial.trial_id] = trial.config
        self._maybe_write()

    def on_step_end(self, iteration, trials, **info):
        if self.pending:
            self._maybe_write()

    def _maybe_write(self) -> None:
        if time.monotonic() - self.last_write >= self.every_s:
            self.write()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, trial.get_error() or "trial failed")

    def _finish(self, trial, error) -> None:
        tid = trial.trial_id
        df = pd.DataFrame(self.results.get(tid, [])) if self.results.get(tid) else None
        self.done[tid] = trial_row(self.exp, tid, trial.config, df, error)
        self.pending = True
        self._maybe_write()

    def write(self) -> None:
        running = [trial_row(self.exp, tid, self.config[tid], pd.DataFrame(res), None)[1]
                   for tid, res in self.results.items() if tid not in self.done]
        write_tables(self.exp, list(self.done.values()), self.exp_dir, [e for e in running if e is not None])
        self.last_write, self.pending = time.monotonic(), False
