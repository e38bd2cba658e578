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
