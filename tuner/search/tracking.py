"""The `tracking:` block at work (see tuner/tracking.py for what it logs): a Ray Tune callback on the driver that
logs each trial, and the search-level run that holds the retrained model and its test metrics.

Ray's own MLflowLoggerCallback / WandbLoggerCallback log every number a trial reports, make no parent run and
log no model; W&B's runs a Ray actor per trial. This small callback logs what tuner's tables hold (the searched
values, the per-epoch metrics, how the trial ended) from the driver, where Tune's events arrive anyway.
Each backend is imported only when its block is there.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ray.tune import Callback

from tuner.errors import UserError
from tuner.metrics import best_key, epoch_of
from tuner.types import EPOCH_KEYS, TRAINED_KEYS

MEASURED = ("num_params", "latency_ms", "latency_ms_b64", "train_time_s")  # what a trial measures once
TEST_METRICS = ("accuracy", "loss", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro", "auc_ovr",
                "f1_weighted", "num_test")


def epoch_metrics(exp, result: dict) -> dict[str, float]:
    keys = EPOCH_KEYS + TRAINED_KEYS + MEASURED + tuple(best_key(m) for m in exp.metrics)
    return {k: float(result[k]) for k in keys if isinstance(result.get(k), (int, float))
            and not isinstance(result.get(k), bool) and math.isfinite(result[k])}


# --------------------------------------------------------------------------- MLflow
class Mlflow:
    """A parent run for the search; a run a trial under it (MLflow's `mlflow.parentRunId` tag nests them)."""

    def __init__(self, cfg, exp, exp_dir: Path, resume: bool):
        import os

        from mlflow.tracking import MlflowClient

        # MLflow prints two lines of links whenever a run ends (every trial): the console's lines are tuner's
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.cfg, self.uri = cfg, cfg.uri
        _probe(cfg.uri)
        self.client = MlflowClient(tracking_uri=cfg.uri)
        name = cfg.experiment or exp.name
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        where = str(Path(exp_dir).resolve())
        old = self.client.search_runs([self.experiment_id], f"tags.`tuner.results` = '{where}'",
                                      max_results=1, order_by=["attributes.start_time DESC"]) if resume else []
        self.parent = old[0].info.run_id if old else self.client.create_run(
            self.experiment_id, run_name=exp.name,
            tags={"tuner.results": where, "tuner.family": exp.family, "tuner.role": "search"}).info.run_id
        self.client.update_run(self.parent, status="RUNNING")
        self.runs: dict[str, str] = self._trial_runs() if old else {}  # trial id -> run id
        self.open: set[str] = set()  # the trials whose runs this process started or reopened, not yet ended

    def _trial_runs(self) -> dict[str, str]:
        """The trial runs under the parent a --resume goes on in: a trial Ray restarts continues its own run,
        not a second one beside it (the latest, should a trial have several)."""
        runs: dict[str, str] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent}'",
                                           max_results=1000, order_by=["attributes.start_time ASC"],
                                           page_token=token)
            runs.update({r.data.tags["tuner.trial_id"]: r.info.run_id for r in page if "tuner.trial_id" in r.data.tags})
            token = page.token
            if not token:
                return runs

    def trial_start(self, exp, trial_id: str, config: dict) -> None:
        from mlflow.entities import Param

        self.open.add(trial_id)
        if trial_id in self.runs:  # restarted from its checkpoint (a retry, a --resume): it goes on in its run
            self.client.update_run(self.runs[trial_id], status="RUNNING")
            return
        run = self.client.create_run(self.experiment_id, run_name=trial_id,
                                     tags={"mlflow.parentRunId": self.parent, "tuner.trial_id": trial_id,
                                           "tuner.role": "trial"})
        self.runs[trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in config.items()])

    def trial_result(self, trial_id: str, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.runs[trial_id], metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def trial_end(self, trial_id: str, status: str, error: str = "") -> None:
        run = self.runs[trial_id]
        self.open.discard(trial_id)
        self.client.set_tag(run, "tuner.status", status)
        if error:
            self.client.set_tag(run, "tuner.error", error[:5000])
        self.client.set_terminated(run, "FAILED" if status == "failed" else "FINISHED")

    def finish(self, exp, exp_dir: Path, best: dict | None, test: dict | None, say: Callable) -> None:
        from mlflow.entities import Metric

        from tuner.rundir import RunDir

        run = RunDir(exp_dir)
        now = int(time.time() * 1000)
        if best is not None:
            self.client.set_tag(self.parent, "tuner.best_trial", str(best.get("trial_id")))
            self.client.log_batch(self.parent, metrics=[Metric(f"best_{k}", float(v), now, 0) for k, v in
                                                        best["metrics"].items() if isinstance(v, (int, float))])
        for f in (run.space, run.trials, run.best_yaml, run.report):
            if f.is_file():
                self.client.log_artifact(self.parent, str(f))
        if test is not None and run.model.is_file():
            self.client.log_batch(self.parent, metrics=[Metric(f"test_{k}", float(test[k]), now, 0)
                                                        for k in TEST_METRICS if isinstance(test.get(k), (int, float))])
            from tuner.search.tracking_model import log_model

            say(log_model(self.uri, self.parent, run.model, self.cfg.register))

    def end(self, ok: bool) -> None:
        # trials still running when the search stopped (Ctrl-C, the time budget): a --resume reopens theirs
        for trial_id in sorted(self.open):
            self.client.set_tag(self.runs[trial_id], "tuner.status", "interrupted")
            self.client.set_terminated(self.runs[trial_id], "KILLED")
        self.client.set_terminated(self.parent, "FINISHED" if ok else "KILLED")

    def __getstate__(self) -> dict:  # pickled with the Tuner's callbacks: the ids, not the client
        return {k: v for k, v in self.__dict__.items() if k != "client"}

    def __setstate__(self, state: dict) -> None:
        from mlflow.tracking import MlflowClient

        self.__dict__.update(state)
        self.client = MlflowClient(tracking_uri=self.uri)


def _probe(uri: str | None) -> None:
    """An http(s) tracking URI answers, or one `error:` line now (MLflow's client retries for minutes)."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    from urllib.request import urlopen

    try:
        urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except Exception as exc:  # noqa: BLE001 - refused, timed out, not an MLflow server: all the user's to fix
        raise UserError(f"tracking.mlflow.uri {uri}: no MLflow server answers there ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); start one (mlflow server --host 127.0.0.1 --port 5000) "
                        "or fix the uri") from None


# --------------------------------------------------------------------------- W&B
class Wandb:
    """Runs of one group (the experiment's name): one a trial (job type `trial`), one for the search."""

    def __init__(self, cfg, exp, exp_dir: Path, resume: bool):
        import os

        os.environ.setdefault("WANDB_SILENT", "true")  # its banners and summaries would split the console's lines
        self.cfg, self.group = cfg, exp.name
        self.project = cfg.project or exp.name
        self.runs: dict = {}
        self.search = self._init(f"{exp.name}-search", "search", {"family": exp.family, **exp.constants})

    def _init(self, name: str, job_type: str, config: dict):
        import wandb

        return wandb.init(project=self.project, entity=self.cfg.entity, group=self.group, name=name,
                          job_type=job_type, config=config, mode=self.cfg.mode, dir=self.cfg.dir,
                          reinit="create_new", settings=wandb.Settings(silent=True, console="off", disable_git=True))

    def trial_start(self, exp, trial_id: str, config: dict) -> None:
        if trial_id not in self.runs:  # a trial restarted from a checkpoint (a retry) goes on in its run
            self.runs[trial_id] = self._init(trial_id, "trial", dict(config))

    def trial_result(self, trial_id: str, metrics: dict, step: int) -> None:
        self.runs[trial_id].log(metrics, step=step)

    def trial_end(self, trial_id: str, status: str, error: str = "") -> None:
        run = self.runs.pop(trial_id)
        run.summary["status"] = status
        if error:
            run.summary["error"] = error[:5000]
        run.finish(exit_code=1 if status == "failed" else 0)

    def finish(self, exp, exp_dir: Path, best: dict | None, test: dict | None, say: Callable) -> None:
        import wandb

        from tuner.rundir import RunDir

        run = RunDir(exp_dir)
        if best is not None:
            self.search.summary.update({"best_trial": best.get("trial_id"),
                                        **{f"best_{k}": v for k, v in best["metrics"].items()}})
        if test is not None and run.model.is_file():
            self.search.summary.update({f"test_{k}": test[k] for k in TEST_METRICS if k in test})
            art = wandb.Artifact(f"{exp.name}-model", type="model",
                                 metadata={k: test[k] for k in TEST_METRICS if k in test})
            art.add_file(str(run.model))
            self.search.log_artifact(art)
            say(f"W&B model: artifact {exp.name}-model of run {self.search.id} ({self.cfg.mode})")

    def end(self, ok: bool) -> None:
        for trial_id in list(self.runs):
            self.trial_end(trial_id, "interrupted")
        self.search.finish(exit_code=0 if ok else 1)

    def __getstate__(self) -> dict:  # W&B's run objects stay in this process
        return {"cfg": self.cfg, "group": self.group, "project": self.project, "runs": {}, "search": None}


# --------------------------------------------------------------------------- the callback and the session
class TrackingCallback(Callback):
    """Tune's trial events -> every backend of the `tracking:` block."""

    def __init__(self, exp, backends: list):
        self.exp, self.backends = exp, backends
        self.seen: dict[str, int] = {}  # the last epoch each trial was let go on from

    def on_trial_start(self, iteration, trials, trial, **info):
        for b in self.backends:  # a trial restarted from a checkpoint goes on in its run (each backend's call)
            b.trial_start(self.exp, trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics, step = epoch_metrics(self.exp, result), epoch_of(result)
        if not result.get("done"):  # as the console counts a trial the scheduler stopped (study.stopped_early)
            self.seen[trial.trial_id] = step
        for b in self.backends:
            if trial.trial_id in b.runs and metrics:
                b.trial_result(trial.trial_id, metrics, step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        from tuner.search.study import stopped_early

        early = stopped_early(trial.last_result, self.seen.get(trial.trial_id, 0), self.exp.scheduler.max_epochs)
        self._end(trial, "stopped early" if early else "completed")

    def on_trial_error(self, iteration, trials, trial, **info):
        from tuner.tables import one_line

        self._end(trial, "failed", one_line(trial.get_error() or "see the trial's error.txt"))

    def _end(self, trial, status: str, error: str = "") -> None:
        for b in self.backends:
            if trial.trial_id in b.runs:
                b.trial_end(trial.trial_id, status, error)


class Session:
    """What run_search holds while tracking: the backends, the callback for Tune, the last step's logging."""

    def __init__(self, exp, backends: list, say: Callable[[str], None]):
        self.exp, self.backends, self.say = exp, backends, say

    def callbacks(self) -> list:
        return [TrackingCallback(self.exp, self.backends)] if self.backends else []

    def finish(self, exp_dir: Path, best: dict | None, test: dict | None) -> None:
        for b in self.backends:
            b.finish(self.exp, exp_dir, best, test, self.say)


@contextmanager
def session(exp, exp_dir: Path, resume: bool, say: Callable[[str], None] = print):
    """The search's tracking runs, open while the search, the retrain and the model logging run; ended as
    finished, or killed when anything stops them (Ctrl-C, an error)."""
    from tuner import tracking

    cfg = exp.tracking or tracking.TrackingConfig()
    tracking.require(cfg)
    backends = ([Mlflow(cfg.mlflow, exp, exp_dir, resume)] if cfg.mlflow else []) + \
               ([Wandb(cfg.wandb, exp, exp_dir, resume)] if cfg.wandb else [])
    for b in backends:
        say(f"tracking: {_where(b)}")
    ok = False
    try:
        yield Session(exp, backends, say)
        ok = True
    finally:
        for b in backends:
            b.end(ok)


def _where(b) -> str:
    if isinstance(b, Mlflow):
        if b.uri and b.uri.startswith(("http://", "https://")):
            return f"MLflow {b.uri.rstrip('/')}/#/experiments/{b.experiment_id}/runs/{b.parent}"
        return f"MLflow {b.uri or _default_store()}, experiment id {b.experiment_id}, parent run {b.parent}"
    return f"W&B project {b.project} ({b.cfg.mode}), group {b.group}"


def _default_store() -> str:
    """Where MLflow writes when the block names no uri: $MLFLOW_TRACKING_URI, or MLflow's own default (a
    SQLite file in the current folder since MLflow 3), so the console says which."""
    import mlflow

    return f"{mlflow.get_tracking_uri()} (MLflow's default store)"
