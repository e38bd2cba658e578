"""Every seed space file starts its search where the seed report's author stopped: `search.warm_start`
holds the report's own hand-tuned config(s), and the first of them lies inside the space (Optuna drops a
warm-start config it cannot express, so one outside the ranges would silently not run)."""
from pathlib import Path

import pytest

from tuner import spaces
from tuner.spaces import Conditional, Distribution

ROOT = Path(__file__).resolve().parents[1]
SEED_FILES = sorted(p for prefix in ("cars_", "cifar10_", "flowers104_", "stl10_")
                    for p in (ROOT / "search_spaces").glob(f"{prefix}*.yaml"))


def test_every_seed_family_has_space_files():
    # a renamed or moved folder would otherwise leave the parametrised tests below with nothing to check
    names = {p.stem.split("_")[0] for p in SEED_FILES}
    assert names == {"cars", "cifar10", "flowers104", "stl10"}
    assert len(SEED_FILES) >= 12


def _outside(space: dict, config: dict) -> list[str]:
    """The warm-start values that fall outside their distribution, walking into the branch a conditional
    choice's value selects."""
    bad = []
    for k, node in space.items():
        if k not in config:
            continue
        v = config[k]
        if isinstance(node, Conditional):
            if v not in node.args:
                bad.append(f"{k}={v!r} not one of {list(node.args)}")
                continue
            branch = {n: d for n, d in dict(node.options)[v].items() if isinstance(d, (Distribution, Conditional))}
            bad += _outside(branch, config)
        elif isinstance(node, Distribution):
            if node.kind in ("choice", "grid"):
                if v not in node.args:
                    bad.append(f"{k}={v!r} not one of {list(node.args)}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not node.args[0] <= v <= node.args[1]:
                bad.append(f"{k}={v!r} outside {node.kind} {list(node.args)}")
            elif node.kind in ("int", "logint") and v != int(v):
                bad.append(f"{k}={v!r} is not an integer")
    return bad


@pytest.mark.parametrize("path", SEED_FILES, ids=lambda p: p.stem)
def test_seed_file_warm_starts_with_valid_configs(path):
    exp = spaces.load(path)
    ws = exp.search.warm_start
    assert isinstance(ws, list) and ws, f"{path.name}: no search.warm_start list"
    names = set(exp.param_names) | set(exp.constants)
    for i, cfg in enumerate(ws):
        assert isinstance(cfg, dict) and cfg, f"{path.name}: warm_start[{i}] is not a config"
        unknown = set(cfg) - names
        assert not unknown, f"{path.name}: warm_start[{i}] sets {unknown}, not parameters of the space"


@pytest.mark.parametrize("path", SEED_FILES, ids=lambda p: p.stem)
def test_seed_file_first_warm_start_lies_inside_the_space(path):
    exp = spaces.load(path)
    first = exp.search.warm_start[0]
    assert set(first) & set(exp.param_names), f"{path.name}: the first warm start sets nothing searched"
    assert _outside(exp.searched, first) == []


def test_outside_catches_values_beyond_a_range_and_a_branch():
    # the checker itself: a value past a bound, a missing choice and a branch parameter out of its range
    exp = spaces.load(ROOT / "search_spaces" / "cifar10_features.yaml")
    assert _outside(exp.searched, {"classifier": "logreg", "C": 1.0}) == []
    assert len(_outside(exp.searched, {"classifier": "logreg", "C": 1.0e+5})) == 1
    assert len(_outside(exp.searched, {"classifier": "boosting"})) == 1
    assert len(_outside(exp.searched, {"classifier": "knn", "k": 40, "normalize": "pca"})) == 2
