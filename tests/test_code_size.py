"""Code a newcomer can hold in mind: no function in tuner/ over 60 lines, no module over 500.

Measured from the source with `ast` (a function from its `def` line to its last line, nested functions
counted on their own as well as inside their parent). The offenders of today are listed with their
size now: an entry may not grow, and one that is back under the limit must leave the list, so the list
only shrinks.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "tuner"
MAX_FUNCTION, MAX_MODULE = 60, 500

# what is over the limit today -> its size now (none: keep it so)
ALLOWED: dict[str, int] = {}


def sizes() -> dict[str, int]:
    """Every module's line count (key: its path) and every function's (key: path:name)."""
    out: dict[str, int] = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).as_posix()
        text = path.read_text()
        out[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{rel}:{node.name}"
                out[key] = max(out.get(key, 0), node.end_lineno - node.lineno + 1)
    return out


def offenders() -> dict[str, int]:
    return {k: n for k, n in sizes().items() if n > (MAX_FUNCTION if ":" in k else MAX_MODULE)}


def test_no_new_long_function_or_module():
    new = {k: n for k, n in offenders().items() if k not in ALLOWED}
    assert not new, (f"over {MAX_FUNCTION} lines a function / {MAX_MODULE} a module: {new}; "
                     f"split it into named steps")


def test_the_allowed_offenders_only_shrink():
    now = offenders()
    grew = {k: (ALLOWED[k], now[k]) for k in ALLOWED if k in now and now[k] > ALLOWED[k]}
    assert not grew, f"allowed, but longer than when listed (listed, now): {grew}"
    fixed = sorted(k for k in ALLOWED if k not in now)
    assert not fixed, f"no longer over the limit: remove {fixed} from ALLOWED in {Path(__file__).name}"
