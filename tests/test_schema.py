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


# ------------------------------------------------------------------------ the schema and validate agree
# Files are read as validate reads them (YAML 1.2 exponent floats such as 1e-4 are numbers), then changed by
# `--set`-style overrides: (key, YAML value). `tuner validate` and the schema must both accept every GOOD file,
# and both refuse every BAD one whose rule JSON Schema can express; the others (ONLY_VALIDATE) are rules
# across keys, about files, or JSON's one kind of number, which only validate can check.
def _file(overrides: list[str]) -> dict:
    raw = spaces.safe_yaml((SPACES / "digits_cnn.yaml").read_text())
    return spaces.apply_overrides(raw, overrides, "digits_cnn.yaml")


def _validate_accepts(raw: dict, tmp_path) -> bool:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.dump(raw, Dumper=spaces.SpaceDumper, sort_keys=False))
    try:
        spaces.load(p)
        return True
    except UserError:
        return False


GOOD = {
    "time_budget 30m (docs/search-power.md's)": ["search.time_budget=30m"],
    "time_budget 1.5h": ["search.time_budget=1.5h", "search.num_samples="],
    "time_budget .5d and seconds": ["search.time_budget=.5d"],
    "time_budget in seconds": ["search.time_budget=600"],
    "max_failures -1": ["max_failures=-1"],
    "metric latency_ms": ["metric=latency_ms", "mode=min"],
    "two objectives": ["metric=[val_accuracy, num_params]", "mode=[max, min]"],
    "constraints": ["constraints={num_params: {max: 5.0e+6}, latency_ms: {min: 0, max: 10}}"],
    "resources auto": ["resources=auto"],
    "a share of a GPU and two GPUs": ["resources={cpu: 2, gpu: 0.5}"],
    "two whole GPUs": ["resources={gpu: 2}"],
    "official test split": ["dataset.split.test=official"],
    "image_size null and 2048": ["dataset.image_size=2048"],
    "warm-start configs": ["search.warm_start=[{lr: 1.0e-3, channels: 32}]"],
    "a name with dots and dashes": ["name=my-search.v2"],
    "storage URI": ["storage=s3://bucket/tuner"],
    "augment": ["dataset.augment={hflip: true, rotation: 15, color_jitter: 0.2, translate: 0.125}"],
    "an int range at the family's bounds": ["space.blocks={int: [1, 8]}"],
    "a conditional choice with an empty option": ["space.optimizer={choice: {sgd: {momentum: {uniform: [0.5, 0.99]}}, "
                                                  "adam: null}}"],
}

BAD = {  # the list first: a typo'd constraint, seed -1, num_samples 0, image_size 100000, a NaN bound
    "typo'd constraint name": ["constraints={num_param: {max: 5}}"],
    "typo'd constraint side": ["constraints={num_params: {maximum: 5}}"],
    "constraint without a side": ["constraints={num_params: {}}"],
    "NaN constraint bound": ["constraints={num_params: {max: .nan}}"],
    "search.seed -1": ["search.seed=-1"],
    "search.seed 2**32": ["search.seed=4294967296"],
    "split.seed -3": ["dataset.split.seed=-3"],
    "num_samples 0": ["search.num_samples=0"],
    "max_concurrent 0": ["search.max_concurrent=0"],
    "grid_points 1": ["search.grid_points=1"],
    "image_size 100000": ["dataset.image_size=100000"],
    "image_size 3": ["dataset.image_size=3"],
    "limit 0": ["dataset.limit=0"],
    "split.val 1.5": ["dataset.split.val=1.5"],
    "split.val negative": ["dataset.split.val=-0.1"],
    "split.val official": ["dataset.split.val=official"],
    "split.test a misspelt official": ["dataset.split.test=officia"],
    "unknown data set": ["dataset.name=mnist"],
    "unknown normalisation": ["dataset.normalize=zscore"],
    "unknown algorithm": ["search.algorithm=bayes"],
    "unknown sampler": ["search.sampler=tpe2"],
    "unknown scheduler": ["scheduler.name=asha2"],
    "max_epochs 0": ["scheduler.max_epochs=0"],
    "grace_period 0": ["scheduler.grace_period=0"],
    "reduction_factor 1": ["scheduler.reduction_factor=1"],
    "perturbation_interval 0": ["scheduler.perturbation_interval=0"],
    "cpu 0": ["resources={cpu: 0}"],
    "gpu -1": ["resources={gpu: -1}"],
    "gpu 1.5": ["resources={gpu: 1.5}"],
    "resources a word": ["resources=all"],
    "time_budget 0": ["search.time_budget=0"],
    "time_budget negative": ["search.time_budget=-5"],
    "time_budget in words": ["search.time_budget=10 minutes"],
    "time_budget superscript": ["search.time_budget=\u00b2m"],
    "time_budget NaN": ["search.time_budget=.nan"],
    "time_budget infinite": ["search.time_budget=1e400"],
    "max_failures -2": ["max_failures=-2"],
    "max_failures 1.5": ["max_failures=1.5"],
    "storage empty": ["storage=''"],
    "storage blank": ["storage='   '"],
    "name ..": ["name=.."],
    "name .hidden": ["name=.hidden"],
    "name a/b": ["name=a/b"],
    "name 101 characters": ["name=" + "n" * 101],
    "name a number": ["name=12"],
    "unknown metric": ["metric=accuracy"],
    "metric twice": ["metric=[val_accuracy, val_accuracy]", "mode=[max, max]"],
    "no metric": ["metric=[]", "mode=[]"],
    "unknown mode": ["mode=maximise"],
    "NaN bound": ["space.lr={uniform: [.nan, 0.1]}"],
    "infinite bound": ["space.lr={loguniform: [1.0e-4, .inf]}"],
    "loguniform from 0": ["space.lr={loguniform: [0, 0.1]}"],
    "int bounds not whole": ["space.blocks={int: [1.5, 3]}"],
    "int bound past 2**53": ["space.seed={int: [0, 1.0e+17]}"],
    "unknown distribution": ["space.lr={normal: [0.0, 1.0]}"],
    "empty choice": ["space.optimizer={choice: []}"],
    "range outside the parameter's bounds": ["space.dropout={uniform: [0.0, 2.0]}"],
    "choice outside the parameter's choices": ["space.optimizer={choice: [adam, adagrad]}"],
    "NaN constant": ["fixed.lr=.nan"],
    "negative rotation": ["dataset.augment.rotation=-5"],
    "warm start of a non-mapping": ["search.warm_start=[1, 2]"],
    "warm start of an empty config": ["search.warm_start=[{}]"],
    "unknown top-level key": ["optimiser=adam"],
    "unknown block key": ["search.samples=5"],
    "unknown family": ["family=xgboost"],
    "param the family does not take": ["fixed.k=5"],
    "distribution in fixed": ["fixed.lr={uniform: [0.1, 0.2]}"],
}

ONLY_VALIDATE = {  # what JSON Schema cannot say: each still refused by validate
    "reversed bounds (two items of one list)": ["space.lr={uniform: [0.5, 0.1]}"],
    "val + test >= 1": ["dataset.split.val=0.6", "dataset.split.test=0.5"],
    "grace_period > max_epochs": ["scheduler.grace_period=30"],
    "constraint min > max": ["constraints={num_params: {min: 10, max: 5}}"],
    "fewer modes than metrics": ["metric=[val_accuracy, num_params]", "mode=[max]"],
    "grid distribution with optuna": ["space.lr={grid: [0.1, 0.01]}"],
    "nsga2 with one objective": ["search.sampler=nsga2"],
    "cifar10 without a root": ["dataset.name=cifar10"],
    "2.0 for a whole number (JSON has one kind of number)": ["scheduler.max_epochs=2.0"],
    "one name in two choices": ["space.optimizer={choice: {sgd: {lr: {uniform: [0.1, 0.2]}}}}",
                                "space.lr_schedule={choice: {step: {lr: {uniform: [1.0e-5, 2.0e-5]}}}}",
                                "space.lr=0.01"],
    "warm start outside the space": ["search.warm_start=[{lr: 5.0}]"],
    "warm start from a folder that is not a results folder": ["search.warm_start=/nonexistent/folder"],
}


def test_every_shipped_space_file_is_accepted_by_validate_and_the_schema(validator, tmp_path):
    for path in SHIPPED:
        raw = spaces.safe_yaml(path.read_text())
        assert not [e.message for e in validator.iter_errors(raw)], path.name
        spaces.load(path)  # raises on a file validate refuses


@pytest.mark.parametrize("what", list(GOOD))
def test_documented_values_are_accepted_by_both(validator, tmp_path, what):
    raw = _file(GOOD[what])
    assert _validate_accepts(raw, tmp_path), what
    assert not [e.message for e in validator.iter_errors(raw)], what


@pytest.mark.parametrize("what", list(BAD))
def test_what_validate_refuses_the_schema_refuses(validator, tmp_path, what):
    raw = _file(BAD[what])
    assert not _validate_accepts(raw, tmp_path), f"validate accepts {what}"
    assert not validator.is_valid(raw), f"the schema accepts {what}"


@pytest.mark.parametrize("what", list(ONLY_VALIDATE))
def test_rules_json_schema_cannot_express_are_validates_alone(validator, tmp_path, what):
    raw = _file(ONLY_VALIDATE[what])
    assert not _validate_accepts(raw, tmp_path), f"validate accepts {what}"
    assert validator.is_valid(raw), f"the schema refuses {what}: move it to BAD"
