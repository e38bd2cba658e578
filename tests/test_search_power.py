"""Real searches (in-process, small digits subsets) for conditional spaces, several objectives, constraints,
samplers, time budgets and warm starts (issue 15)."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tuner import spaces
from tuner.commands import run_search
from tuner.metrics import pareto_front

COND = """
name: cond
dataset: {name: digits, limit: 300}
family: features
search: {num_samples: 6, max_concurrent: 2, seed: 0}
scheduler: {name: fifo, max_epochs: 1}
fixed: {backbone: pixels}
space:
  classifier:
    choice:
      logreg: {C: {loguniform: [1.0e-3, 1.0e+2]}}
      svm: {C: {loguniform: [1.0e-2, 1.0e+3]}, kernel: {choice: [rbf, linear]}}
      random_forest: {n_estimators: {int: [10, 40]}, max_depth: {int: [2, 8]}}
"""


def _exp(tmp_path, text, overrides=()):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return spaces.load(p, list(overrides))


def _search(exp, results):
    return run_search(exp, results, retrain=False, dashboard=False, say=lambda _: None)


@pytest.mark.slow
def test_conditional_two_objective_search_with_a_constraint_and_warm_start(tmp_path, results):
    # logreg on 64 pixels has 650 parameters, an SVM or forest more: the constraint leaves logreg only
    exp = _exp(tmp_path, COND, ["metric=[val_accuracy, latency_ms]", "mode=[max, min]",
                                "constraints={num_params: {max: 700}}",
                                "search.warm_start=[{classifier: svm, C: 1.0, kernel: linear}]"])
    d = _search(exp, results)
    trials = pd.read_csv(d / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 6
    first = trials.iloc[0]  # the warm-start config ran first, exactly as given
    assert (first["classifier"], float(first["C"]), first["kernel"]) == ("svm", 1.0, "linear")
    # a branch's parameters are empty where another option was drawn
    assert trials.loc[trials["classifier"] != "svm", "kernel"].isna().all()
    assert trials.loc[trials["classifier"] == "logreg", "n_estimators"].isna().all()
    assert (trials["feasible"] == (trials["num_params"] <= 700)).all() and not trials["feasible"].all()
    front = pd.read_csv(d / "pareto.csv", dtype={"trial_id": str})
    assert len(front) and front["feasible"].all()
    feasible = trials[trials["feasible"]]
    assert set(front["trial_id"]) == set(feasible.loc[pareto_front(feasible, ["val_accuracy", "latency_ms"],
                                                                   ["max", "min"]).index, "trial_id"])
    best = yaml.safe_load((d / "best.yaml").read_text())
    assert best["trial_id"] in set(front["trial_id"])
    assert best["metrics"]["val_accuracy"] == front["val_accuracy"].max()
    assert (d / "plots" / "parameters.png").is_file()

    # a later search seeded with this folder: its finished trials are in the study before the first trial
    exp2 = _exp(tmp_path, COND.replace("name: cond", "name: cond2"),
                ["search.num_samples=2", f"search.warm_start={d}"])
    from tuner.search.study import folder_trials

    seeded = folder_trials(exp2)
    assert len(seeded) == len(trials)
    assert all(p["classifier"] in ("logreg", "svm", "random_forest") for p, _, _, _ in seeded)
    d2 = _search(exp2, results)
    assert len(pd.read_csv(d2 / "trials.csv")) == 2


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["tpe", "gp", "cmaes", "qmc", "random", "nsga2"])
def test_every_sampler_runs_a_small_search(tmp_path, results, sampler):
    text = COND.split("space:")[0].replace("family: features", "family: features") + """space:
  C: {loguniform: [1.0e-3, 1.0e+2]}
  max_iter: {int: [50, 200]}
"""
    over = [f"search.sampler={sampler}", "search.num_samples=3"]
    if sampler == "nsga2":
        over += ["metric=[val_accuracy, train_time_s]", "mode=[max, min]"]
    d = _search(_exp(tmp_path, text, over), results)
    trials = pd.read_csv(d / "trials.csv")
    assert len(trials) == 3 and trials["val_accuracy"].notna().all()
    assert trials["C"].between(1e-3, 1e2).all() and trials["max_iter"].between(50, 200).all()


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2"])
def test_constraint_values_reach_optunas_samplers_without_the_deprecated_constraints_func(tmp_path, sampler):
    import warnings

    import optuna

    from tuner.metrics import constraint_values
    from tuner.search.searchers import make_sampler
    from tuner.search.study import constraint_attrs

    flat = "name: flat\ndataset: {name: digits}\nfamily: linear\nspace: {lr: {loguniform: [1.0e-3, 1.0]}}\n"
    exp = _exp(tmp_path, flat, [f"search.sampler={sampler}", "constraints={num_params: {max: 700}}"]
               + (["metric=[val_accuracy, num_params]", "mode=[max, min]"] if sampler == "nsga2" else []))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # Optuna 5 warns about constraints_func
        study = optuna.create_study(directions=["maximize"] * len(exp.metrics), sampler=make_sampler(exp))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for i, params in enumerate((650, 5000)):  # feasible, then over the bound
        values = constraint_values({"num_params": params}, exp.constraints)
        study.add_trial(optuna.trial.create_trial(params={"x": i / 2}, distributions=dist,
                                                  values=[0.5] * len(exp.metrics),
                                                  system_attrs=constraint_attrs(values, exp.constraints)))
    assert [t.constraints for t in study.trials] == [{"num_params.max": -50.0}, {"num_params.max": 4300.0}]
    from optuna.study._constrained_optimization import _get_feasible_trials

    assert [t.number for t in _get_feasible_trials(study.trials)] == [0]  # what the samplers rank by


@pytest.mark.parametrize("sampler", ["tpe", "gp", "cmaes", "qmc", "random", "nsga2"])
def test_every_sampler_survives_pickling_and_samples_after_it(tmp_path, sampler):
    # Ray pickles the searcher (and so its sampler) into every experiment snapshot; Optuna 5.1's NSGA-II
    # holds a threading.Lock, which pickle refuses ("cannot pickle '_thread.lock' object")
    import pickle

    import optuna

    from tuner.search.searchers import make_sampler

    flat = "name: flat\ndataset: {name: digits}\nfamily: linear\nspace: {lr: {loguniform: [1.0e-3, 1.0]}}\n"
    over = [f"search.sampler={sampler}", "search.num_samples=8"]
    if sampler == "nsga2":
        over += ["metric=[val_accuracy, num_params]", "mode=[max, min]"]
    exp = _exp(tmp_path, flat, over)
    restored = pickle.loads(pickle.dumps(make_sampler(exp)))
    study = optuna.create_study(directions=["maximize"] * len(exp.metrics), sampler=restored)
    study.optimize(lambda t: [t.suggest_float("lr", 1e-3, 1.0, log=True)] * len(exp.metrics), n_trials=6)
    pickle.loads(pickle.dumps(restored))  # and again, after it has sampled
    assert len(study.trials) == 6


@pytest.mark.slow
def test_a_conditional_grid_runs_every_option_times_the_grid_of_its_branch(tmp_path, results):
    # Ray's points_to_evaluate need every key in the param_space, which holds only constants here: this
    # failed at the first trial with KeyError: 'classifier'
    text = COND.replace("search: {num_samples: 6,", "search: {algorithm: grid, grid_points: 2,").replace(
        "      random_forest: {n_estimators: {int: [10, 40]}, max_depth: {int: [2, 8]}}\n", "")
    d = _search(_exp(tmp_path, text), results)
    trials = pd.read_csv(d / "trials.csv")
    assert trials["val_accuracy"].notna().all()
    got = sorted(zip(trials["classifier"], trials["C"], trials["kernel"].fillna("-")))
    assert got == [("logreg", 0.001, "-"), ("logreg", 100.0, "-"), ("svm", 0.01, "linear"), ("svm", 0.01, "rbf"),
                   ("svm", 1000.0, "linear"), ("svm", 1000.0, "rbf")]


def test_a_conditional_grid_hands_out_each_point_once_and_resumes_where_it_was(tmp_path):
    from tuner.search.searchers import GridPoints, conditional_grid

    text = COND.replace("search: {num_samples: 6,", "search: {algorithm: grid, grid_points: 2,")
    exp = _exp(tmp_path, text, ["search.warm_start=[{classifier: svm, C: 5.0}]"])
    points = conditional_grid(exp)
    assert points[0] == {"classifier": "svm", "C": 5.0, "kernel": "rbf"}  # completed from the svm grid
    assert len(points) == 1 + 2 + 4 + 4
    g = GridPoints(points)
    first = [g.suggest(str(i)) for i in range(3)]
    g.save(str(tmp_path / "state.json"))
    again = GridPoints([])
    again.restore(str(tmp_path / "state.json"))
    rest = [again.suggest(str(i)) for i in range(len(points) - 3)]
    assert first + rest == points and again.suggest("x") == GridPoints.FINISHED
