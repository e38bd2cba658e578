"""`tuner schema`: the JSON Schema built from the validating definitions accepts every shipped space file and
rejects what `tuner validate` rejects."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tuner import spaces
from tuner.cli import main
from tuner.errors import UserError
from tuner.families import FAMILIES
from tuner.schema import schema

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def test_schema_command_prints_a_draft_2020_12_schema(capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert printed == json.loads(json.dumps(schema()))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_space_file_is_valid(validator, path):
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors, errors


def test_schema_follows_the_definitions_not_a_copy():
    s = schema()
    experiment = s["oneOf"][0]
    assert set(experiment["properties"]) == spaces.TOP_KEYS
    assert set(experiment["properties"]["search"]["properties"]) == {f.name for f in spaces.dataclasses.fields(
        spaces.SearchConfig)}
    assert {c["if"]["properties"]["family"]["const"] for c in experiment["allOf"]} == set(FAMILIES)
    for name, fam in FAMILIES.items():
        assert set(s["$defs"][f"{name}_space"]["properties"]) == set(fam.params)
    kinds = {next(iter(k["properties"])) for k in
             s["$defs"]["cnn_space"]["properties"]["lr"]["anyOf"][0]["oneOf"]}
    assert kinds == set(spaces.DISTRIBUTIONS)


BASE = yaml.safe_load((SPACES / "digits_cnn.yaml").read_text())


def _broken(change) -> dict:
    raw = copy.deepcopy(BASE)
    change(raw)
    return raw


BROKEN = {
    "unknown top-level key": lambda r: r.update(optimiser="adam"),
    "param the family does not take (fixed)": lambda r: r["fixed"].update(k=5),  # k is knn's
    "param the family does not take (space)": lambda r: r["space"].update(n_estimators={"int": [10, 100]}),
    "bad distribution kind": lambda r: r["space"].update(lr={"normal": [0.0, 1.0]}),
    "unknown dataset key": lambda r: r["dataset"].update(colour=True),
    "wrong type in a block": lambda r: r["scheduler"].update(max_epochs="ten"),
    "value outside a choice": lambda r: r["fixed"].update(optimizer="adagrad"),
    "numeric range for a str param": lambda r: r["space"].update(activation={"uniform": [0, 1]}),
    "loguniform from 0": lambda r: r["space"].update(lr={"loguniform": [0, 0.1]}),
    "distribution in fixed": lambda r: r["fixed"].update(lr={"uniform": [0.1, 0.2]}),
    "unknown family": lambda r: r.update(family="xgboost"),
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_broken_files_are_rejected_by_the_schema_and_by_validate(validator, what):
    raw = _broken(BROKEN[what])
    assert not validator.is_valid(raw), what
    with pytest.raises(UserError):
        spaces.parse_experiment(raw)


def test_suite_files_are_checked_too(validator):
    assert validator.is_valid({"name": "s", "suite": ["a.yaml", "b.yaml"], "ensemble": ["a", "b"]})
    assert not validator.is_valid({"name": "s", "suite": ["a.yaml"], "family": "cnn"})
    assert not validator.is_valid({"name": "s", "suite": []})


def test_a_conditional_choice_checks_each_branch_against_the_family(validator):
    raw = {"family": "features", "space": {"classifier": {"choice": {
        "logreg": {"C": {"loguniform": [1.0e-3, 1.0e+2]}},
        "svm": {"C": {"loguniform": [1.0e-2, 1.0e+3]}, "kernel": {"choice": ["rbf", "linear"]}},
        "knn": None}}}}
    assert validator.is_valid(raw)
    raw["space"]["classifier"]["choice"]["svm"]["blocks"] = 3  # a cnn parameter inside a features branch
    assert not validator.is_valid(raw)
