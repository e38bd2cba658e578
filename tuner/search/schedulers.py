"""The trial schedulers `scheduler.name` picks: one function each, registered with the flags validation reads.

    @register_scheduler("asha", multi_objective=True, conditional=True, needs_epochs=True)
    def asha(exp):
        '''Asynchronous successive halving: ...'''
        return ASHAScheduler(...)

A new scheduler is one such function here: `tuner validate` refuses the combinations its flags rule out,
`tuner schema` lists its name, docs/search-algorithms.md (`python -m tuner.docs`) shows its docstring and
flags, and `tuner.testing.check_scheduler` (run over every entry by tests/test_registries.py) checks it.

This module is the foot of `tuner/search/`: it imports Ray only inside the builders, so `tuner.spaces` reads
the flags while checking a file without loading Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tuner.errors import UserError


@dataclass(frozen=True)
class SchedulerEntry:
    """A registered scheduler: its builder (an `Experiment` -> a Ray Tune scheduler) and what it can do."""

    name: str
    build: Callable[[Any], Any]
    multi_objective: bool  # runs a search with a list of metrics (stopping trials, if at all, by the first)
    conditional: bool      # takes a space with conditional choices
    needs_epochs: bool     # acts between epochs: a family that trains in one step runs as fifo instead
    mutates: bool = False  # running trials change their own parameters (PBT): no searcher draws them, no warm
    #                        start seeds them, and every checkpoint is kept (a trial may copy any of them)
    rungs: bool = False    # stops trials at the milestones grace_period * reduction_factor**k (rungs.png)
    grace: bool = False    # lets every trial run grace_period epochs: that many must fit in max_epochs

    @property
    def doc(self) -> str:
        """The builder's docstring: what the scheduler does, for the docs."""
        return " ".join((self.build.__doc__ or "").split())


SCHEDULERS: dict[str, SchedulerEntry] = {}


def register_scheduler(name: str, *, multi_objective: bool, conditional: bool, needs_epochs: bool,
                       mutates: bool = False, rungs: bool = False, grace: bool = False) -> Callable:
    """Decorator: register `fn(exp) -> Ray scheduler` under `name` (the value of `scheduler.name`)."""
    def wrap(fn: Callable) -> Callable:
        SCHEDULERS[name] = SchedulerEntry(name, fn, multi_objective=multi_objective, conditional=conditional,
                                          needs_epochs=needs_epochs, mutates=mutates, rungs=rungs, grace=grace)
        return fn
    return wrap


def get_scheduler(name: str) -> SchedulerEntry:
    return SCHEDULERS[name]


def scheduler_names() -> tuple:
    """The choices of `scheduler.name` (read when a file is checked, so a registration counts)."""
    return tuple(SCHEDULERS)


def build_scheduler(exp) -> Any:
    """The Ray scheduler of a search: its entry's, or fifo for a family trained in one step."""
    from tuner.families import get_family

    entry = SCHEDULERS[exp.scheduler.name]
    if entry.needs_epochs and not get_family(exp.family).iterative:
        entry = SCHEDULERS["fifo"]
    return entry.build(exp)


def _ranked(exp) -> dict:
    # ASHA, HyperBand and the median rule compare trials by their best epoch so far, the score a trial is
    # ranked by at the end (its checkpoint at that epoch is what it would give if stopped now): a trial whose
    # accuracy wobbles down for one epoch at a rung is not cut for it, nor one that peaked early kept for a
    # lucky last epoch alone. With several objectives they stop trials by the first.
    from tuner.metrics import best_key

    return {"metric": best_key(exp.metrics[0]), "mode": exp.modes[0]}


# in the order `tuner schema` and the messages list them
@register_scheduler("asha", multi_objective=True, conditional=True, needs_epochs=True, rungs=True, grace=True)
def asha(exp):
    """Asynchronous successive halving: at each rung (`grace_period` times a power of `reduction_factor`
    epochs) a trial goes on only if it is in the best 1 / `reduction_factor` of the trials that reached it."""
    from ray.tune.schedulers import ASHAScheduler

    s = exp.scheduler
    return ASHAScheduler(time_attr="training_iteration", max_t=s.max_epochs, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, **_ranked(exp))


@register_scheduler("median", multi_objective=False, conditional=True, needs_epochs=True, grace=True)
def median(exp):
    """The median stopping rule: after `grace_period` epochs, a trial whose best is below the median of the
    others' at the same epoch stops (once 3 trials have got there)."""
    from ray.tune.schedulers import MedianStoppingRule

    s = exp.scheduler
    return MedianStoppingRule(time_attr="training_iteration", grace_period=s.grace_period,
                              min_samples_required=3, **_ranked(exp))


@register_scheduler("pbt", multi_objective=False, conditional=False, needs_epochs=True, mutates=True)
def pbt(exp):
    """Population based training: every `perturbation_interval` epochs the worst quarter of the trials copies
    the weights of the best quarter and perturbs the parameters the family marks perturbable."""
    from ray.tune.schedulers import PopulationBasedTraining

    from tuner.families import get_family
    from tuner.search.domains import to_tune

    perturbable = get_family(exp.family).pbt_params  # Param(pbt=True): the family says which
    mutations = {k: to_tune(d) for k, d in exp.searched.items() if k in perturbable}
    if not mutations:
        raise UserError(f"{exp.path}: scheduler pbt needs at least one of {', '.join(perturbable)} in space:")
    bounds = {k: d.args for k, d in exp.searched.items() if k in mutations and d.is_numeric}
    # PBT uses the current epoch, not the best so far: it copies a trial's weights as they are now
    return PopulationBasedTraining(time_attr="training_iteration",
                                   perturbation_interval=exp.scheduler.perturbation_interval,
                                   hyperparam_mutations=mutations, synch=False, metric=exp.metric, mode=exp.mode,
                                   custom_explore_fn=ClipToSpace(bounds))


@register_scheduler("fifo", multi_objective=True, conditional=True, needs_epochs=False)
def fifo(exp):
    """Every trial runs to `max_epochs`."""
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


@register_scheduler("hyperband", multi_objective=False, conditional=True, needs_epochs=True)
def hyperband(exp):
    """HyperBand: successive halving in brackets that start trials with different budgets."""
    from ray.tune.schedulers import HyperBandScheduler

    s = exp.scheduler
    return HyperBandScheduler(time_attr="training_iteration", max_t=s.max_epochs,
                              reduction_factor=s.reduction_factor, **_ranked(exp))


@dataclass
class ClipToSpace:
    """PBT's explore step, kept inside the space: Ray multiplies a value by 0.8 or 1.2 with no bounds, so a
    momentum drawn from [0.5, 0.95] became 1.04 and that trial diverged (val_accuracy 0.97 -> 0.29)."""

    bounds: dict[str, tuple]

    def __call__(self, config: dict) -> dict:
        for k, (lo, hi) in self.bounds.items():
            if k in config:
                config[k] = type(lo)(min(max(config[k], lo), hi))
        return config
