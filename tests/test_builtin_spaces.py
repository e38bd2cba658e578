"""The space files that ship inside the package: found by name from any folder, listed by `tuner spaces`,
each with the seed experiment it reproduces; `tuner --version`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

import tuner
from tuner import builtin_spaces
from tuner.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _tuner(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)


def test_the_package_holds_the_space_files_and_the_checkout_links_them():
    inside = ROOT / "tuner" / "search_spaces"
    assert builtin_spaces.SPACES_DIR == inside.resolve()
    assert len(builtin_spaces.names()) >= 20 and "cars_transfer" in builtin_spaces.names()
    # `search_spaces/...` in the README and the tests still works from a checkout
    assert (ROOT / "search_spaces").resolve() == inside.resolve()


def test_pyproject_ships_the_space_files_in_the_wheel():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "search_spaces/*.yaml" in project["tool"]["setuptools"]["package-data"]["tuner"]
    assert project["project"]["name"] == "tuner-hpo"  # `tuner` on the public index is someone else's
    assert project["project"]["scripts"]["tuner"] == "tuner.cli:main"


def test_every_built_in_space_names_its_seed_in_one_short_line():
    for s in builtin_spaces.listing():
        assert s.seed, f"{s.path}: no `# seed: ...` line saying which seed experiment it reproduces"
        assert s.kind == "suite" or s.kind == yaml.safe_load(s.path.read_text())["family"]


def test_tuner_spaces_lists_every_file_within_120_columns(tmp_path):
    out = _tuner(["spaces"], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()[1:]
    assert [line.split()[0] for line in lines] == builtin_spaces.names()
    assert all(len(line) <= 120 for line in lines), max(lines, key=len)
    transfer = next(line for line in lines if line.split()[0] == "cars_transfer")
    assert "transfer" in transfer and "92.1 %" in transfer


def _validate(space: str, cwd: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    """`tuner validate --space SPACE` from `cwd`, in this process (a subprocess costs 2 s of imports)."""
    monkeypatch.chdir(cwd)
    code = main(["validate", "--space", space])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_space_by_name_from_a_folder_without_the_file(tmp_path, capsys, monkeypatch):
    code, out, err = _validate("digits_cnn", tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert "name: digits_cnn" in out and "digits_cnn: valid" in out
    assert _validate("digits.yaml", tmp_path, capsys, monkeypatch)[0] == 0  # a suite, with .yaml


def test_a_file_at_that_path_wins_over_the_built_in_name(tmp_path, capsys, monkeypatch):
    (tmp_path / "digits_cnn").write_text("family: linear\nname: mine\n")
    code, out, err = _validate("digits_cnn", tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert "name: mine" in out and "family: linear" in out


def test_an_unknown_name_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for cmd in ("validate", "search"):
        assert main([cmd, "--space", "no_such_space"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --space no_such_space: no such file, nor a built-in")
        assert "tuner spaces" in err[0]
    assert main(["validate", "--space", "../digits_cnn"]) == 2  # a name is never a path out of the package


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tuner {tuner.__version__}"
    assert tuner.__version__.count(".") == 2
