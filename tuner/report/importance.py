"""Which searched parameters mattered: Optuna's fANOVA over the finished trials (read by the search plots)."""
from __future__ import annotations

import pandas as pd


def importance(trials: pd.DataFrame, searched: dict, metric: str, mode: str) -> dict[str, float]:
    """Optuna's parameter importance (fANOVA) over the finished trials, rebuilt as an in-memory study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ok = trials[trials[metric].notna()] if metric in trials else trials.iloc[0:0]
    if len(ok) < 3 or not searched:
        return {}
    Numeric = optuna.distributions.IntDistribution | optuna.distributions.FloatDistribution
    dists: dict[str, optuna.distributions.CategoricalDistribution | Numeric] = {}
    for k, d in searched.items():
        if k not in ok or ok[k].isna().all():  # a branch no trial drew (a nested option never reached)
            continue
        if d.is_categorical:
            # the values as trials.csv spells them (lists come back as YAML text)
            dists[k] = optuna.distributions.CategoricalDistribution(sorted({str(v) for v in ok[k].dropna()}))
        elif d.is_int:
            dists[k] = optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log)
        else:
            dists[k] = optuna.distributions.FloatDistribution(float(d.low), float(d.high), log=d.log)
    if not dists:
        return {}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in ok.iterrows():
        params: dict[str, object] = {}
        for k, dist in dists.items():
            v = row[k]
            if pd.isna(v):  # not drawn in this trial (a conditional branch): Optuna ranks what all trials share
                continue
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[k] = str(v)
            else:  # clip into the bounds: a float may print one ulp outside them
                v = min(max(float(v), dist.low), dist.high)
                params[k] = int(round(v)) if isinstance(dist, optuna.distributions.IntDistribution) else v
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=float(row[metric])))
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
