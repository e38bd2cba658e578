"""Every benchmark script runs in its --quick mode and prints its figures (so the scripts do not rot)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("bench_*.py"))


def test_every_benchmark_is_listed_in_the_benchmarks_readme():
    readme = (BENCH / "README.md").read_text()
    for name in SCRIPTS:
        assert f"`{name}.py`" in readme, name


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_quick_mode_runs(name, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--quick"])
    spec.loader.exec_module(module)
    module.main(["--quick"])
    out = capsys.readouterr().out
    assert out.strip(), f"{name} printed nothing"
