"""The family contract, checked on every shipped family the same way (Optuna's sampler tests, for families).

Every registered family: its defaults validate; `fit` yields the per-epoch keys the trainable reads;
`predict_proba` is (N, C) with rows that sum to 1; a state round-trip resumes exactly; a bundle round-trip
predicts the same. `CASES` must name every registered family, so a new family cannot skip the contract.
The worked example in `tuner.families.base`'s docstring is run through the same checks.
"""
from __future__ import annotations

import io
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tuner.families.base
from tuner.bundle import save_bundle
from tuner.data import prepare
from tuner.families import FAMILIES, get_family, shipped_families
from tuner.predict import load
from tuner.spaces import DatasetConfig
from tuner.types import EPOCH_KEYS, TRAINED_KEYS

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


# --------------------------------------------------------------------------- the checks
def check_defaults_validate(name: str) -> None:
    fam = get_family(name)
    fam.validate({k: p.default for k, p in fam.params.items()}, {}, "<defaults>")


def check_fit_keys_and_proba(name: str, cfg: dict, data) -> None:
    learner = get_family(name).learner(cfg, data.info)
    history = list(learner.fit(data, 2))
    wanted = set(EPOCH_KEYS) | (set(TRAINED_KEYS) if learner.checkpoint_every_epoch else set())
    assert history and all(wanted <= set(h) for h in history), history
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    proba = learner.predict_proba(data.x_test)
    assert proba.shape == (len(data.x_test), data.info.num_classes)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-4)


def _flat(state) -> list:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state) for t in _flat(state[k])]
    return []


def _same_weights(a, b) -> bool:
    ta, tb = _flat(a.weights()), _flat(b.weights())
    return len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb))


def _without_time(h: dict) -> dict:
    return {k: v for k, v in h.items() if k != "epoch_time_s"}


def check_state_round_trip(name: str, cfg: dict, data) -> None:
    """Checkpoint after epoch 1 (through bytes, as Ray keeps it), resume in a fresh learner: epoch 2 is bit-equal."""
    fam = get_family(name)
    first = fam.learner(cfg, data.info)
    steps = first.fit(data, 2)
    next(steps)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    rest = [_without_time(h) for h in steps]

    second = fam.learner(cfg, data.info)
    second.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    if first.checkpoint_every_epoch:
        assert [_without_time(h) for h in second.fit(data, 2)] == rest
    assert _same_weights(first, second)
    assert np.array_equal(first.predict_proba(data.x_test), second.predict_proba(data.x_test))


def check_bundle_round_trip(name: str, cfg: dict, data, folder) -> None:
    learner = get_family(name).learner(cfg, data.info)
    list(learner.fit(data, 1))
    folder.mkdir()
    save_bundle(folder / "model.pt", SimpleNamespace(family=name, name="contract"), cfg, learner, data)
    loaded = load(folder, device="cpu")
    assert np.array_equal(loaded.predict_proba(data.x_test), learner.predict_proba(data.x_test))


def check_contract(name: str, cfg: dict, data, folder) -> None:
    check_defaults_validate(name)
    check_fit_keys_and_proba(name, cfg, data)
    check_state_round_trip(name, cfg, data)
    check_bundle_round_trip(name, cfg, data, folder)


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
