"""The package's layers import only downward, so a newcomer can read it bottom-up and nothing loops.

Checked from the source with `ast` (every import, also those inside functions), plus each module
imported alone in a fresh interpreter, which is where an import circle shows up as a real failure.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tuner"
MODULES = sorted(p for p in PKG.rglob("*.py"))


def _name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports (absolute names), at any depth of the file."""
    tree = ast.parse(path.read_text())
    here = _name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from tuner import spaces` imports tuner.spaces
    return out


GRAPH = {_name(p): _imports(p) for p in MODULES}


def _tuner_imports(mod: str) -> set[str]:
    known = set(GRAPH)
    return {m for m in GRAPH[mod] if m in known and m != mod and m != "tuner"}


def test_only_the_search_package_imports_ray():
    offenders = {m for m, deps in GRAPH.items() if any(d == "ray" or d.startswith("ray.") for d in deps)
                 and not (m == "tuner.search" or m.startswith("tuner.search."))}
    assert not offenders, f"ray imported outside tuner/search/: {sorted(offenders)}"


@pytest.mark.parametrize("leaf", ["tuner.errors", "tuner.types", "tuner.settings", "tuner.bounds", "tuner.files",
                                  "tuner.atomic", "tuner.interrupt"])
def test_leaf_modules_import_nothing_from_tuner(leaf):
    assert leaf in GRAPH, f"{leaf} is missing"
    assert not _tuner_imports(leaf), f"{leaf} imports {sorted(_tuner_imports(leaf))}"


def _under(mod: str, *prefixes: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_data_backbones_and_engine_never_import_families_or_search():
    for mod, deps in GRAPH.items():
        if _under(mod, "tuner.data", "tuner.backbones", "tuner.engine"):
            bad = {d for d in _tuner_imports(mod) if _under(d, "tuner.families", "tuner.search")}
            assert not bad, f"{mod} imports {sorted(bad)}"


def test_families_never_import_spaces_search_or_the_results_folder():
    for mod in GRAPH:
        if _under(mod, "tuner.families"):
            bad = {d for d in _tuner_imports(mod) if _under(d, "tuner.spaces", "tuner.search", "tuner.rundir")}
            assert not bad, f"{mod} imports {sorted(bad)}"


def test_the_driver_never_imports_retrain():
    for mod in GRAPH:
        if _under(mod, "tuner.search"):
            bad = {d for d in _tuner_imports(mod) if _under(d, "tuner.retrain", "tuner.commands", "tuner.cli")}
            assert not bad, f"{mod} imports {sorted(bad)}"


def test_no_import_circles():
    graph = {m: _tuner_imports(m) for m in GRAPH}
    # a package imports its own children to register them; that is not a circle back up
    for m in graph:
        graph[m] = {d for d in graph[m] if not d.startswith(m + ".")}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if seen.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)


def test_import_tuner_does_not_load_torch():
    code = "import tuner, sys; assert 'torch' not in sys.modules, 'torch'; assert 'ray' not in sys.modules, 'ray'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# One fresh interpreter imports every other library the package imports (torch, ray.tune, ...: the slow part),
# and nothing of tuner; then each module is imported in a child forked from it. A child starts with no tuner
# module loaded, so a circle shows up as it would in a fresh interpreter, at a tenth of the cost (13 s, not 81).
_IMPORT_EACH = """
import importlib, os, sys
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
    except Exception:
        pass  # a name imported from a module (not a module), or an extra not installed: the child says
assert not [m for m in sys.modules if m.split(".")[0] == "tuner"], "a library imported tuner"
for mod in sys.argv[1].split(","):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(mod)
            os._exit(0)
        except BaseException as exc:
            os.write(w, f"{mod}: {type(exc).__name__}: {exc}\\n".encode())
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as said:
        message = said.read()
    if os.waitpid(pid, 0)[1]:
        print(message or f"{mod}: the import ended the process", end="")
"""


@pytest.mark.slow  # about 13 s on 2 cores: the import graph tests above run in the quick loop
def test_every_module_imports_alone_in_a_fresh_interpreter():
    others = sorted({d for deps in GRAPH.values() for d in deps
                     if d.split(".")[0] not in ("tuner", "__future__")})
    r = subprocess.run([sys.executable, "-c", _IMPORT_EACH, ",".join(sorted(GRAPH)), ",".join(others)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    bad = r.stdout.strip()
    assert not bad, bad
