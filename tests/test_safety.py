"""A search never removes or writes anything outside its own experiment folder, whatever name it is given."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tuner import cli

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "digits_linear.yaml"


def _victim(tmp_path: Path) -> Path:
    """A folder a hostile name would aim at, with something to lose in it."""
    v = tmp_path / "victim"
    (v / "sub").mkdir(parents=True)
    (v / "precious.txt").write_text("keep me")
    (v / "sub" / "more.txt").write_text("and me")
    return v


def _intact(v: Path) -> bool:
    return (v / "precious.txt").read_text() == "keep me" and (v / "sub" / "more.txt").read_text() == "and me"


def _refused(capsys, argv: list[str]) -> str:
    """The search exits 2 with one `error:` line and no traceback; returns that line."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _search(results: Path, *extra: str) -> list[str]:
    return ["search", "--space", str(SPACE), "--results", str(results), "--no-dashboard", "--smoke", *extra]


HOSTILE = ["..", ".", "", "a/b", "../victim", "/abs/path", "a\\b", "new\nline", "nul\x00byte", "x" * 300, ".hidden"]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_a_hostile_name_is_refused_by_every_way_a_name_arrives(tmp_path, capsys, name):
    victim = _victim(tmp_path)
    results = victim / "results"  # `--name ..` would have removed the victim itself
    (results / "old").mkdir(parents=True)
    abs_name = str(victim) if name == "/abs/path" else name
    _refused(capsys, _search(results, "--name", abs_name))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**yaml.safe_load(SPACE.read_text()), "name": abs_name}))
    if name != "":  # an empty name: falls back to the file's stem, which is a fine name
        _refused(capsys, _search(results, "--space", str(space)))
        _refused(capsys, ["validate", "--space", str(space)])
    _refused(capsys, _search(results, "--set", f"name={yaml.safe_dump(abs_name, default_style=chr(34)).strip()}"))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": abs_name or None, "suite": [str(SPACE)]}) if name else
                     yaml.safe_dump({"suite": [str(SPACE)], "ensemble": [""]}))
    _refused(capsys, ["validate", "--space", str(suite)])
    assert _intact(victim) and (results / "old").is_dir()


def test_a_name_that_is_not_a_string_is_refused_not_turned_into_one(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**yaml.safe_load(SPACE.read_text()), "name": [1, 2]}))
    line = _refused(capsys, ["validate", "--space", str(space)])
    assert "name" in line and "list" in line


def test_a_symlinked_experiment_folder_is_refused_and_its_target_kept(tmp_path, capsys):
    victim = _victim(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    (results / "digits_linear").symlink_to(victim)
    line = _refused(capsys, _search(results))
    assert "link" in line and "remove it by hand" in line
    assert _intact(victim) and (results / "digits_linear").is_symlink()


def test_a_folder_that_is_not_an_experiment_is_not_replaced(tmp_path, capsys):
    results = tmp_path / "results"
    (results / "digits_linear").mkdir(parents=True)
    (results / "digits_linear" / "notes.txt").write_text("mine")
    line = _refused(capsys, _search(results))
    assert "not a tuner experiment" in line and "digits_linear" in line
    assert os.listdir(results / "digits_linear") == ["notes.txt"]  # not even a lock file was left there


def test_results_that_are_a_link_resolve_and_the_folder_under_them_is_checked(tmp_path, capsys):
    # a results folder reached through a link is fine; what is removed is still judged by what it is
    real = tmp_path / "real"
    (real / "digits_linear").mkdir(parents=True)
    (real / "digits_linear" / "thesis.tex").write_text("years of work")
    (tmp_path / "link").symlink_to(real)
    _refused(capsys, _search(tmp_path / "link"))
    assert (real / "digits_linear" / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("kind", ["symlink", "file", "not_tune"])
def test_storage_side_removes_only_a_tune_experiment_of_that_name(tmp_path, capsys, kind):
    victim = _victim(tmp_path)
    storage = tmp_path / "storage"
    storage.mkdir()
    target = storage / "digits_linear"
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "file":
        target.write_text("a file")
    else:
        (target / "data").mkdir(parents=True)
        (target / "data" / "x.bin").write_text("someone's data")
    results = tmp_path / "results"
    line = _refused(capsys, _search(results, "--storage", str(storage)))
    assert "storage" in line and "remove it by hand" in line
    assert _intact(victim) and (target.is_symlink() or target.exists())
    if kind == "not_tune":
        assert (target / "data" / "x.bin").read_text() == "someone's data"
    # and nothing was written in the results folder's experiment beyond the lock file
    assert set(os.listdir(results / "digits_linear")) <= {"search.lock"}
