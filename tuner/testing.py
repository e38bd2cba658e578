"""The plug-in contracts as checks anyone can run: tuner's own tests run them over every registered family,
scheduler and sampler, and an out-of-tree plug-in runs them over its own (as Optuna's `optuna.testing`).

    from tuner.testing import check_family, check_scheduler, check_sampler

    check_family("my_family", {"batch_size": 64}, digits, tmp_path / "bundle")  # digits: tuner.data.prepare(...)
    check_scheduler("my_scheduler")
    check_sampler("my_sampler")

Each raises AssertionError naming what broke. A family check trains for two epochs on the data given; the
scheduler and sampler checks (tuner/search/contract.py) build their object for small experiments their flags
allow, check that validation refuses what their flags rule out, that Ray can pickle what they build, and (a
sampler) that it proposes trials in every mode its flags claim. A test helper, not for runs.
"""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np

# the scheduler and sampler checks need Ray and Optuna, so they live under tuner/search/ (the only Ray importer)
from tuner.search.contract import check_sampler, check_scheduler, experiment  # noqa: F401


# --------------------------------------------------------------------------- families
def check_defaults_validate(name: str) -> None:
    from tuner.families import get_family

    fam = get_family(name)
    fam.validate({k: p.default for k, p in fam.params.items()}, {}, "<defaults>")


def check_fit_keys_and_proba(name: str, cfg: dict, data) -> None:
    """`fit` yields the per-epoch keys the trainable reads; `predict_proba` is (N, C), rows summing to 1."""
    from tuner.families import get_family
    from tuner.types import EPOCH_KEYS, TRAINED_KEYS

    learner = get_family(name).learner(cfg, data.info)
    history = list(learner.fit(data, 2))
    wanted = set(EPOCH_KEYS) | (set(TRAINED_KEYS) if learner.checkpoint_every_epoch else set())
    assert history and all(wanted <= set(h) for h in history), history
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    proba = learner.predict_proba(data.x_test)
    assert proba.shape == (len(data.x_test), data.info.num_classes)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-4)


def _flat(state) -> list:
    import torch

    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state) for t in _flat(state[k])]
    return []


def _same_weights(a, b) -> bool:
    import torch

    ta, tb = _flat(a.weights()), _flat(b.weights())
    return len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb))


def _without_time(h: dict) -> dict:
    return {k: v for k, v in h.items() if k != "epoch_time_s"}


def check_state_round_trip(name: str, cfg: dict, data) -> None:
    """Checkpoint after epoch 1 (through bytes, as Ray keeps it), resume in a fresh learner: epoch 2 is bit-equal."""
    import torch

    from tuner.families import get_family

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
    """A bundle written after one epoch loads back (tuner.predict.load) and predicts the same."""
    from tuner.bundle import save_bundle
    from tuner.families import get_family
    from tuner.predict import load

    learner = get_family(name).learner(cfg, data.info)
    list(learner.fit(data, 1))
    folder.mkdir()
    save_bundle(folder / "model.pt", SimpleNamespace(family=name, name="contract"), cfg, learner, data)
    loaded = load(folder, device="cpu")
    assert np.array_equal(loaded.predict_proba(data.x_test), learner.predict_proba(data.x_test))


def check_family(name: str, cfg: dict, data, folder) -> None:
    """The whole family contract: defaults validate, fit and predict_proba, state and bundle round trips.
    `cfg` is a small config (a few batches an epoch), `data` prepared data, `folder` a path that does not exist."""
    check_defaults_validate(name)
    check_fit_keys_and_proba(name, cfg, data)
    check_state_round_trip(name, cfg, data)
    check_bundle_round_trip(name, cfg, data, folder)
