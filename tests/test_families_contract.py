"""The family contract, checked on every shipped family the same way (Optuna's sampler tests, for families).

Every registered family: its defaults validate; `fit` yields the per-epoch keys the trainable reads;
`predict_proba` is (N, C) with rows that sum to 1; a state round-trip resumes exactly; a bundle round-trip
predicts the same. `CASES` must name every registered family, so a new family cannot skip the contract.
The worked example in `tuner.families.base`'s docstring is run through the same checks.
"""
from __future__ import annotations

import re

import pytest

import tuner.families.base
from tuner.data import prepare
from tuner.families import FAMILIES, shipped_families
from tuner.spaces import DatasetConfig
from tuner.testing import check_family

# small configs: a few batches an epoch on 8x8 digits
CASES = {
    "linear": {"batch_size": 64},
    "mlp": {"hidden": [32], "dropout": 0.2, "batch_size": 64},
    "cnn": {"blocks": 1, "channels": 4, "dropout": 0.2, "batch_size": 64},
    "transfer": {"arch": "resnet18", "weights": "none", "trainable_layers": "all", "batch_size": 64},
    "transfer-frozen": {"arch": "resnet18", "weights": "none", "trainable_layers": 0, "hidden": [16],
                        "batch_size": 64},
    "knn": {"backbone": "pixels", "k": 3},
    "features": {"backbone": "pixels", "classifier": "logreg", "max_iter": 200},
}


def family_of(case: str) -> str:
    return case.split("-")[0]


@pytest.fixture(scope="module")
def digits():
    return prepare(DatasetConfig(name="digits", limit=160), progress=False)


def test_every_registered_family_is_in_the_contract_table():
    # a test may register a family of its own at import (tests/test_search_trainable.py): only tuner's count
    assert {family_of(c) for c in CASES} == set(shipped_families()), "add the new family to CASES"


# the checks are tuner.testing's (public: an out-of-tree family runs them too)
check_contract = check_family


# --------------------------------------------------------------------------- every shipped family
# a resnet18 trains for tens of seconds on 2 cores: outside the quick loop (`-m "not slow"`)
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.startswith("transfer") else c
                                  for c in sorted(CASES)])
def test_shipped_family_keeps_the_contract(case, digits, tmp_path):
    check_contract(family_of(case), CASES[case], digits, tmp_path / "bundle")



def test_the_add_a_family_example_in_base_runs_and_keeps_the_contract(digits, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", tuner.families.base.__doc__, re.S)
    assert len(blocks) == 1, "tuner/families/base.py's docstring has one ```python example"
    namespace: dict = {}
    exec(compile(blocks[0], "tuner.families.base example", "exec"), namespace)
    try:
        assert "nearest_centroid" in FAMILIES
        check_contract("nearest_centroid", {}, digits, tmp_path / "bundle")
    finally:
        FAMILIES.pop("nearest_centroid", None)
