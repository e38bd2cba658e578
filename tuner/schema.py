"""`tuner schema`: a JSON Schema (draft 2020-12) of the space-file grammar, for editors.

Nothing here is a second copy of the grammar: the schema is built from the definitions that validate a
space file. The blocks (dataset, search, scheduler, resources) come from the dataclasses of `tuner.spaces`,
their annotated types and their fields' `tuner.bounds.Bound`s (which `spaces.build_block` checks; the
scheduler and sampler choices are their registries' names), the top-level keys
from `spaces.TOP_KEYS` and their Bounds and patterns (MAX_FAILURES, STORAGE, NAME_PATTERN, OBJECTIVES), the
distributions from
`spaces.KINDS`, and each family's `fixed:` and `space:` keys from its registered `Param`s (one
`if family is X then ...` a family), so a new field, family or parameter shows up here by itself. What
only code can check (rules across two keys, an arch torchvision has, a data folder that exists) stays with
`tuner validate`; tests/test_schema.py runs the shipped files and a table of bad ones through both.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from tuner import spaces, tracking
from tuner.bounds import FINITE, FINITE_REF, bound_of
from tuner.families import FAMILIES, Param

SCHEMA_ID = "https://github.com/tuner/tuner/space.schema.json"
JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string", list: "array", dict: "object",
              type(None): "null"}
PARAM_TYPES = {"float": "number", "int": "integer", "str": "string", "bool": "boolean", "list": "array",
               "dict": "object"}


def _plain(value: Any) -> Any:
    """A default as JSON can hold it (tuples become lists), or None when it cannot."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if isinstance(value, (str, int, float, bool)) or value is None else None


# --------------------------------------------------------------------------- the config blocks
def type_schema(tp: Any) -> dict:
    """A dataclass field's annotation -> its schema (the types `spaces.check_type` accepts; a number finite)."""
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [type_schema(a) for a in typing.get_args(tp)]
        if all(set(m) <= {"type", "$ref"} for m in members):
            out: dict = {"type": [m["type"] for m in members]}
            return out | (FINITE_REF if "number" in out["type"] else {})
        return {"anyOf": members}
    origin = typing.get_origin(tp) or tp
    if origin in JSON_TYPES:
        return {"type": JSON_TYPES[origin]} | (FINITE_REF if origin is float else {})
    return {}


def dataclass_schema(cls) -> dict:
    """A config block: its fields, their types, bounds (`tuner.bounds`, as `validate` checks them) and
    defaults, nothing else (a mapping or empty)."""
    hints = typing.get_type_hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        s = type_schema(hints[f.name])
        bound = bound_of(f)
        if bound is not None:
            s |= bound.schema()
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None and _plain(default) is not None:
            s["default"] = _plain(default)
        props[f.name] = s
    return {"type": ["object", "null"], "properties": props, "additionalProperties": False}


# --------------------------------------------------------------------------- family parameters
def value_schema(p: Param) -> dict:
    """One value of a parameter, as `Param.check` accepts it."""
    s: dict = {} if p.type == "any" else {"type": PARAM_TYPES[p.type]}
    if p.type in ("float", "any"):
        s |= FINITE_REF  # validate refuses .nan and .inf in every value
    if p.low is not None and p.type in ("float", "int"):
        s["minimum"] = p.low
    if p.high is not None and p.type in ("float", "int"):
        s["maximum"] = p.high
    if p.choices is not None:
        s = {"enum": [_plain(c) for c in p.choices]} if p.type == "str" else {"anyOf": [s, {"enum": list(p.choices)}]}
    if p.help:
        s["description"] = p.help
    if _plain(p.default) is not None:
        s["default"] = _plain(p.default)
    return s


def distribution_schema(p: Param, space_ref: str) -> dict:
    """`{kind: args}` for this parameter: choice/grid list its values (a choice may instead map each option to
    its own sub-space); the numeric kinds take [lo, hi] within the parameter's bounds, for numeric ones only."""
    value = value_schema(p)
    kinds = []
    for kind in spaces.KINDS.values():
        if kind.categorical:  # a list of values; the others take [lo, hi]
            args: dict = {"type": "array", "minItems": 1, "items": value}
            if kind.name == "choice":  # a conditional choice: option -> sub-space (or nothing)
                args = {"anyOf": [args, {"type": "object", "minProperties": 1,
                                         "additionalProperties": {"anyOf": [{"type": "null"}, {"$ref": space_ref}]}}]}
        elif p.type in ("float", "int", "any"):
            whole = kind.integer
            bound: dict = {"type": "integer" if whole else "number"} | FINITE_REF
            if whole:
                bound |= {"minimum": -spaces.INT_LIMIT, "maximum": spaces.INT_LIMIT}
            if kind.log:
                bound["exclusiveMinimum"] = 0
            if p.low is not None:
                bound["minimum"] = max(p.low, bound.get("minimum", p.low))
            if p.high is not None:
                bound["maximum"] = min(p.high, bound.get("maximum", p.high))
            args = {"type": "array", "minItems": 2, "maxItems": 2, "items": bound}
        else:
            continue  # a str/bool/list parameter is searched with choice only
        kinds.append({"type": "object", "properties": {kind.name: args}, "required": [kind.name],
                      "additionalProperties": False})
    return {"oneOf": kinds}


# `{anything: [..]}` is read as a distribution (an unknown kind is an error), never as a constant
DISTRIBUTION_LIKE = {"type": "object", "minProperties": 1, "maxProperties": 1,
                     "additionalProperties": {"type": "array"}}


def constant_schema(p: Param) -> dict:
    return {"allOf": [value_schema(p), {"not": DISTRIBUTION_LIKE}]}


def family_defs(name: str) -> dict[str, dict]:
    """$defs for one family: its fixed: block and its space: block."""
    fam = FAMILIES[name]
    ref = f"#/$defs/{name}_space"
    fixed = {k: constant_schema(p) for k, p in fam.params.items()}
    space = {k: {"anyOf": [distribution_schema(p, ref), constant_schema(p)]} for k, p in fam.params.items()}
    return {f"{name}_fixed": {"type": ["object", "null"], "properties": fixed, "additionalProperties": False},
            f"{name}_space": {"type": ["object", "null"], "properties": space, "additionalProperties": False}}


# --------------------------------------------------------------------------- the whole file
def objective_schema() -> dict:
    """metric: one objective, or a list of distinct ones (a multi-objective search)."""
    return {"anyOf": [{"enum": list(spaces.OBJECTIVES)},
                      {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(spaces.OBJECTIVES)},
                       "description": "several objectives: a multi-objective search"}], "default": "val_accuracy"}


def constraints_schema() -> dict:
    """constraints: objective -> {max: X} and/or {min: X}, finite numbers."""
    side = {"type": "number"} | FINITE_REF
    return {"type": ["object", "null"], "propertyNames": {"enum": list(spaces.OBJECTIVES)},
            "additionalProperties": {"type": "object", "minProperties": 1, "additionalProperties": False,
                                     "properties": {k: side for k in spaces.CONSTRAINT_SIDES}}}


def experiment_schema() -> dict:
    known = {
        "name": {"type": "string", "pattern": spaces.NAME_PATTERN, "description": "experiment (results folder) name"},
        "family": {"enum": sorted(FAMILIES)},
        "dataset": dataclass_schema(spaces.DatasetConfig),
        "metric": objective_schema(),
        "mode": {"anyOf": [{"enum": ["max", "min"]}, {"type": "array", "minItems": 1,
                                                      "items": {"enum": ["max", "min"]}}], "default": "max"},
        "constraints": constraints_schema(),
        "search": dataclass_schema(spaces.SearchConfig),
        "scheduler": dataclass_schema(spaces.SchedulerConfig),
        "resources": {"anyOf": [{"const": "auto"}, dataclass_schema(spaces.ResourcesConfig)]},
        "fixed": {"type": ["object", "null"]},
        "space": {"type": ["object", "null"]},
        "max_failures": {"type": "integer", "default": 0} | spaces.MAX_FAILURES.schema(),
        "storage": {"type": ["string", "null"], "description": "a folder every node reaches, or s3://, gs://, ..."}
                   | spaces.STORAGE.schema(),
        "tracking": tracking.schema(),
    }
    # every key the parser takes; one it takes that has no schema here yet is allowed as anything
    props = {k: known.get(k, {}) for k in sorted(spaces.TOP_KEYS)}
    per_family = [{"if": {"properties": {"family": {"const": name}}, "required": ["family"]},
                   "then": {"properties": {"fixed": {"$ref": f"#/$defs/{name}_fixed"},
                                           "space": {"$ref": f"#/$defs/{name}_space"}}}}
                  for name in sorted(FAMILIES)]
    return {"type": "object", "required": ["family"], "properties": props, "additionalProperties": False,
            "allOf": per_family}


def suite_schema() -> dict:
    known = {"name": {"type": "string"},
             "suite": {"type": "array", "minItems": 1, "items": {"type": "string"},
                       "description": "space files, relative to this file"},
             "ensemble": {"type": ["array", "null"], "items": {"type": "string"},
                          "description": "member experiment names whose probabilities are averaged"}}
    return {"type": "object", "required": ["suite"],
            "properties": {k: known.get(k, {}) for k in sorted(spaces.SUITE_KEYS)}, "additionalProperties": False}


def schema() -> dict:
    defs: dict[str, dict] = {"finite": FINITE}
    for name in sorted(FAMILIES):
        defs.update(family_defs(name))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "tuner space file",
            "description": "A search space (family, dataset, search, scheduler, fixed, space, ...) or a suite of them.",
            "oneOf": [experiment_schema(), suite_schema()], "$defs": defs}
