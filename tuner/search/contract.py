"""The scheduler and sampler contracts (public through `tuner.testing`): a registered entry's flags are what its
object can do. Here, under tuner/search/, because the checks build Ray schedulers and run Optuna studies."""
from __future__ import annotations

import pickle
from typing import Any

from tuner.errors import UserError
from tuner.search.samplers import SAMPLERS
from tuner.search.schedulers import SCHEDULERS


# --------------------------------------------------------------------------- small experiments
# a space every trained family takes: lr and dropout perturbable (PBT), optionally a conditional choice
FLAT = {"lr": {"loguniform": [1.0e-3, 1.0e-1]}, "dropout": {"uniform": [0.0, 0.5]}}
BRANCHING = {**FLAT, "optimizer": {"choice": {"sgd": {"momentum": {"uniform": [0.5, 0.95]}}, "adam": {}}}}


def experiment(*, scheduler: str = "fifo", sampler: str = "tpe", multi: bool = False, conditional: bool = False,
               family: str = "mlp", warm_start: list | None = None):
    """A small checked Experiment (digits, 3 epochs, 6 trials) for a scheduler or sampler check: one objective
    or two, a flat space or one with a conditional choice, a warm start. Raises UserError where validation
    refuses it."""
    from tuner.spaces import parse_experiment

    raw: dict[str, Any] = {"name": "contract", "family": family, "dataset": {"name": "digits"},
                           "search": {"algorithm": "optuna", "sampler": sampler, "num_samples": 6},
                           "scheduler": {"name": scheduler, "max_epochs": 3},
                           "space": BRANCHING if conditional else FLAT}
    if warm_start is not None:
        raw["search"]["warm_start"] = warm_start
    if multi:
        raw |= {"metric": ["val_accuracy", "num_params"], "mode": ["max", "min"]}
    return parse_experiment(raw)


def _refused(what: str, **kwargs) -> None:
    try:
        experiment(**kwargs)
    except UserError:
        return
    raise AssertionError(f"{what}: validation accepts {kwargs}, which its flags rule out")


# --------------------------------------------------------------------------- schedulers
def check_scheduler(name: str) -> None:
    """A registered scheduler keeps its flags: it builds a picklable Ray scheduler for every experiment they
    allow, and validation refuses the ones they rule out."""
    from ray import cloudpickle
    from ray.tune.schedulers import TrialScheduler

    entry = SCHEDULERS[name]
    assert entry.name == name and entry.doc, f"scheduler {name}: a docstring says what it does (the docs show it)"
    modes: list[dict[str, Any]] = [{"multi": m, "conditional": c} for m in (False, True) for c in (False, True)
                                   if (not m or entry.multi_objective) and (not c or entry.conditional)]
    for mode in modes:
        built = entry.build(experiment(scheduler=name, **mode))
        assert isinstance(built, TrialScheduler), f"scheduler {name} built {type(built).__name__} for {mode}"
        cloudpickle.loads(cloudpickle.dumps(built))  # Ray keeps the scheduler in the experiment's tuner.pkl
    if not entry.multi_objective:
        _refused(f"scheduler {name}", scheduler=name, multi=True)
    if not entry.conditional:
        _refused(f"scheduler {name}", scheduler=name, conditional=True)
    if entry.mutates:  # its trials start at random and change themselves: nothing to seed
        _refused(f"scheduler {name}", scheduler=name, warm_start=[{"lr": 0.01}])


# --------------------------------------------------------------------------- samplers
def check_sampler(name: str, trials: int = 5) -> None:
    """A registered sampler keeps its flags: for every experiment they allow it builds a sampler that survives
    pickling (Ray pickles it with the searcher) and proposes `trials` trials of the experiment's space after
    that; validation refuses the experiments they rule out."""
    entry = SAMPLERS[name]
    assert entry.name == name and entry.doc, f"sampler {name}: a docstring says what it is (the docs show it)"
    assert entry.multi_objective or entry.single_objective, f"sampler {name} takes neither one objective nor several"
    modes: list[dict[str, Any]] = [{"multi": m, "conditional": c} for m in (False, True) for c in (False, True)
                                   if (entry.multi_objective if m else entry.single_objective)
                                   and (not c or entry.conditional)]
    for mode in modes:
        _samples(name, experiment(sampler=name, **mode), trials)
    if not entry.single_objective:
        _refused(f"sampler {name}", sampler=name, multi=False)
    if not entry.multi_objective:
        _refused(f"sampler {name}", sampler=name, multi=True)
    if not entry.conditional:
        _refused(f"sampler {name}", sampler=name, conditional=True)


def _samples(name: str, exp, trials: int) -> None:
    import optuna

    from tuner.search.domains import DefineByRun
    from tuner.search.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = pickle.loads(pickle.dumps(make_sampler(exp)))
    study = optuna.create_study(directions=["maximize" if m == "max" else "minimize" for m in exp.modes],
                                sampler=sampler)
    draw = DefineByRun(exp.searched)

    def objective(trial) -> list[float]:
        cfg = draw(trial)
        assert set(cfg) >= set(exp.searched), cfg
        return [float(cfg["lr"]) * (i + 1) for i in range(len(exp.metrics))]

    study.optimize(objective, n_trials=trials)
    pickle.loads(pickle.dumps(sampler))  # and again, after it has sampled
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == trials, f"sampler {name}: {len(done)} of {trials} trials completed ({exp.metrics})"
