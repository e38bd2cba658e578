"""Searchers for an `Experiment`: Optuna's samplers over a define-by-run space (conditional choices, several
objectives, constraints, warm starts), or Ray's random / grid generator; and the Pareto front of the results.

Optuna always gets a define-by-run function, built here from the space tree: a conditional choice's branch
parameters are only suggested when that option is drawn, under names unique per branch (`classifier.svm.C`),
while the trial's config gets the plain name (`C`). The Tuner's param_space then holds only constants.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ray.tune.search import Searcher

from tuner.search.domains import DefineByRun, optuna_params
from tuner.search.samplers import LOCK_TYPES, PicklableLock, make_sampler, picklable  # noqa: F401 (old pickles)
from tuner.search.schedulers import SCHEDULERS
from tuner.spaces import Conditional, Experiment, grid_configs


# --------------------------------------------------------------------------- warm starts
def warm_start_points(exp: Experiment) -> list[dict]:
    """`search.warm_start` as a list of configs, completed with the space's constants."""
    ws = exp.search.warm_start
    return [dict(c) for c in ws] if isinstance(ws, list) else []


# --------------------------------------------------------------------------- the searcher
def uses_optuna(exp: Experiment) -> bool:
    """Whether the search's searcher is Optuna's (its study is the journal), not Ray's random or grid."""
    return bool(exp.searched) and not SCHEDULERS[exp.scheduler.name].mutates and (
        exp.search.algorithm == "optuna" or (exp.search.algorithm == "random" and exp.conditional))


def build(exp: Experiment, exp_dir: Path):
    """The Ray search algorithm for a new search, and whether the Tuner's param_space must hold only constants.

    The Optuna searcher keeps its study in `exp_dir`'s journal (what `tuner dashboard` serves) and is told
    each trial's best-epoch score (`best_<metric>`), the one score the tables and the retrain use too. Both
    kinds are wrapped so that a --resume creates its trials in the folder being resumed (adapters).
    """
    from ray.tune.search import ConcurrencyLimiter

    from tuner.search.adapters import FolderSearchGenerator, FolderVariantGenerator
    from tuner.search.study import seed_trials

    if uses_optuna(exp):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        points = []
        for cfg in warm_start_points(exp):
            fit = optuna_params(exp.searched, cfg)
            if fit is not None:
                points.append(fit[0])
        searcher = study_search(exp, exp_dir, points)
        searcher.study.add_trials(seed_trials(exp))  # an earlier folder's trials, before the first is asked
        return FolderSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=exp.search.max_concurrent)), True
    if exp.search.algorithm == "grid" and exp.conditional:
        # Ray's grid_search cannot branch: the tree's configs are handed out one by one (GridPoints)
        grid = ConcurrencyLimiter(GridPoints(conditional_grid(exp)), max_concurrent=exp.search.max_concurrent)
        return FolderSearchGenerator(grid), True
    # max_concurrent here too: with no num_samples (a time budget) the generator would otherwise queue
    # trials without end, and the budget runs out before one of them starts
    return FolderVariantGenerator(points_to_evaluate=warm_start_points(exp) or None, random_state=exp.search.seed,
                                  max_concurrent=exp.search.max_concurrent), False


def study_search(exp: Experiment, exp_dir: Path, points: list[dict]):
    """The Optuna searcher whose study is `exp_dir`'s journal, `points` (Optuna params) asked first."""
    from tuner.metrics import best_key
    from tuner.search.study import Rule, StudySearch, storage

    metric = [best_key(m) for m in exp.metrics] if exp.multi else best_key(exp.metrics[0])
    mode = exp.modes if exp.multi else exp.mode
    sampler = make_sampler(exp, None if exp.search.algorithm == "optuna" else "random")
    return StudySearch(space=DefineByRun(exp.searched), metric=metric, mode=mode, sampler=sampler,
                       points_to_evaluate=points or None, storage=storage(exp_dir), study_name=exp.name,
                       rule=Rule.of(exp), constants=exp.constants, constraints=exp.constraints)


def num_samples(exp: Experiment) -> int:
    """Ray's num_samples: a conditional grid runs each of its points once (plus the warm-start configs).
    A plain grid's warm-start configs come on top of its passes: Ray counts each point to evaluate as one
    of num_samples, and for a grid one sample is a whole pass, so cars_knn.yaml's one warm start used to
    replace its 120-configuration grid."""
    if exp.search.algorithm == "grid" and exp.conditional:
        return len(conditional_grid(exp))
    if exp.search.algorithm == "grid" and exp.num_samples > 0:
        return exp.num_samples + len(warm_start_points(exp))
    return exp.num_samples


def planned_trials(exp: Experiment) -> int | None:
    """How many trials the search runs, None when the time budget decides. A grid runs each of its points
    num_samples times (Ray's grid_search), a warm-start config once with the grid of the keys it leaves out."""
    if exp.num_samples < 0:
        return None
    if exp.search.algorithm != "grid" or exp.conditional:
        return num_samples(exp)
    sizes = {k: len(grid_configs({k: d}, exp.search.grid_points)) for k, d in exp.searched.items()}
    warm = warm_start_points(exp)
    seeded = sum(int(np.prod([n for k, n in sizes.items() if k not in p])) for p in warm)
    return seeded + exp.num_samples * int(np.prod(list(sizes.values())))  # the warm starts on top (num_samples)


# --------------------------------------------------------------------------- a grid over a conditional tree
def conditional_grid(exp: Experiment) -> list[dict]:
    """Every config a grid search over a conditional tree runs: the warm-start configs first, each completed
    from the first grid config that picks the same options, then every config of the tree."""
    grid = grid_configs(exp.searched, exp.search.grid_points)
    options = {k for k, node in _walk_nodes(exp.searched) if isinstance(node, Conditional)}
    points = []
    for cfg in warm_start_points(exp):
        base = next((g for g in grid if all(g[k] == cfg[k] for k in options & set(cfg) & set(g))), {})
        points.append({**base, **cfg})
    return points + grid


def _walk_nodes(space: dict):
    for k, node in space.items():
        yield k, node
        if isinstance(node, Conditional):
            for _, sub in node.options:
                yield from _walk_nodes(sub)


class GridPoints(Searcher):
    """Hands out a fixed list of complete configs, each once, then says it is finished: the grid of a
    conditional tree. Ray's grid_search cannot branch, and Ray's points_to_evaluate need every key of a point
    in the param_space (which holds only the constants here, so a branch's keys are not there)."""

    def __init__(self, configs: list[dict]):
        super().__init__()
        self._configs, self._next = [dict(c) for c in configs], 0

    # Ray's Searcher.suggest says dict | None, yet its own searchers return Searcher.FINISHED (a str)
    def suggest(self, trial_id: str) -> dict | str:  # type: ignore[override]
        if self._next >= len(self._configs):
            return Searcher.FINISHED
        self._next += 1
        return dict(self._configs[self._next - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # a grid does not learn from results

    # --resume: JSON, never a pickle (the configs are YAML values: numbers, words, lists)
    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"configs": self._configs, "next": self._next}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self._configs, self._next = state["configs"], int(state["next"])
