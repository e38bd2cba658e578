"""The space file's distributions in the searchers' terms: a `spaces.Distribution` as a Ray Tune domain
(`to_tune`), as Optuna distributions (`optuna_params`, define-by-run `DefineByRun`)."""
from __future__ import annotations

from typing import Any

from ray import tune

from tuner.search.adapters import contains
from tuner.spaces import Conditional, Distribution


def to_tune(dist: Distribution, grid_points: int = 0):
    """The Ray Tune domain. With grid_points > 0 every distribution becomes a grid."""
    if grid_points or dist.kind == "grid":
        return tune.grid_search(dist.grid_values(grid_points or 3))
    lo, hi = (dist.args + (None, None))[:2]
    if dist.kind == "uniform":
        return tune.uniform(lo, hi)
    if dist.kind == "loguniform":
        return tune.loguniform(lo, hi)
    if dist.kind == "int":  # inclusive bounds, as the contract says; Ray's randint excludes hi
        return tune.randint(lo, hi + 1)
    if dist.kind == "logint":
        return tune.lograndint(lo, hi + 1)
    return tune.choice(list(dist.args))


PRIMITIVE = (type(None), bool, int, float, str)


# --------------------------------------------------------------------------- the space as Optuna sees it
def _distribution(d: Distribution):
    import optuna.distributions as od

    lo, hi = (d.args + (None, None))[:2]
    if d.kind in ("uniform", "loguniform"):
        return od.FloatDistribution(lo, hi, log=d.kind == "loguniform")
    if d.kind in ("int", "logint"):
        return od.IntDistribution(lo, hi, log=d.kind == "logint")
    return od.CategoricalDistribution(_choices(d.args))


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
                branch = dict(node.options)[opt]
                cfg[k] = opt
                cfg.update({n: v for n, v in branch.items() if not isinstance(v, (Distribution, Conditional))})
                cfg.update(self._walk(trial, {n: v for n, v in branch.items()
                                              if isinstance(v, (Distribution, Conditional))}, f"{name}.{opt}."))
            else:
                cfg[k] = _suggest(trial, name, node)
        return cfg


def _suggest(trial, name: str, d: Distribution) -> Any:
    lo, hi = (d.args + (None, None))[:2]
    if d.kind in ("uniform", "loguniform"):
        return trial.suggest_float(name, lo, hi, log=d.kind == "loguniform")
    if d.kind in ("int", "logint"):
        return trial.suggest_int(name, lo, hi, log=d.kind == "logint")
    return _decode(d.args, trial.suggest_categorical(name, _choices(d.args)))


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
            params[name], dists[name] = enc, _distribution(Distribution("choice", opts))
            branch = {n: v for n, v in dict(node.options)[config[k]].items()
                      if isinstance(v, (Distribution, Conditional))}
            sub = optuna_params(branch, config, f"{name}.{config[k]}.")
            if sub is None:
                return None
            params.update(sub[0])
            dists.update(sub[1])
            continue
        dist = _distribution(node)
        v = config[k]
        if node.kind in ("choice", "grid"):
            v = _encode(node.args, v)
            if v is None:
                return None
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            v = int(round(v)) if node.kind in ("int", "logint") else float(v)
            if not contains(dist, v):
                return None
        else:
            return None
        params[name], dists[name] = v, dist
    return params, dists


# --------------------------------------------------------------------------- samplers
