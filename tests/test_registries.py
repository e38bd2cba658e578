"""Schedulers and samplers are registries with capability flags: validation, `tuner schema` and the docs read
the flags, so a new scheduler or sampler is one registered function (tuner/search/schedulers.py, samplers.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tuner import docs, schema, spaces
from tuner.errors import UserError
from tuner.search import samplers, schedulers

ROOT = Path(__file__).resolve().parent.parent

COND = """
name: t
dataset: {name: digits}
family: features
search: {algorithm: optuna, num_samples: 4}
scheduler: {name: fifo, max_epochs: 1}
fixed: {backbone: pixels}
space:
  classifier:
    choice:
      logreg: {C: {loguniform: [1.0e-3, 1.0e+2]}}
      svm: {C: {loguniform: [1.0e-2, 1.0e+3]}}
"""


@pytest.fixture
def registered():
    """Registers test entries; removes them again whatever the test does."""
    added: list[tuple[dict, str]] = []

    def add(table: dict, name: str, register, build=None, **flags):
        register(name, **flags)(build or (lambda exp: None))
        added.append((table, name))

    yield add
    for table, name in added:
        table.pop(name, None)


def _load(tmp_path: Path, overrides: list[str]):
    p = tmp_path / "s.yaml"
    p.write_text(COND)
    return spaces.load(p, overrides)


def test_search_algorithms_doc_is_generated_from_the_registries():
    checked_in = (ROOT / "docs" / "search-algorithms.md").read_text()
    assert checked_in == docs.render_search_algorithms(), "run `python -m tuner.docs`"


def test_a_registered_scheduler_is_a_choice_and_its_flags_are_the_rules(tmp_path, registered):
    with pytest.raises(UserError, match="scheduler.name"):
        _load(tmp_path, ["scheduler.name=steady"])
    registered(schedulers.SCHEDULERS, "steady", schedulers.register_scheduler, multi_objective=False,
               conditional=False, needs_epochs=True)
    with pytest.raises(UserError, match="scheduler steady needs one fixed set of parameters"):
        _load(tmp_path, ["scheduler.name=steady"])
    _load(tmp_path, ["scheduler.name=steady", "space.classifier=logreg", "space.C={uniform: [0.1, 1.0]}"])
    enum = schema.schema()["oneOf"][0]["properties"]["scheduler"]["properties"]["name"]["enum"]
    assert "steady" in enum
    assert "| `steady` |" in docs.render_search_algorithms()


def test_a_registered_sampler_is_a_choice_and_its_flags_are_the_rules(tmp_path, registered):
    registered(samplers.SAMPLERS, "pareto_only", samplers.register_sampler, multi_objective=True,
               constraints=False, conditional=True, single_objective=False)
    with pytest.raises(UserError, match="search.sampler pareto_only is a multi-objective sampler"):
        _load(tmp_path, ["search.sampler=pareto_only"])
    _load(tmp_path, ["search.sampler=pareto_only", "metric=[val_accuracy, num_params]", "mode=[max, min]"])
    enum = schema.schema()["oneOf"][0]["properties"]["search"]["properties"]["sampler"]["enum"]
    assert "pareto_only" in enum


def test_the_message_names_the_samplers_that_can_do_it(tmp_path):
    with pytest.raises(UserError) as e:
        _load(tmp_path, ["search.sampler=gp"])
    able = [n for n, s in samplers.SAMPLERS.items() if s.conditional]
    assert all(n in str(e.value) for n in able) and "gp" not in str(e.value).split("use ", 1)[1]


@pytest.mark.slow  # fresh interpreters: their imports take seconds
def test_validation_reads_the_flags_without_ray_or_optuna():
    code = ("import sys, tuner.spaces, tuner.schema, tuner.docs; tuner.docs.render_search_algorithms(); "
            "bad = [m for m in ('ray', 'optuna') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- the contracts (tuner.testing)
# every shipped scheduler and sampler, named here so that a new one cannot skip its contract check
SCHEDULER_CASES = ("fifo", "asha", "hyperband", "median", "pbt")
SAMPLER_CASES = ("tpe", "gp", "cmaes", "nsga2", "qmc", "random")


def test_every_registered_scheduler_and_sampler_is_in_the_contract_tables():
    assert set(SCHEDULER_CASES) == set(schedulers.SCHEDULERS), "add the new scheduler to SCHEDULER_CASES"
    assert set(SAMPLER_CASES) == set(samplers.SAMPLERS), "add the new sampler to SAMPLER_CASES"


@pytest.mark.parametrize("name", SCHEDULER_CASES)
def test_shipped_scheduler_keeps_the_contract(name):
    from tuner.testing import check_scheduler

    check_scheduler(name)


@pytest.mark.parametrize("name", SAMPLER_CASES)
def test_shipped_sampler_keeps_the_contract(name):
    from tuner.testing import check_sampler

    check_sampler(name)


class FixedNames(optuna.samplers.RandomSampler):
    """Random draws that refuse a conditional branch's parameters (their names hold a dot)."""

    def sample_independent(self, study, trial, name, dist):
        if "." in name:  # a branch parameter (optimizer.sgd.momentum)
            raise RuntimeError(f"{name} is not in my fixed set of parameters")
        return super().sample_independent(study, trial, name, dist)


def test_the_contract_catches_a_sampler_whose_flags_overclaim(registered):
    """A sampler registered as taking conditional choices that cannot draw a branch's parameters."""
    from tuner.testing import check_sampler

    def fixed_names(exp):
        """Random draws over a fixed set of names."""
        return FixedNames(seed=0)

    registered(samplers.SAMPLERS, "fixed_names", samplers.register_sampler, build=fixed_names,
               multi_objective=False, constraints=False, conditional=True)
    with pytest.raises(RuntimeError, match="not in my fixed set"):
        check_sampler("fixed_names", trials=12)


def test_the_contract_catches_a_scheduler_that_builds_no_ray_scheduler(registered):
    from tuner.testing import check_scheduler

    def not_one(exp):
        """Builds a name instead of a scheduler."""
        return "asha"

    registered(schedulers.SCHEDULERS, "not_one", schedulers.register_scheduler, build=not_one,
               multi_objective=False, conditional=False, needs_epochs=True)
    with pytest.raises(AssertionError, match="built str"):
        check_scheduler("not_one")
