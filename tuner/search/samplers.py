"""Optuna's samplers that `search.sampler` picks: one function each, registered with the flags validation reads.

    @register_sampler("tpe", multi_objective=True, constraints=True, conditional=True)
    def tpe(exp):
        '''Tree-structured Parzen Estimator, the default.'''
        return optuna.samplers.TPESampler(seed=exp.search.seed, ...)

A new sampler is one such function here: `tuner validate` refuses the combinations its flags rule out,
`tuner schema` lists its name, docs/search-algorithms.md (`python -m tuner.docs`) shows its docstring and
flags, and `tuner.testing.check_sampler` (run over every entry by tests/test_registries.py) checks it.

Like tuner.search.schedulers, this imports Optuna only inside the builders: `tuner.spaces` reads the flags.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_SAMPLER = "tpe"  # search.sampler's default (tuner.spaces.SearchConfig), the one other algorithms allow


@dataclass(frozen=True)
class SamplerEntry:
    """A registered sampler: its builder (an `Experiment` -> an Optuna sampler) and what it can do."""

    name: str
    build: Callable[[Any], Any]
    multi_objective: bool        # takes a list of metrics
    constraints: bool            # steers away from trials outside `constraints:` (the others only mark them)
    conditional: bool            # takes a space with conditional choices (a set of parameters that changes)
    single_objective: bool = True  # takes one metric (False: a multi-objective method only)
    needs_numeric: bool = False  # needs at least one numeric parameter (one it does not hand to random draws)

    @property
    def doc(self) -> str:
        return " ".join((self.build.__doc__ or "").split())


SAMPLERS: dict[str, SamplerEntry] = {}


def register_sampler(name: str, *, multi_objective: bool, constraints: bool, conditional: bool,
                     single_objective: bool = True, needs_numeric: bool = False) -> Callable:
    """Decorator: register `fn(exp) -> optuna sampler` under `name` (the value of `search.sampler`)."""
    def wrap(fn: Callable) -> Callable:
        SAMPLERS[name] = SamplerEntry(name, fn, multi_objective=multi_objective, constraints=constraints,
                                      conditional=conditional, single_objective=single_objective,
                                      needs_numeric=needs_numeric)
        return fn
    return wrap


def sampler_names() -> tuple:
    """The choices of `search.sampler` (read when a file is checked, so a registration counts)."""
    return tuple(SAMPLERS)


def make_sampler(exp, name: str | None = None):
    """The Optuna sampler of `exp` (`search.sampler`, or `name`), picklable (Ray pickles it with the searcher)."""
    return picklable(SAMPLERS[name or exp.search.sampler].build(exp))


def _startup(exp) -> int:
    """Random trials before a model-based sampler starts to model: a third of the budget, 2 to 10."""
    return min(10, max(2, exp.num_samples // 3)) if exp.num_samples > 0 else 10


# constraints reach tpe, gp and nsga2 as each trial's constraint values (tuner.search.study.StudySearch sets them)
@register_sampler("tpe", multi_objective=True, constraints=True, conditional=True)
def tpe(exp):
    """Tree-structured Parzen Estimator, the default."""
    import optuna

    return optuna.samplers.TPESampler(seed=exp.search.seed, n_startup_trials=_startup(exp))


@register_sampler("gp", multi_objective=True, constraints=True, conditional=False)
def gp(exp):
    """Gaussian-process Bayesian optimisation."""
    import optuna

    return optuna.samplers.GPSampler(seed=exp.search.seed, n_startup_trials=_startup(exp))


@register_sampler("cmaes", multi_objective=False, constraints=False, conditional=False, needs_numeric=True)
def cmaes(exp):
    """CMA-ES (covariance matrix adaptation) over the numeric parameters; choices are drawn at random."""
    import optuna

    # categorical parameters go to the independent (random) sampler, as Optuna's CMA-ES does itself
    return optuna.samplers.CmaEsSampler(seed=exp.search.seed, n_startup_trials=_startup(exp),
                                        warn_independent_sampling=False)


@register_sampler("nsga2", multi_objective=True, constraints=True, conditional=True, single_objective=False)
def nsga2(exp):
    """NSGA-II, a genetic multi-objective sampler."""
    import optuna

    pop = max(2, min(50, exp.num_samples // 2 if exp.num_samples > 0 else 20))
    return optuna.samplers.NSGAIISampler(seed=exp.search.seed, population_size=pop)


@register_sampler("qmc", multi_objective=True, constraints=False, conditional=False)
def qmc(exp):
    """Quasi-Monte Carlo points (scrambled Sobol), spread more evenly than random ones."""
    import optuna

    return optuna.samplers.QMCSampler(seed=exp.search.seed, qmc_type="sobol", scramble=True,
                                      warn_independent_sampling=False, warn_asynchronous_seeding=False)


@register_sampler("random", multi_objective=True, constraints=False, conditional=True)
def random(exp):
    """Independent random draws."""
    import optuna

    return optuna.samplers.RandomSampler(seed=exp.search.seed)


# --------------------------------------------------------------------------- pickling
class PicklableLock:
    """A threading.Lock that pickles as a new, unlocked one: Ray pickles the searcher, and so its sampler, into
    every experiment snapshot, and a lock cannot be pickled."""

    def __init__(self):
        self._lock = threading.Lock()

    def acquire(self, *args, **kwargs) -> bool:
        return self._lock.acquire(*args, **kwargs)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._lock = threading.Lock()


LOCK_TYPES = (type(threading.Lock()),)


def picklable(sampler):
    """The sampler with every plain lock it holds made picklable. Optuna 5.1's genetic samplers (nsga2) keep a
    threading.Lock and define no __getstate__ (pickling them raises "cannot pickle '_thread.lock' object");
    other versions and samplers hold none, and are returned as they are."""
    for key, value in vars(sampler).items():
        if isinstance(value, LOCK_TYPES):
            setattr(sampler, key, PicklableLock())
    return sampler
