"""The space file's distributions in the searchers' terms: a `spaces.Distribution` as a Ray Tune domain
(`to_tune`), as Optuna distributions (`optuna_params`, define-by-run `DefineByRun`)."""
from __future__ import annotations

from typing import Any

from ray import tune

from tuner.search.adapters import contains
from tuner.spaces.distributions import Conditional, Distribution, is_searched


def to_tune(dist: Distribution, grid_points: int = 0):
    """The Ray Tune domain. With grid_points > 0 every distribution becomes a grid."""
    if grid_points or dist.is_grid:
        return tune.grid_search(dist.grid_values(grid_points or 3))
    if dist.is_categorical:
        return tune.choice(list(dist.args))
    if dist.is_int:  # inclusive bounds, as the contract says; Ray's randint excludes hi
        return (tune.lograndint if dist.log else tune.randint)(dist.low, dist.high + 1)
    return (tune.loguniform if dist.log else tune.uniform)(dist.low, dist.high)


def param_space(exp, constants_only: bool = False) -> dict:
    """The Tuner's param_space: a Ray Tune domain per searched parameter, and the constants."""
    if constants_only:  # the searcher draws every searched value itself (Optuna define-by-run, a branching grid)
        return dict(exp.constants)
    grid = exp.search.grid_points if exp.search.algorithm == "grid" else 0
    space = {}
    for k, d in exp.searched.items():
        assert isinstance(d, Distribution)  # a conditional space's searcher draws it (searchers.build: constants_only)
        space[k] = to_tune(d, grid)
    space.update(exp.constants)
    return space


PRIMITIVE = (type(None), bool, int, float, str)


# --------------------------------------------------------------------------- the space as Optuna sees it
def _distribution(d: Distribution):
    import optuna.distributions as od

    if d.is_categorical:
        return od.CategoricalDistribution(_choices(d.args))
    return (od.IntDistribution if d.is_int else od.FloatDistribution)(d.low, d.high, log=d.log)


def _choices(values: tuple) -> list:
    # Optuna stores only plain scalars; a choice of lists (mlp hidden widths) is searched by its index
    return list(values) if all(isinstance(v, PRIMITIVE) for v in values) else list(range(len(values)))


def _decode(values: tuple, x: Any) -> Any:
    return x if all(isinstance(v, PRIMITIVE) for v in values) else values[x]


def _encode(values: tuple, v: Any) -> Any:
    if all(isinstance(c, PRIMITIVE) for c in values):
        return v if v in values else None
    return values.index(v) if v in values else None


class DefineByRun:
    """What OptunaSearch calls once per trial: suggests the drawn branches only, returns the config.
    A class, not a closure: Ray pickles the searcher (and so this) with every experiment snapshot."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, captor) -> dict:
        # the raw trial, not Ray's captor: the captor would copy Optuna's branch names into the config
        return self._walk(getattr(captor, "ot_trial", captor), self.space, "")

    def _walk(self, trial, sub: dict, prefix: str) -> dict:
        cfg: dict = {}
        for k, node in sub.items():
            name = prefix + k
            if isinstance(node, Conditional):
                opts = node.args
                opt = _decode(opts, trial.suggest_categorical(name, _choices(opts)))
                branch = node.branch(opt)
                cfg[k] = opt
                cfg.update({n: v for n, v in branch.items() if not is_searched(v)})
                cfg.update(self._walk(trial, {n: v for n, v in branch.items() if is_searched(v)}, f"{name}.{opt}."))
            else:
                cfg[k] = _suggest(trial, name, node)
        return cfg


def _suggest(trial, name: str, d: Distribution) -> Any:
    if d.is_categorical:
        return _decode(d.args, trial.suggest_categorical(name, _choices(d.args)))
    return (trial.suggest_int if d.is_int else trial.suggest_float)(name, d.low, d.high, log=d.log)


def optuna_params(space: dict, config: dict, prefix: str = "") -> tuple[dict, dict] | None:
    """A config -> (Optuna params, their distributions) under this space; None if it does not fit
    (a value outside a range, an option this space lacks). Missing parameters are left to the sampler."""
    params, dists = {}, {}
    for k, node in space.items():
        if k not in config:
            continue
        name = prefix + k
        if isinstance(node, Conditional):
            opts = node.args
            enc = _encode(opts, config[k])
            if enc is None:
                return None
            params[name], dists[name] = enc, _distribution(node.as_choice())
            branch = {n: v for n, v in dict(node.options)[config[k]].items() if is_searched(v)}
            sub = optuna_params(branch, config, f"{name}.{config[k]}.")
            if sub is None:
                return None
            params.update(sub[0])
            dists.update(sub[1])
            continue
        dist = _distribution(node)
        v = config[k]
        if node.is_categorical:
            v = _encode(node.args, v)
            if v is None:
                return None
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            v = int(round(v)) if node.is_int else float(v)
            if not contains(dist, v):
                return None
        else:
            return None
        params[name], dists[name] = v, dist
    return params, dists


# --------------------------------------------------------------------------- samplers
