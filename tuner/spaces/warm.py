"""`search.warm_start`: configs that must be points of the space, or an earlier results folder whose trials
seed the study; checked here before Ray starts (the searcher would drop a bad point without a word)."""
from __future__ import annotations

from pathlib import Path

import yaml

from tuner.errors import UserError
from tuner.search.schedulers import SCHEDULERS
from tuner.spaces.distributions import Conditional, is_searched, same_value
from tuner.spaces.experiment import Experiment
from tuner.spaces.names import check_path_text
from tuner.spaces.yamlfile import MAX_SPACE_BYTES, safe_yaml


def check_warm_start(exp: Experiment, file: str) -> None:
    ws = exp.search.warm_start
    if SCHEDULERS[exp.scheduler.name].mutates:
        raise UserError(f"{file}: search.warm_start does not go with scheduler {exp.scheduler.name} (its population "
                        f"starts at random and changes its own parameters)")
    if isinstance(ws, list):
        names = set(exp.param_names) | set(exp.constants)
        for i, cfg in enumerate(ws):
            if not isinstance(cfg, dict) or not cfg:
                raise UserError(f"{file}: search.warm_start[{i}] must be a config mapping such as "
                                f"{{lr: 1.0e-3, batch_size: 32}}, got {cfg!r}")
            for k in cfg:
                if k not in names:
                    raise UserError(f"{file}: search.warm_start[{i}].{k}: not a parameter of this space; "
                                    f"it has {', '.join(sorted(names))}")
            _check_pinned(exp, cfg, f"{file}: search.warm_start[{i}]")
            bad = point_problem(exp.searched, cfg)
            if bad:  # the searcher would drop this config without a word
                raise UserError(f"{file}: search.warm_start[{i}].{bad[0]}: {cfg[bad[0]]!r} is not in the space; "
                                f"{bad[1]}")
        return
    if not isinstance(ws, str) or not ws:
        raise UserError(f"{file}: search.warm_start must be a list of configs or the path of an earlier "
                        f"experiment's results folder, got {ws!r}")
    check_path_text(ws, f"{file}: search.warm_start")
    folder = Path(ws).expanduser()
    if not folder.is_absolute() and exp.path is not None and not folder.exists():
        folder = Path(exp.path).parent / folder
    if not (folder / "trials.csv").is_file() or not (folder / "space.yaml").is_file():
        raise UserError(f"{file}: search.warm_start: {ws} is not a results folder (no trials.csv and space.yaml "
                        f"there); give results/<name> of a finished search")
    if exp.search.algorithm != "optuna":
        raise UserError(f"{file}: search.warm_start from a results folder seeds Optuna's study; set "
                        f"search.algorithm: optuna")
    exp.search.warm_start = str(folder.resolve())  # space.yaml keeps a path that works from anywhere
    old = _read_warm_folder(folder, f"{file}: search.warm_start")
    if old.get("family") != exp.family:
        raise UserError(f"{file}: search.warm_start: {ws} searched family {old.get('family')!r}, this space "
                        f"family {exp.family!r}; their trials cannot seed this search")


def _read_warm_folder(folder: Path, where: str) -> dict:
    """A warm-start folder's space.yaml (a mapping), and its trials.csv readable as text (the search reads
    the table itself, tuner.rundir.read_trials); a file that cannot be is one error naming it."""
    from tuner.files import read_regular

    for name in ("trials.csv", "space.yaml"):
        path = folder / name
        try:
            text = read_regular(path, None if name == "trials.csv" else MAX_SPACE_BYTES).decode("utf-8")
            data = safe_yaml(text, yaml.SafeLoader) if name == "space.yaml" else None  # as tuner wrote it
        except (OSError, UnicodeDecodeError, yaml.YAMLError, UserError) as exc:
            raise UserError(f"{where}: {path}: cannot be read ({' '.join(str(exc).split())[:200]}); give the "
                            f"results folder of a finished search") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: {folder / 'space.yaml'}: cannot be read (expected a mapping, found "
                        f"{type(data).__name__}); give the results folder of a finished search")
    return data


def _check_pinned(exp: Experiment, cfg: dict, where: str) -> None:
    """A warm-start value for a parameter that has one value (`fixed:`, or a constant in `space:`) must be
    that value: every trial gets the constant, so another one would be dropped without a word."""
    constants = exp.constants
    for k, v in cfg.items():
        if k in constants and not same_value(v, constants[k]):
            block = "fixed" if k in exp.fixed else "space"
            raise UserError(f"{where}.{k}: {v!r}, but {block}.{k} pins it to {constants[k]!r} for every trial; "
                            f"leave {k} out of the warm start or change {block}.{k}")


def point_problem(space: dict, config: dict) -> tuple[str, str] | None:
    """The first searched value of `config` (a warm-start point) that this space cannot draw, as (key, what it
    allows); None when every given value fits. A key may be missing (the searcher draws it), but not set for a
    conditional branch the config does not choose."""
    drawn: set[str] = set()

    def walk(sub: dict, where: str) -> tuple[str, str] | None:
        for k, node in sub.items():
            drawn.add(k)
            if k not in config or not is_searched(node):
                continue
            v = config[k]
            if node.is_categorical:
                if not any(same_value(v, a) for a in node.args):
                    return k, f"{where}.{k} is one of {', '.join(map(str, node.args))}"
                if isinstance(node, Conditional):
                    found = walk(node.branch(v), f"{where}.{k}.{v}")
                    if found:
                        return found
                continue
            if not node.contains(v):
                whole = " (whole numbers)" if node.is_int else ""
                return k, f"{where}.{k} is {node.kind} [{node.low}, {node.high}]{whole}"
        return None

    found = walk(space, "space")
    if found:
        return found
    for k in config:
        if k not in drawn:
            owners = _branch_owners(space, k)
            if owners:
                return k, (f"it belongs to {' or '.join(owners)}, which this config does not choose; "
                           f"set that choice in the same config or leave {k} out")
    return None


def _branch_owners(space: dict, key: str) -> list[str]:
    """`parent: option` for every conditional option whose sub-space (at any depth) sets `key`."""
    out = []
    for k, node in space.items():
        if isinstance(node, Conditional):
            for option, sub in node.options:
                if key in sub:
                    out.append(f"{k}: {option}")
                out += _branch_owners(sub, key)
    return out
