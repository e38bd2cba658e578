"""Hostile input and faults (issue 11): each mistake is exit 2 and one `error:` line, through the real CLI.

The table covers bad space files and `--set` values, corrupt results files, unusable `--results` and
`--export` folders and a full disk; bundles (read by `tuner.load`, not the CLI) are checked after it. The results folder is a real one: a digits linear
experiment whose best config is retrained (1 epoch, no Ray) by the same `retrain_best` a search calls.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import tuner
from tuner import spaces
from tuner.cli import main
from tuner.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"
NAME = "digits_linear"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results folder holding one finished, retrained experiment in the on-disk format `search` writes."""
    from tuner.families import get_family
    from tuner.retrain import retrain_best

    results = tmp_path_factory.mktemp("finished")
    d = results / NAME
    d.mkdir()
    exp = spaces.load(ROOT / "search_spaces" / "digits_linear.yaml", ["scheduler.max_epochs=1",
                                                                       "scheduler.grace_period=1"])
    (d / "space.yaml").write_text(spaces.resolved_yaml(exp))
    config = get_family("linear").resolve({"lr": 0.05, "batch_size": 32, "optimizer": "adam"})
    (d / "best.yaml").write_text(yaml.safe_dump({
        "experiment": NAME, "family": "linear", "trial_id": "t0", "metric": "val_accuracy", "mode": "max",
        "config": config, "metrics": {"epoch": 1, "val_accuracy": 0.9, "val_loss": 0.4}, "epochs_run": 1},
        sort_keys=False))
    pd.DataFrame([{"trial_id": "t0", "status": "TERMINATED", "error": "", "lr": 0.05, "epochs": 1,
                   "val_accuracy": 0.9, "val_loss": 0.4, "time_s": 1.0}]).to_csv(d / "trials.csv", index=False)
    retrain_best(d, say=lambda _: None)
    assert (d / "best" / "model.pt").is_file() and (d / "best" / "metrics.json").is_file()
    return results


@pytest.fixture()
def results(finished, tmp_path) -> Path:
    """A private copy of the finished results, free to break."""
    return Path(shutil.copytree(finished, tmp_path / "results"))


@contextlib.contextmanager
def read_only(folder: Path):
    """Make a folder unwritable even for root (chmod alone does not stop root; an immutable folder does)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("cannot make a read-only folder here")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


class Evil:
    """Something a safe loader must refuse to unpickle."""


# ------------------------------------------------------------------------------------ the table
BOMB = ("family: cnn\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"{a}: &{a} [{', '.join([f'*{b}'] * 9)}]\n" for b, a in zip("abcdefgh", "bcdefghi")))


def _space_file(tmp: Path, text: str | bytes) -> str:
    p = tmp / "space.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _suite_of_suite(tmp: Path) -> str:
    (tmp / "inner.yaml").write_text(f"suite: [{DIGITS}]\n")
    (tmp / "outer.yaml").write_text("suite: [inner.yaml]\n")
    return str(tmp / "outer.yaml")


def _corrupt(results: Path, rel: str, text: str = "{unclosed: [\n") -> None:
    (results / NAME / rel).write_text(text)


def _bundle(tmp: Path, results: Path, change) -> str:
    bundle = torch.load(results / NAME / "best" / "model.pt", weights_only=True)
    change(bundle)
    torch.save(bundle, tmp / "model.pt")
    return str(tmp / "model.pt")


def _full_disk(results: Path) -> None:
    (results / "comparison.md").unlink(missing_ok=True)
    (results / "comparison.md").symlink_to("/dev/full")


# (id, argv with {tmp} {results} {digits} {space}, prepare(tmp, results) -> value of {space} or None, fragment)
TABLE = [
    # the space file and --set
    ("binary garbage as the space file", ["validate", "--space", "{space}"],
     lambda t, r: _space_file(t, bytes(range(256)) * 4), "not a text file"),
    ("yaml alias bomb", ["validate", "--space", "{space}"], lambda t, r: _space_file(t, BOMB), "through its aliases"),
    ("space file over 1 MiB", ["validate", "--space", "{space}"],
     lambda t, r: _space_file(t, "family: cnn\n" + "#" * (1 << 20)), "too large for a space file"),
    ("recursive alias", ["validate", "--space", "{space}"],
     lambda t, r: _space_file(t, "family: cnn\nfixed: &a {x: *a}\n"), "recursive"),
    ("max_failures: abc", ["validate", "--space", "{digits}", "--set", "max_failures=abc"], None, "max_failures"),
    ("max_failures: -2", ["validate", "--space", "{digits}", "--set", "max_failures=-2"], None, "max_failures"),
    ("storage: [1, 2]", ["validate", "--space", "{digits}", "--set", "storage=[1, 2]"], None, "storage"),
    ("metric: a mapping", ["validate", "--space", "{digits}", "--set", "metric={val_loss: 1}"], None, "metric"),
    ("fixed: a list", ["validate", "--space", "{digits}", "--set", "fixed=[1, 2]"], None, "fixed must be a mapping"),
    ("space: a number", ["validate", "--space", "{digits}", "--set", "space=3"], None, "space must be a mapping"),
    ("nan bound", ["validate", "--space", "{digits}", "--set", "space.lr={uniform: [.nan, 0.1]}"], None, "finite"),
    ("infinite bound", ["validate", "--space", "{digits}", "--set", "space.lr={loguniform: [1.0e-4, .inf]}"], None,
     "finite"),
    ("search.seed: -1", ["validate", "--space", "{digits}", "--set", "search.seed=-1"], None, "search.seed"),
    ("image_size: 100000", ["validate", "--space", "{digits}", "--set", "dataset.image_size=100000"], None,
     "at most 2048 pixels"),
    ("impossible date in --set", ["validate", "--space", "{digits}", "--set", "fixed.lr=2024-13-45"], None,
     "cannot be read"),
    ("line break in a --set key", ["validate", "--space", "{digits}", "--set", "a\nb=["], None, "--set 'a\\nb'"),
    ("a suite that lists a suite", ["validate", "--space", "{space}"], lambda t, r: _suite_of_suite(t),
     "is itself a suite"),
    ("name .. via --set", ["validate", "--space", "{digits}", "--set", "name=.."], None, ".."),
    ("name a/b via --set", ["validate", "--space", "{digits}", "--set", "name=a/b"], None, "a/b"),
    # the results folder and its files
    ("search --results a file", ["search", "--space", "{digits}", "--smoke", "--results", "{tmp}/file",
                                 "--no-dashboard"], lambda t, r: (t / "file").write_text("x"), "is a file"),
    ("search --results under a file", ["search", "--space", "{digits}", "--smoke", "--results", "{tmp}/file/r",
                                       "--no-dashboard"], lambda t, r: (t / "file").write_text("x"), "is a file"),
    ("search --results read-only", ["search", "--space", "{digits}", "--smoke", "--results", "{tmp}/ro/r",
                                    "--no-dashboard"], "read-only", "cannot write"),
    ("best --results a file", ["best", "--results", "{tmp}/file"], lambda t, r: (t / "file").write_text("x"),
     "is a file"),
    ("compare --results a file", ["compare", "--results", "{tmp}/file"], lambda t, r: (t / "file").write_text("x"),
     "is a file"),
    ("list --results a file", ["list", "--results", "{tmp}/file"], lambda t, r: (t / "file").write_text("x"),
     "is a file"),
    ("best: corrupt best.yaml", ["best", "--results", "{results}"], lambda t, r: _corrupt(r, "best.yaml"),
     "best.yaml: cannot be read"),
    ("best: best.yaml a list", ["best", "--results", "{results}"], lambda t, r: _corrupt(r, "best.yaml", "[1, 2]\n"),
     "expected a mapping"),
    ("best: best.yaml without config", ["best", "--results", "{results}"],
     lambda t, r: _corrupt(r, "best.yaml", "metrics: {}\n"), "no config"),
    ("best: corrupt metrics.json", ["best", "--results", "{results}"],
     lambda t, r: _corrupt(r, "best/metrics.json", "{\"accuracy\": "), "metrics.json: cannot be read"),
    ("best --export: corrupt space.yaml", ["best", "--results", "{results}", "--export", "{tmp}/out"],
     lambda t, r: (_corrupt(r, "space.yaml", "\x00\x01"), (r / NAME / "best" / "model.pt").unlink()),
     "space.yaml: cannot be read"),
    ("best --export to a file", ["best", "--results", "{results}", "--export", "{tmp}/file"],
     lambda t, r: (t / "file").write_text("x"), "is a file"),
    ("best --export to best/ itself", ["best", "--results", "{results}", "--export", "{results}/" + NAME + "/best"],
     None, "own best/ folder"),
    ("best --export to a read-only folder", ["best", "--results", "{results}", "--export", "{tmp}/ro"], "read-only",
     "cannot write"),
    ("full disk writing the comparison", ["compare", "--results", "{results}"], lambda t, r: _full_disk(r),
     "the disk is full"),
    # a search never replaces another unasked, nor warm-starts from the folder it would empty
    ("search over a finished experiment", ["search", "--space", "{linear}", "--smoke", "--results", "{results}",
                                           "--no-dashboard"], None, "--overwrite replaces it"),
    ("warm start from its own folder", ["search", "--space", "{linear}", "--overwrite", "--results", "{results}",
                                        "--no-dashboard", "--set", "search.warm_start={results}/" + NAME], None,
     "own folder"),
    ("dashboard: a folder in place of optuna.journal", ["dashboard", "--experiment", NAME, "--results", "{results}"],
     lambda t, r: (r / NAME / "optuna.journal").mkdir(), "is a folder"),
]


@pytest.mark.parametrize("argv, prepare, fragment", [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_hostile_input_exits_2_with_one_error_line(tmp_path, results, capsys, argv, prepare, fragment):
    tmp = tmp_path / "t"
    tmp.mkdir()
    space = None
    with contextlib.ExitStack() as stack:
        if prepare == "read-only":
            stack.enter_context(read_only(tmp / "ro"))
        elif prepare is not None:
            space = prepare(tmp, results)
        subs = {"{tmp}": str(tmp), "{results}": str(results), "{digits}": str(DIGITS), "{space}": str(space),
                "{linear}": str(ROOT / "search_spaces" / "digits_linear.yaml")}
        for key, value in subs.items():
            argv = [a.replace(key, value) for a in argv]
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------------ beyond the table
@pytest.mark.parametrize("rel", ["space.yaml", "best.yaml", "trials.csv", "best/metrics.json"])
def test_list_skips_a_folder_with_a_corrupt_file_and_lists_the_rest(results, capsys, rel):
    shutil.copytree(results / NAME, results / "broken")
    (results / "broken" / rel).write_bytes(b"\xff\xfe{[not: yaml, json nor csv\n" if rel != "trials.csv" else b"a\n\xff")
    assert main(["list", "--results", str(results)]) == 0
    out, err = capsys.readouterr()
    assert NAME in out and "broken" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and str(results / "broken" / rel) in lines[0]


@pytest.mark.parametrize("rel", ["space.yaml", "best/metrics.json"])
def test_compare_skips_a_folder_with_a_corrupt_file_and_compares_the_rest(results, capsys, rel):
    shutil.copytree(results / NAME, results / "broken")
    (results / "broken" / rel).write_text("[1, 2]\n")
    assert main(["compare", "--results", str(results)]) == 0
    out, err = capsys.readouterr()
    assert NAME in out and "broken" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and str(results / "broken" / rel) in lines[0]


def test_compare_on_a_read_only_results_folder_still_prints_the_table(results, capsys):
    with read_only(results):
        assert main(["compare", "--results", str(results)]) == 0
    out, err = capsys.readouterr()
    assert NAME in out
    assert err.startswith("warning:") and "comparison" in err


def test_load_of_a_bundle_missing_a_key_names_it_and_says_to_re_export(results, tmp_path):
    path = _bundle(tmp_path, results, lambda b: b["preprocessing"].pop("mean"))
    with pytest.raises(UserError, match=r"no preprocessing\.mean.*export it again") as err:
        tuner.load(path)
    assert "\n" not in str(err.value)


def test_load_of_a_bundle_with_code_is_refused_in_one_line_without_torchs_advice(results, tmp_path):
    path = _bundle(tmp_path, results, lambda b: b.update(weights={"model": Evil()}))
    with pytest.raises(UserError, match="refused") as err:
        tuner.load(path)
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)


def test_load_of_weights_that_do_not_fit_is_a_user_error(results, tmp_path):
    path = _bundle(tmp_path, results, lambda b: b["weights"]["model"].clear())
    with pytest.raises(UserError, match="do not fit its model"):
        tuner.load(path)


def test_export_to_a_new_folder_still_works_and_loads(results, tmp_path):
    assert main(["best", "--results", str(results), "--export", str(tmp_path / "a" / "b")]) == 0
    assert tuner.load(tmp_path / "a" / "b").class_names == [str(i) for i in range(10)]
