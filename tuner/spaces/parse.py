"""A space file -> a validated `Experiment` (or `Suite`): each block built and checked, then the rules that
take several keys (tuner.spaces.rules)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Union

from tuner.bounds import Bound
from tuner.errors import UserError
from tuner.spaces.blocks import DatasetConfig, ResourcesConfig, SchedulerConfig, SearchConfig
from tuner.spaces.distributions import KINDS, Distribution, parse_distribution
from tuner.spaces.experiment import Experiment, Suite
from tuner.spaces.names import check_name, check_path_text, shown
from tuner.spaces.rules import (check_branch_names, check_search_power, parse_constraints, parse_objectives,
                                validate_tree)
from tuner.spaces.suites import load_suite
from tuner.spaces.yamlfile import apply_overrides, read_yaml


# the top-level keys that are not blocks: their bounds, for validate and `tuner schema` alike
MAX_FAILURES = Bound(min=-1, says="a whole number >= 0 (retries of a crashed trial), or -1 to retry crashed "
                                  "trials forever")


STORAGE = Bound(pattern=r"\S", says="a folder or a URI such as s3://bucket/path")


TOP_KEYS = {"name", "dataset", "family", "metric", "mode", "search", "scheduler", "resources", "fixed", "space",
            "max_failures", "storage", "constraints", "tracking"}


def load(path: str | Path, overrides: list[str] | None = None) -> Union[Experiment, Suite]:
    """Read, override and validate a space or suite file."""
    path = Path(path)
    raw = read_yaml(path)
    if "suite" in raw:
        # --set on a suite is meant for its members (the caller loads each with the same overrides);
        # only the suite's own list keys are applied to the suite itself
        own = [s for s in overrides or [] if s.split("=", 1)[0].split(".")[0].strip() in ("suite", "ensemble")]
        return load_suite(path, apply_overrides(raw, own, str(path)))
    changed = apply_overrides(raw, overrides or [], str(path))  # its own errors name their --set
    try:
        return parse_experiment(changed, path)
    except UserError as exc:
        raise _blamed(exc, raw, path, overrides or []) from None


def _blamed(exc: UserError, raw: dict, path: Path, overrides: list[str]) -> UserError:
    """A mistake made on the command line is named by its --set, not by the file that does not hold it: the
    first override without which this error goes away (parsing is cheap: no data, no Ray)."""
    for i, item in enumerate(overrides):
        try:
            parse_experiment(apply_overrides(raw, overrides[:i] + overrides[i + 1:], str(path)), path)
        except UserError as other:
            if str(other) == str(exc):
                continue
        message, hint, item = str(exc).removeprefix(f"{path}: "), _range_hint(item, raw), shown(item)
        return UserError(f"--set {item}: {message}{hint} (in {path})" if message != str(exc)
                         else f"{exc}{hint} (--set {item})")
    return exc


def _range_hint(item: str, raw: dict) -> str:
    """`--set space.lr=loguniform` names a distribution without its range, which reads as a constant string:
    the mapping to write, with the file's own values for that key where it has a list of them."""
    key, _, value = (s.strip() for s in item.partition("="))
    kind, name = KINDS.get(value), key.removeprefix("space.")
    if kind is None or name == key:
        return ""
    old = (raw.get("space") or {}).get(name) if isinstance(raw.get("space"), dict) else None
    values = next(iter(old.values())) if isinstance(old, dict) and len(old) == 1 else None
    if isinstance(values, list) and values:
        args, said = "[" + ", ".join(map(str, values)) + "]", ""
    elif kind.categorical:
        args, said = "[A, B]", " with its values"
    else:
        args, said = "[LOW, HIGH]", " with two numbers"
    return f"; a distribution takes its values in a mapping, e.g. --set '{key}={{{value}: {args}}}'{said}"


def parse_experiment(raw: dict, path: Path | None = None, ran: bool = False) -> Experiment:
    """A space file's mapping (after --set) -> a checked Experiment: each block parses and checks itself, then
    the rules across blocks (tuner.spaces.rules: the family's check of the tree, samplers and schedulers).

    ran: the space.yaml of a search that ran (RunDir.experiment). Its warm-start folder is history then: its
    trials are in the study already, and the folder may since have been moved or deleted."""
    file = str(path) if path else "<space>"
    family = _check_top_keys(raw, file)
    name = raw["name"] if raw.get("name") is not None else (path.stem if path else "experiment")
    check_name(name, f"{file}: name")
    dataset = DatasetConfig.parse(raw.get("dataset"), file)
    search = SearchConfig.parse(raw.get("search"), file)
    scheduler = SchedulerConfig.parse(raw.get("scheduler"), file)
    resources = ResourcesConfig.parse(raw.get("resources"), file)
    metric, mode = parse_objectives(raw, file)
    constraints = parse_constraints(raw.get("constraints"), file)
    dataset.check(file)
    scheduler.check(file)
    fixed, space = _parse_space(raw, file)

    from tuner import tracking

    exp = Experiment(name=name, family=raw["family"], dataset=dataset, metric=metric, mode=mode,
                     constraints=constraints, search=search, scheduler=scheduler, resources=resources,
                     fixed=fixed, space=space, max_failures=_max_failures(raw, file), storage=_storage(raw, file),
                     tracking=tracking.parse(raw.get("tracking"), file), path=path, raw=raw)
    _check_values(exp, file)
    validate_tree(family, exp.constants, exp.searched, file, "space")
    check_search_power(exp, file, ran)
    return exp


def _check_top_keys(raw: dict, file: str):
    """Every top-level key known, and a family that is registered: its Family."""
    from tuner.families import FAMILIES, get_family

    blocks = {"dataset": DatasetConfig, "search": SearchConfig, "scheduler": SchedulerConfig,
              "resources": ResourcesConfig}
    for key in raw:
        if key not in TOP_KEYS:
            hint = " (a suite file has only name, suite and ensemble)" if key in ("suite", "ensemble") else ""
            # a block's key written at the top (`fuse: 4` for search.fuse)
            hint += "".join(f" (did you mean {name}.{key}?)" for name, block in blocks.items()
                            if isinstance(key, str) and key in {f.name for f in dataclasses.fields(block)})
            family = FAMILIES.get(raw["family"]) if isinstance(raw.get("family"), str) else None
            if family is not None and key in family.params:  # a model parameter: `lr: 0.01` at the top
                hint += f" ({family.name} takes {key}: put it under fixed: or space:)"
            raise UserError(f"{file}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(TOP_KEYS))}")
    if "family" not in raw:
        raise UserError(f"{file}: missing key 'family'; set one of {', '.join(FAMILIES)}")
    return get_family(raw["family"], where=f"{file}: family")


def _parse_space(raw: dict, file: str) -> tuple[dict, dict]:
    """`fixed:` (constants) and `space:` (parsed into distributions), both mappings of parameter names."""
    fixed = {} if raw.get("fixed") is None else raw["fixed"]
    space_raw = {} if raw.get("space") is None else raw["space"]
    for key, block in (("fixed", fixed), ("space", space_raw)):
        if not isinstance(block, dict):
            raise UserError(f"{file}: {key} must be a mapping of parameter: value, got {block!r}")
        for k in block:
            if not isinstance(k, str):
                raise UserError(f"{file}: {key}: parameter names are words, got {k!r}")
    space = {k: parse_distribution(v, f"{file}: space.{k}") for k, v in space_raw.items()}
    check_branch_names(space, file)
    for k, v in fixed.items():
        if isinstance(parse_distribution(v, f"{file}: fixed.{k}"), Distribution):
            raise UserError(f"{file}: fixed.{k} is a distribution; move it to space: or give one value")
    return dict(fixed), space


def _max_failures(raw: dict, file: str) -> int:
    max_failures = raw.get("max_failures", 0)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or MAX_FAILURES.problem(max_failures):
        raise UserError(f"{file}: max_failures must be {MAX_FAILURES.says}; got {max_failures!r}")
    return max_failures


def _storage(raw: dict, file: str) -> str | None:
    storage = raw.get("storage")
    if storage is not None and (not isinstance(storage, str) or STORAGE.problem(storage)):
        raise UserError(f"{file}: storage must be {STORAGE.says}, got {storage!r}")
    if storage is not None:
        check_path_text(storage, f"{file}: storage")
    return storage


def _check_values(exp: Experiment, file: str) -> None:
    """Every value finite, and no grid for Optuna (which cannot enumerate one)."""
    for k, v in list(exp.constants.items()) + [(k, a) for k, d in exp.searched.items() for a in d.args]:
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{file}: {k} is {v}; give a finite number")
    if exp.search.algorithm == "optuna" and any(d.is_grid for d in exp.searched.values()):
        bad = next(k for k, d in exp.searched.items() if d.is_grid)
        raise UserError(f"{file}: space.{bad} is a grid, which Optuna cannot enumerate; "
                        f"use choice, or set search.algorithm to grid or random")
