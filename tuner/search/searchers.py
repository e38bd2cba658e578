"""Searchers for an `Experiment`: Optuna's samplers over a define-by-run space (conditional choices, several
objectives, constraints, warm starts), or Ray's random / grid generator; and the Pareto front of the results.

Optuna always gets a define-by-run function, built here from the space tree: a conditional choice's branch
parameters are only suggested when that option is drawn, under names unique per branch (`classifier.svm.C`),
while the trial's config gets the plain name (`C`). The Tuner's param_space then holds only constants.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tuner.metrics import constraint_values
from tuner.search.domains import DefineByRun, optuna_params
from tuner.spaces import Experiment, grid_configs

def constraint_attrs(values: list[float], constraints: dict[str, dict]) -> dict[str, float]:
    """`metrics.constraint_values` under Optuna 5's names: one `constraints:<metric>.<max|min>` system attr
    each, which every constrained sampler reads (Trial.set_constraint; `constraints_func` is deprecated)."""
    keys = [f"{name}.{side}" for name, bound in constraints.items() for side in ("max", "min") if side in bound]
    return {f"constraints:{k}": float(v) for k, v in zip(keys, values)}


def make_sampler(exp: Experiment):
    import optuna

    s = exp.search
    startup = min(10, max(2, exp.num_samples // 3)) if exp.num_samples > 0 else 10
    # constraints reach tpe, gp and nsga2 as each trial's constraint values (TunerOptunaSearch sets them)
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup)
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=startup)
    if s.sampler == "cmaes":
        # categorical parameters go to the independent (random) sampler, as Optuna's CMA-ES does itself
        return optuna.samplers.CmaEsSampler(seed=s.seed, n_startup_trials=startup, warn_independent_sampling=False)
    if s.sampler == "nsga2":
        pop = max(2, min(50, exp.num_samples // 2 if exp.num_samples > 0 else 20))
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=pop)
    if s.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=s.seed, qmc_type="sobol", scramble=True,
                                          warn_independent_sampling=False, warn_asynchronous_seeding=False)
    return optuna.samplers.RandomSampler(seed=s.seed)


def _make_optuna_search_class():
    from tuner.search.study import StudySearch

    class TunerOptunaSearch(StudySearch):
        """The study searcher (journal storage, best-epoch scores, pruned and failed trials) that also tells
        the sampler each trial's constraint values (`Trial.set_constraint`, which Ray's OptunaSearch never
        calls) and seeds the study with an earlier experiment's finished trials."""

        def __init__(self, *args, constraints: dict | None = None, seed_trials: list | None = None, **kwargs):
            self._tuner_constraints = constraints or {}
            self._tuner_seed_trials = seed_trials or []
            super().__init__(*args, **kwargs)

        def _setup_study(self, mode):
            super()._setup_study(mode)
            import optuna

            for params, dists, values, cons in self._tuner_seed_trials:
                system = constraint_attrs(cons, self._tuner_constraints) if cons is not None else {}
                self._ot_study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=dists, values=values, user_attrs={"warm_start": True},
                    system_attrs=system))
            self._tuner_seed_trials = []  # added once; the study (and so they) is pickled with the searcher

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if self._tuner_constraints and result and trial_id in self._ot_trials:
                values = constraint_values(result, self._tuner_constraints)
                for key, v in constraint_attrs(values, self._tuner_constraints).items():
                    self._ot_trials[trial_id].set_constraint(key.split(":", 1)[1], v)
            super().on_trial_complete(trial_id, result=result, error=error)

    return TunerOptunaSearch


# --------------------------------------------------------------------------- warm starts
def warm_start_points(exp: Experiment) -> list[dict]:
    """`search.warm_start` as a list of configs, completed with the space's constants."""
    ws = exp.search.warm_start
    return [dict(c) for c in ws] if isinstance(ws, list) else []


def folder_trials(exp: Experiment) -> list[tuple]:
    """An earlier experiment's finished trials, as (params, distributions, values, constraints) under this
    space; trials whose config this space cannot express are left out."""
    ws = exp.search.warm_start
    if not isinstance(ws, str):
        return []
    folder = Path(ws)
    trials = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    trials = trials[trials.get("status", "TERMINATED") != "ERROR"] if "status" in trials else trials
    names = exp.param_names + list(exp.constants)
    out = []
    for _, row in trials.iterrows():
        if any(m not in row or pd.isna(row[m]) for m in exp.metrics):
            continue
        config = {k: _from_csv(row[k]) for k in names if k in row and not pd.isna(row[k])}
        fit = optuna_params(exp.searched, config)
        if fit is None or not fit[0]:
            continue
        values = [float(row[m]) for m in exp.metrics]
        cons = constraint_values(row.to_dict(), exp.constraints) if exp.constraints else None
        out.append((fit[0], fit[1], values, cons))
    return out


def _from_csv(v: Any) -> Any:
    # trials.csv writes a list as YAML flow text ("[256, 128]")
    if isinstance(v, str) and v.startswith("["):
        return yaml.safe_load(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v) if abs(v) < 2**53 else v
    return v


# --------------------------------------------------------------------------- the searcher
def build(exp: Experiment, exp_dir: Path):
    """The Ray searcher for an experiment, and whether the Tuner's param_space must hold only constants.

    The Optuna searcher keeps its study in `exp_dir`'s journal (what `tuner dashboard` serves) and is told
    each trial's best-epoch score (`best_<metric>`), the one score the tables and the retrain use too.
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuner.metrics import best_key
    from tuner.search.study import storage

    use_optuna = exp.searched and exp.scheduler.name != "pbt" and (
        exp.search.algorithm == "optuna" or (exp.search.algorithm == "random" and exp.conditional))
    if use_optuna:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        cls = _make_optuna_search_class()
        points = []
        for cfg in warm_start_points(exp):
            fit = optuna_params(exp.searched, cfg)
            if fit is not None:
                points.append(fit[0])
        metric = [best_key(m) for m in exp.metrics] if exp.multi else best_key(exp.metric)
        mode = exp.modes if exp.multi else exp.mode
        sampler = make_sampler(exp) if exp.search.algorithm == "optuna" else \
            optuna.samplers.RandomSampler(seed=exp.search.seed)
        return cls(space=DefineByRun(exp.searched), metric=metric, mode=mode, sampler=sampler,
                   points_to_evaluate=points or None, constraints=exp.constraints,
                   seed_trials=folder_trials(exp), storage=storage(exp_dir), study_name=exp.name,
                   epoch_metric=exp.metrics[0], max_epochs=exp.scheduler.max_epochs), True
    if exp.search.algorithm == "grid" and exp.conditional:
        # Ray's grid_search cannot branch: every config of the tree is handed over as a point to evaluate
        points = warm_start_points(exp) + grid_configs(exp.searched, exp.search.grid_points)
        return BasicVariantGenerator(points_to_evaluate=points, random_state=exp.search.seed,
                                     max_concurrent=exp.search.max_concurrent), True
    # max_concurrent here too: with no num_samples (a time budget) the generator would otherwise queue
    # trials without end, and the budget runs out before one of them starts
    return BasicVariantGenerator(points_to_evaluate=warm_start_points(exp) or None, random_state=exp.search.seed,
                                 max_concurrent=exp.search.max_concurrent), False


def num_samples(exp: Experiment) -> int:
    """Ray's num_samples: a conditional grid runs each of its points once (plus the warm-start configs).
    A plain grid's warm-start configs come on top of its passes: Ray counts each point to evaluate as one
    of num_samples, and for a grid one sample is a whole pass, so cars_knn.yaml's one warm start used to
    replace its 120-configuration grid."""
    if exp.search.algorithm == "grid" and exp.conditional:
        return len(warm_start_points(exp)) + len(grid_configs(exp.searched, exp.search.grid_points))
    if exp.search.algorithm == "grid" and exp.num_samples > 0:
        return exp.num_samples + len(warm_start_points(exp))
    return exp.num_samples
