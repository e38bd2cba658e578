"""A suite file: several space files searched one after another, and the members whose models are averaged."""
from __future__ import annotations

from pathlib import Path

from tuner.errors import UserError
from tuner.spaces.experiment import Suite
from tuner.spaces.names import check_name
from tuner.spaces.yamlfile import read_yaml


SUITE_KEYS = {"name", "suite", "ensemble"}


def load_suite(path: Path, raw: dict) -> Suite:
    for key in raw:
        if key not in SUITE_KEYS:
            raise UserError(f"{path}: unknown key {key!r} in a suite; a suite takes {', '.join(sorted(SUITE_KEYS))}")
    members = raw["suite"]
    if not isinstance(members, list) or not members:
        raise UserError(f"{path}: suite must be a non-empty list of space files, got {members!r}")
    paths = []
    for m in members:
        if not isinstance(m, str) or not m.strip() or any(ord(c) < 32 for c in m):
            raise UserError(f"{path}: suite member {m!r} is not a file name; list space files, e.g. suite: [a.yaml]")
        p = (path.parent / m).resolve()
        if not p.is_file():
            raise UserError(f"{path}: suite member {m!r} not found (looked for {p})")
        if "suite" in read_yaml(p):  # one level only: a suite of suites would run its members twice over
            raise UserError(f"{path}: suite member {m!r} is itself a suite; list its space files here instead")
        paths.append(p)
    ensemble = raw.get("ensemble") or []
    if not isinstance(ensemble, list) or not all(isinstance(e, str) for e in ensemble):
        raise UserError(f"{path}: ensemble must be a list of experiment names")
    for e in ensemble:
        check_name(e, f"{path}: ensemble entry")
    name = raw["name"] if raw.get("name") is not None else path.stem
    check_name(name, f"{path}: name")
    return Suite(name=name, members=paths, ensemble=ensemble, path=path, raw=raw)
