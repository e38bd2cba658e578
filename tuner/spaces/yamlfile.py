"""Reading a space file: a hardened YAML loader (size, alias bombs, nesting, YAML 1.2 exponent floats) and the
`--set key=VALUE` overrides applied to what it read."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import UserError
from tuner.spaces.names import shown


def apply_overrides(raw: dict, overrides: list[str], file: str) -> dict:
    """`--set a.b=VALUE`: VALUE is YAML; the dotted path is created as needed."""
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set search.num_samples=8")
        key, text = item.split("=", 1)
        try:
            value = safe_yaml(text) if text != "" else None
        except yaml.YAMLError as exc:
            raise UserError(f"--set {shown(key)}: value {text!r} is not valid YAML ({yaml_problem(exc)})") from None
        except UserError as exc:
            raise UserError(f"--set {shown(key)}: {exc}") from None
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


MAX_SPACE_BYTES = 1 << 20  # a space file is a page of YAML; a megabyte is already a mistake


MAX_YAML_NODES = 100_000   # after alias expansion; a real space file has a few hundred


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """How many nodes the document has once every alias is expanded, without expanding it:
    an alias is a second reference to the same node, so each node is sized once."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise UserError("an alias refers to the mapping or list that contains it (a recursive document)")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_nodes(c, memo, open_) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_nodes(k, memo, open_) + _expanded_nodes(v, memo, open_) for k, v in node.value)
    else:
        n = 1
    open_.discard(key)
    memo[key] = n
    return n


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line (its str() spans several, with a caret under the spot)."""
    text = getattr(exc, "problem", None) or str(exc)
    return " ".join(text.split())


# YAML 1.2 core-schema floats that have an exponent: `1e-4`, `5E3`, `-2e+5`, `.5e-3`, `1.0e3`. PyYAML follows
# YAML 1.1, whose floats need a dot and a signed exponent, so it reads `1e-4` as the string '1e-4' and a
# `{loguniform: [1e-4, 1e-2]}` fails as "needs two numbers". Every other scalar resolves as PyYAML's does.
EXPONENT_FLOAT = r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"


class SpaceLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads YAML 1.2's exponent floats (`1e-4`) as floats."""


class SpaceDumper(yaml.SafeDumper):
    """yaml.SafeDumper that quotes a string SpaceLoader would read as a float (`'1e-4'`), so it reads back."""

for _cls in (SpaceLoader, SpaceDumper):  # each gets its own copy of SafeLoader's resolvers; those stay as they are
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(EXPONENT_FLOAT), list("-+.0123456789"))


def safe_yaml(text: str, loader_class: type = SpaceLoader) -> Any:
    """yaml.safe_load (with SpaceLoader's `1e-4` floats) that refuses a document that expands past
    MAX_YAML_NODES (an alias bomb: nine lines that PyYAML would turn into billions of list entries) or that
    nests past Python's stack. Files tuner wrote with yaml.safe_dump are read with yaml.SafeLoader: under
    SpaceLoader an unquoted trial id such as 508172e8 would come back as the number 5.08e13.
    Raises yaml.YAMLError for bad syntax and UserError for the rest, each without the file name."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_nodes(node, {}, set())
        if n > MAX_YAML_NODES:
            raise UserError(f"the document expands to {n} values through its aliases (&/*), more than "
                            f"{MAX_YAML_NODES}; write the values out instead of nesting aliases")
        return loader.construct_document(node)
    except RecursionError:
        raise UserError("nested too deeply to read; a space file needs a few levels of nesting") from None
    except (ValueError, OverflowError) as exc:  # a timestamp like 2024-13-45, an int of 5000 digits
        why = "a number has too many digits" if "digits" in str(exc) else str(exc)
        raise UserError(f"a value cannot be read: {why}") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such space file; see search_spaces/ for examples")
    size = path.stat().st_size
    if size > MAX_SPACE_BYTES:
        raise UserError(f"{path}: {size} bytes is too large for a space file (at most {MAX_SPACE_BYTES}); "
                        f"is this the right file?")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file (byte {exc.start} is not UTF-8); "
                        f"a space file is YAML text, see search_spaces/ for examples") from None
    try:
        raw = safe_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{line}: {yaml_problem(exc)}") from None
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a space file is a YAML mapping (name:, family:, space:, ...), "
                        f"got {type(raw).__name__}")
    return raw
