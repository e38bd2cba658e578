"""A parsed distribution says what it is (categorical, whole numbers, log scale, bounds), so no consumer tests
kind strings; the report reads the same objects from space.yaml."""
from __future__ import annotations

import pytest

from tuner.report.experiment import searched_params
from tuner.spaces import KINDS, Conditional, Distribution, parse_distribution, parse_experiment


@pytest.mark.parametrize("text,categorical,integer,log", [
    ({"uniform": [0.0, 1.0]}, False, False, False),
    ({"loguniform": [1.0e-4, 1.0e-1]}, False, False, True),
    ({"int": [1, 5]}, False, True, False),
    ({"logint": [8, 64]}, False, True, True),
    ({"choice": [16, 32]}, True, False, False),
    ({"grid": ["a", "b"]}, True, False, False),
])
def test_each_kind_says_what_it_is(text, categorical, integer, log):
    d = parse_distribution(text, "x")
    assert (d.is_categorical, d.is_numeric, d.is_int, d.log) == (categorical, not categorical, integer, log)
    assert d.is_grid == ("grid" in text)
    assert set(KINDS) == {"uniform", "loguniform", "int", "logint", "choice", "grid"}


def test_contains_is_the_space_a_sampler_draws_from():
    assert parse_distribution({"int": [1, 5]}, "x").contains(3)
    assert not parse_distribution({"int": [1, 5]}, "x").contains(2.5)
    assert not parse_distribution({"uniform": [0.0, 1.0]}, "x").contains(True)
    assert parse_distribution({"choice": [True, 1]}, "x").contains(1)
    assert not parse_distribution({"choice": [True]}, "x").contains(1)  # YAML's true is not the option 1


def test_a_conditional_choice_reads_as_a_categorical_of_its_options():
    node = parse_distribution({"choice": {"sgd": {"momentum": {"uniform": [0.5, 0.9]}}, "adam": None}}, "x")
    assert isinstance(node, Conditional) and node.is_categorical and not node.is_numeric
    assert node.as_choice() == Distribution("choice", ("sgd", "adam"))
    assert node.branch("adam") == {}


def test_the_report_reads_parsed_distributions_merging_a_name_in_several_branches():
    space = {"name": "x", "family": "mlp", "fixed": {}, "space": {
        "lr": {"loguniform": [1.0e-4, 1.0e-1]},
        "optimizer": {"choice": {"sgd": {"momentum": {"uniform": [0.5, 0.9]}},
                                 "rmsprop": {"momentum": {"uniform": [0.0, 0.6]}}}}}}
    got = searched_params(parse_experiment(space))
    assert got == {"lr": Distribution("loguniform", (1.0e-4, 1.0e-1)),
                   "optimizer": Distribution("choice", ("sgd", "rmsprop")),
                   "momentum": Distribution("uniform", (0.0, 0.9))}
    assert got["lr"].log and got["optimizer"].is_categorical


def test_the_report_plots_the_branch_a_fixed_option_leaves_and_no_other():
    # fixed: {optimizer: sgd} pins the conditional choice: trials drew sgd's momentum, never rmsprop's eps
    space = {"name": "x", "family": "mlp", "fixed": {"optimizer": "sgd"}, "space": {
        "lr": {"loguniform": [1.0e-4, 1.0e-1]},
        "optimizer": {"choice": {"sgd": {"momentum": {"uniform": [0.5, 0.9]}},
                                 "rmsprop": {"eps": {"loguniform": [1.0e-8, 1.0e-6]}}}}}}
    assert set(searched_params(parse_experiment(space))) == {"lr", "momentum"}
