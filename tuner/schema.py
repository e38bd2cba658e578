"""`tuner schema`: a JSON Schema (draft 2020-12) of the space-file grammar, for editors.

Nothing here is a second copy of the grammar: the schema is built from the definitions that validate a
space file. The blocks (dataset, search, scheduler, resources) come from the dataclasses of `tuner.spaces`
and their annotated types, the top-level keys from `spaces.TOP_KEYS`, the distributions from
`spaces.DISTRIBUTIONS`, and each family's `fixed:` and `space:` keys from its registered `Param`s (one
`if family is X then ...` a family), so a new field, family or parameter shows up here by itself. What
only code can check (an arch torchvision has, a data folder that exists) stays with `tuner validate`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from tuner import spaces, tracking
from tuner.data import READERS
from tuner.families import FAMILIES, Param

SCHEMA_ID = "https://github.com/tuner/tuner/space.schema.json"
JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string", list: "array", dict: "object",
              type(None): "null"}
PARAM_TYPES = {"float": "number", "int": "integer", "str": "string", "bool": "boolean", "list": "array",
               "dict": "object"}
CATEGORICAL = ("choice", "grid")  # distributions that list values; the others take [lo, hi]


def _plain(value: Any) -> Any:
    """A default as JSON can hold it (tuples become lists), or None when it cannot."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if isinstance(value, (str, int, float, bool)) or value is None else None


# --------------------------------------------------------------------------- the config blocks
def type_schema(tp: Any) -> dict:
    """A dataclass field's annotation -> its schema (the types `spaces._check_type` accepts)."""
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [type_schema(a) for a in typing.get_args(tp)]
        if all(set(m) == {"type"} for m in members):
            return {"type": [m["type"] for m in members]}
        return {"anyOf": members}
    origin = typing.get_origin(tp) or tp
    if origin in JSON_TYPES:
        return {"type": JSON_TYPES[origin]}
    return {}


def dataclass_schema(cls) -> dict:
    """A config block: its fields, their types and defaults, nothing else (a mapping or empty)."""
    hints = typing.get_type_hints(cls, vars(spaces))
    props = {}
    for f in dataclasses.fields(cls):
        s = type_schema(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None and _plain(default) is not None:
            s["default"] = _plain(default)
        props[f.name] = s
    return {"type": ["object", "null"], "properties": props, "additionalProperties": False}


# --------------------------------------------------------------------------- family parameters
def value_schema(p: Param) -> dict:
    """One value of a parameter, as `Param.check` accepts it."""
    s: dict = {} if p.type == "any" else {"type": PARAM_TYPES[p.type]}
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
    for kind in spaces.DISTRIBUTIONS:
        if kind in CATEGORICAL:
            args: dict = {"type": "array", "minItems": 1, "items": value}
            if kind == "choice":  # a conditional choice: option -> sub-space (or nothing)
                args = {"anyOf": [args, {"type": "object", "minProperties": 1,
                                         "additionalProperties": {"anyOf": [{"type": "null"}, {"$ref": space_ref}]}}]}
        elif p.type in ("float", "int", "any"):
            log = spaces.Distribution(kind, (1, 2)).is_log
            bound: dict = {"type": "integer" if kind.endswith("int") else "number"}
            if log:
                bound["exclusiveMinimum"] = 0
            if p.low is not None:
                bound["minimum"] = p.low
            if p.high is not None:
                bound["maximum"] = p.high
            args = {"type": "array", "minItems": 2, "maxItems": 2, "items": bound}
        else:
            continue  # a str/bool/list parameter is searched with choice only
        kinds.append({"type": "object", "properties": {kind: args}, "required": [kind],
                      "additionalProperties": False})
    return {"oneOf": kinds}


# `{anything: [..]}` is read as a distribution (an unknown kind is an error), never as a constant
DISTRIBUTION_LIKE = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": {"type": "array"}}


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
def experiment_schema() -> dict:
    dataset = dataclass_schema(spaces.DatasetConfig)
    dataset["properties"]["name"] = {"enum": list(READERS), "default": "digits"}
    dataset["properties"]["normalize"]["enum"] = list(spaces.NORMALIZATIONS)
    search = dataclass_schema(spaces.SearchConfig)
    search["properties"]["algorithm"]["enum"] = list(spaces.ALGORITHMS)
    search["properties"]["sampler"]["enum"] = list(spaces.SAMPLERS)
    scheduler = dataclass_schema(spaces.SchedulerConfig)
    scheduler["properties"]["name"]["enum"] = list(spaces.SCHEDULERS)
    known = {
        "name": {"type": "string", "pattern": r"^[^/.][^/]*$", "description": "experiment (results folder) name"},
        "family": {"enum": sorted(FAMILIES)},
        "dataset": dataset,
        "metric": {"anyOf": [{"enum": list(spaces.METRICS)},
                             {"type": "array", "minItems": 1, "items": {"type": "string"},
                              "description": "several objectives: a multi-objective search"}],
                   "default": "val_accuracy"},
        "mode": {"anyOf": [{"enum": ["max", "min"]}, {"type": "array", "minItems": 1,
                                                      "items": {"enum": ["max", "min"]}}], "default": "max"},
        "search": search,
        "scheduler": scheduler,
        "resources": {"anyOf": [{"const": "auto"}, dataclass_schema(spaces.ResourcesConfig)]},
        "fixed": {"type": ["object", "null"]},
        "space": {"type": ["object", "null"]},
        "max_failures": {"type": "integer", "minimum": 0, "default": 0},
        "storage": {"type": ["string", "null"], "description": "a folder every node reaches, or s3://, gs://, ..."},
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
    return {"type": "object", "required": ["suite"], "properties": {k: known.get(k, {}) for k in sorted(spaces.SUITE_KEYS)},
            "additionalProperties": False}


def schema() -> dict:
    defs: dict[str, dict] = {}
    for name in sorted(FAMILIES):
        defs.update(family_defs(name))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "tuner space file",
            "description": "A search space (family, dataset, search, scheduler, fixed, space, ...) or a suite of them.",
            "oneOf": [experiment_schema(), suite_schema()], "$defs": defs}
