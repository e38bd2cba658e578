"""The search-space grammar: every distribution, constants, fixed-over-space, overrides, and each user error."""
from __future__ import annotations

from pathlib import Path

import pytest

from tuner import spaces
from tuner.errors import UserError

BASE = """
name: t
dataset: {name: digits}
family: cnn
search: {algorithm: optuna, num_samples: 4}
scheduler: {name: asha, max_epochs: 3}
space:
  lr: {loguniform: [1.0e-4, 1.0e-1]}
  batch_size: {choice: [16, 32]}
  dropout: {uniform: [0.0, 0.5]}
  blocks: {int: [1, 3]}
  channels: {logint: [8, 64]}
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_distribution_parses_to_its_kind(tmp_path):
    exp = spaces.load(write(tmp_path, BASE))
    kinds = {k: d.kind for k, d in exp.searched.items()}
    assert kinds == {"lr": "loguniform", "batch_size": "choice", "dropout": "uniform", "blocks": "int",
                     "channels": "logint"}


def test_int_bounds_are_inclusive_in_ray_domain(tmp_path):
    d = spaces.load(write(tmp_path, BASE)).searched["blocks"].to_tune()
    values = {d.sample() for _ in range(300)}
    assert values == {1, 2, 3}


def test_fixed_wins_over_space_and_set_pins_a_searched_parameter(tmp_path):
    exp = spaces.load(write(tmp_path, BASE), ["fixed.lr=0.01"])
    assert "lr" not in exp.searched
    assert exp.constants["lr"] == 0.01


def test_set_overrides_nested_keys_with_yaml_values(tmp_path):
    exp = spaces.load(write(tmp_path, BASE), ["search.num_samples=7", "space.lr={uniform: [0.1, 0.2]}",
                                              "dataset.split.seed=3"])
    assert exp.num_samples == 7
    assert exp.searched["lr"].kind == "uniform"
    assert exp.dataset.split.seed == 3


def test_constant_in_space_is_not_searched(tmp_path):
    exp = spaces.load(write(tmp_path, BASE + "  optimizer: sgd\n"))
    assert exp.constants["optimizer"] == "sgd" and "optimizer" not in exp.searched


def test_name_defaults_to_file_stem(tmp_path):
    exp = spaces.load(write(tmp_path, BASE.replace("name: t\n", ""), "my_space.yaml"))
    assert exp.name == "my_space"


def test_grid_values_cover_continuous_ranges_for_grid_search():
    d = spaces.parse_distribution({"loguniform": [1e-4, 1e-2]}, "x")
    assert d.grid_values(3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert spaces.parse_distribution({"int": [1, 4]}, "x").grid_values(4) == [1, 2, 3, 4]


@pytest.mark.parametrize("override, fragment", [
    (["bogus=1"], "unknown key 'bogus'"),
    (["dataset.bogus=1"], "dataset.bogus"),
    (["space.depth={int: [1, 2]}"], "does not take 'depth'"),
    (["space.lr={loguniform: [0, 1]}"], "space.lr"),
    (["space.lr={uniform: [0.5, 0.1]}"], "reversed"),
    (["space.batch_size={choice: []}"], "space.batch_size"),
    (["space.lr={normal: [0, 1]}"], "unknown distribution 'normal'"),
    (["space.optimizer={choice: [sgd, lion]}"], "lion"),
    (["family=resnet"], "unknown family 'resnet'"),
    (["dataset.name=mnist"], "dataset.name"),
    (["scheduler.name=bohb"], "scheduler.name"),
    (["search.algorithm=bayes"], "search.algorithm"),
    (["dataset.split.val=1.5"], "dataset.split.val"),
    (["scheduler.grace_period=9"], "grace_period"),
    (["search.num_samples=0"], "search.num_samples"),
    (["fixed.lr={uniform: [0.1, 0.2]}"], "fixed.lr"),
    (["dataset.name=cifar10"], "dataset.root"),
    (["space.batch_size={grid: [16, 32]}"], "Optuna"),
])
def test_bad_input_is_a_user_error_naming_the_key(tmp_path, override, fragment):
    with pytest.raises(UserError) as err:
        spaces.load(write(tmp_path, BASE), override)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    p = write(tmp_path, "name: x\nspace: {lr: [\n")
    with pytest.raises(UserError, match=r"s\.yaml: not valid YAML at line"):
        spaces.load(p)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such space file"):
        spaces.load(tmp_path / "nope.yaml")


def test_suite_lists_members_relative_to_itself(tmp_path):
    write(tmp_path, BASE, "a.yaml")
    suite = spaces.load(write(tmp_path, "name: s\nsuite: [a.yaml]\n", "suite.yaml"))
    assert isinstance(suite, spaces.Suite) and suite.members == [(tmp_path / "a.yaml").resolve()]


def test_suite_with_missing_member_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="suite member 'b.yaml' not found"):
        spaces.load(write(tmp_path, "suite: [b.yaml]\n", "suite.yaml"))


def test_smoke_shrinks_to_two_trials_one_epoch_small_subset(tmp_path):
    exp = spaces.smoke(spaces.load(write(tmp_path, BASE)))
    assert (exp.num_samples, exp.scheduler.max_epochs) == (2, 1)
    assert exp.dataset.limit <= 300


def test_resolved_yaml_round_trips(tmp_path):
    import yaml

    exp = spaces.load(write(tmp_path, BASE), ["fixed.dropout=0.1"])
    again = spaces.parse_experiment(yaml.safe_load(spaces.resolved_yaml(exp)))
    assert again.searched == exp.searched and again.constants == exp.constants


# --------------------------------------------------------------------------- search power (issue 15)
COND = """
name: c
dataset: {name: digits}
family: features
scheduler: {name: fifo, max_epochs: 1}
fixed: {backbone: pixels}
space:
  classifier:
    choice:
      logreg: {C: {loguniform: [1.0e-3, 1.0e+2]}}
      svm: {C: {loguniform: [1.0e-2, 1.0e+3]}, kernel: {choice: [rbf, linear]}}
      random_forest: {n_estimators: {int: [50, 500]}, max_depth: {int: [2, 32]}}
"""


def test_conditional_choice_parses_to_a_tree_and_prints_back(tmp_path):
    exp = spaces.load(write(tmp_path, COND))
    node = exp.searched["classifier"]
    assert isinstance(node, spaces.Conditional)
    assert node.args == ("logreg", "svm", "random_forest")
    assert exp.param_names == ["classifier", "C", "kernel", "n_estimators", "max_depth"]
    again = spaces.parse_experiment(__import__("yaml").safe_load(spaces.resolved_yaml(exp)))
    assert again.searched["classifier"] == node


def test_a_conditional_grid_expands_each_option_with_its_own_subspace(tmp_path):
    exp = spaces.load(write(tmp_path, COND), ["search.algorithm=grid", "search.grid_points=2"])
    configs = spaces.grid_configs(exp.searched, 2)
    assert len(configs) == 2 + 2 * 2 + 2 * 2
    assert {"classifier": "logreg", "C": 0.001} in configs
    assert all("kernel" not in c for c in configs if c["classifier"] != "svm")


@pytest.mark.parametrize("override,key", [
    (["space.classifier.choice.svm.kernel={choice: [rbf, nope]}"], "space.classifier.choice.svm"),
    (["space.classifier.choice.svm.C={loguniform: [0, 1]}"], "space.classifier.choice.svm.C"),
    (["space.C=1.0"], "space.classifier.choice.logreg.C"),
    (["space.classifier.choice.svm=3"], "space.classifier.choice.svm"),
    (["metric=[val_accuracy, latency_ms]", "mode=[max]"], "mode"),
    (["metric=[val_accuracy, speed]", "mode=[max, min]"], "metric[1]"),
    (["constraints={latency_ms: {below: 3}}"], "constraints.latency_ms"),
    (["constraints={nonsense: {max: 3}}"], "constraints.nonsense"),
    (["search.sampler=annealing"], "search.sampler"),
    (["search.sampler=nsga2"], "search.sampler nsga2"),
    (["search.sampler=gp"], "search.sampler gp"),
    (["search.algorithm=random", "search.sampler=gp"], "search.sampler"),
    (["search.time_budget=10 minutes"], "search.time_budget"),
    (["search.time_budget=0"], "search.time_budget"),
    (["search.warm_start=[{nope: 1}]"], "search.warm_start[0].nope"),
    (["search.warm_start=/no/such/folder"], "search.warm_start"),
    (["metric=[val_accuracy, num_params]", "mode=[max, min]", "scheduler.name=median"], "scheduler.name"),
    (["scheduler.name=pbt"], "scheduler pbt"),
])
def test_bad_search_power_keys_are_user_errors_naming_the_key(tmp_path, override, key):
    with pytest.raises(UserError) as e:
        spaces.load(write(tmp_path, COND), override)
    assert "s.yaml" in str(e.value) and key in str(e.value)


def test_cmaes_on_a_categorical_only_space_is_rejected(tmp_path):
    text = BASE.replace("  lr: {loguniform: [1.0e-4, 1.0e-1]}\n", "").replace(
        "  dropout: {uniform: [0.0, 0.5]}\n  blocks: {int: [1, 3]}\n  channels: {logint: [8, 64]}\n", "")
    with pytest.raises(UserError, match="cmaes"):
        spaces.load(write(tmp_path, text), ["search.sampler=cmaes"])
    spaces.load(write(tmp_path, BASE), ["search.sampler=cmaes"])  # with numbers it is fine


@pytest.mark.parametrize("text,seconds", [(90, 90.0), ("30s", 30.0), ("10m", 600.0), ("2h", 7200.0), ("1.5m", 90.0)])
def test_time_budget_takes_seconds_or_a_duration_and_lifts_num_samples(tmp_path, text, seconds):
    exp = spaces.load(write(tmp_path, BASE.replace("num_samples: 4", "seed: 0")), [f"search.time_budget={text}"])
    assert exp.search.time_budget == seconds and exp.num_samples == -1


def test_multi_objective_with_constraints_parses(tmp_path):
    exp = spaces.load(write(tmp_path, COND), ["metric=[val_accuracy, latency_ms]", "mode=[max, min]",
                                              "constraints={num_params: {max: 5.0e+6}, latency_ms: {max: 10}}"])
    assert exp.multi and exp.metrics == ["val_accuracy", "latency_ms"] and exp.modes == ["max", "min"]
    assert exp.constraints == {"num_params": {"max": 5.0e6}, "latency_ms": {"max": 10.0}}


def test_pareto_front_keeps_exactly_the_non_dominated_rows():
    import pandas as pd

    from tuner.searchers import pareto_front

    df = pd.DataFrame({"acc": [0.9, 0.8, 0.95, 0.7, 0.95], "lat": [2.0, 1.0, 3.0, 1.5, 4.0]})
    front = pareto_front(df, ["acc", "lat"], ["max", "min"])
    assert list(front.index) == [0, 1, 2]
