"""Hostile input and faults (issue 11): each mistake is exit 2 and one `error:` line, through the real CLI.

The table covers bad space files and `--set` values, corrupt results files and unusable `--results` and
`--export` folders; bundles (read by `tuner.load`, not the CLI), the value range `predict` reads and a real
full disk (a small tmpfs: `best --export`, `--format onnx`, `compare`, a search) are checked after it. The
results folder is a real one: a digits linear experiment whose best config is retrained (1 epoch, no Ray) by
the same `retrain_best` a search calls. (A full disk was a comparison.md linked to /dev/full; every file is
now written to a temporary and renamed, which replaces such a link, so the real one is used.)
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
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


TWO_CHOICES = """family: cnn
space:
  optimizer: {choice: {sgd: {lr: {uniform: [0.1, 0.2]}}, adam: {}}}
  lr_schedule: {choice: {step: {lr: {loguniform: [1.0e-5, 2.0e-5]}}, none: {}}}
"""


def _space_file(tmp: Path, text: str | bytes) -> str:
    p = tmp / "space.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _suite_of_suite(tmp: Path) -> str:
    (tmp / "inner.yaml").write_text(f"suite: [{DIGITS}]\n")
    (tmp / "outer.yaml").write_text("suite: [inner.yaml]\n")
    return str(tmp / "outer.yaml")


def _warm_folder(tmp: Path, space: bytes, trials: bytes = b"trial_id,val_accuracy\n") -> None:
    (tmp / "ws").mkdir()
    (tmp / "ws" / "space.yaml").write_bytes(space)
    (tmp / "ws" / "trials.csv").write_bytes(trials)


def _corrupt(results: Path, rel: str, text: str = "{unclosed: [\n") -> None:
    (results / NAME / rel).write_text(text)


def _bundle(tmp: Path, results: Path, change) -> str:
    bundle = torch.load(results / NAME / "best" / "model.pt", weights_only=True)
    change(bundle)
    torch.save(bundle, tmp / "model.pt")
    return str(tmp / "model.pt")


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
     "from 4 to 2048 pixels"),
    ("time_budget: 1e400 (infinite)", ["validate", "--space", "{digits}", "--set", "search.time_budget=1e400"], None,
     "search.time_budget: must be a finite time"),
    ("time_budget: .nan", ["validate", "--space", "{digits}", "--set", "search.time_budget=.nan"], None,
     "search.time_budget: must be a finite time"),
    ("time_budget: a superscript digit", ["validate", "--space", "{digits}", "--set", "search.time_budget=\u00b2m"],
     None, "search.time_budget: expected seconds or a duration"),
    ("constraint with a NaN bound", ["validate", "--space", "{digits}", "--set",
                                     "constraints={num_params: {max: .nan}}"],
     None, "constraints.num_params.max must be a finite number"),
    ("constraint with an infinite bound", ["validate", "--space", "{digits}", "--set",
                                           "constraints={latency_ms: {min: -.inf}}"], None,
     "constraints.latency_ms.min must be a finite number"),
    ("warm-start folder with a binary space.yaml", ["validate", "--space", "{digits}", "--set",
                                                     "search.warm_start={tmp}/ws"],
     lambda t, r: _warm_folder(t, b"\x00\xff\xfe" * 9), "search.warm_start: {tmp}/ws/space.yaml: cannot be read"),
    ("warm-start folder with broken YAML", ["validate", "--space", "{digits}", "--set", "search.warm_start={tmp}/ws"],
     lambda t, r: _warm_folder(t, b"{family: [\n"), "search.warm_start: {tmp}/ws/space.yaml: cannot be read"),
    ("warm-start folder whose space.yaml is a list", ["validate", "--space", "{digits}", "--set",
                                                      "search.warm_start={tmp}/ws"],
     lambda t, r: _warm_folder(t, b"[1, 2]\n"), "expected a mapping"),
    ("warm-start folder with a binary trials.csv", ["validate", "--space", "{digits}", "--set",
                                                    "search.warm_start={tmp}/ws"],
     lambda t, r: _warm_folder(t, DIGITS.read_bytes(), b"\xff\xfe\x00"), "search.warm_start: {tmp}/ws/trials.csv"),
    ("a 120 KB dataset.root", ["validate", "--space", "{digits}", "--set", "dataset.name=imagefolder", "--set",
                               "dataset.root=" + "a" * 120_000], None, "dataset.root: aaaa"),
    ("a 120 KB warm-start path", ["validate", "--space", "{digits}", "--set", "search.warm_start=" + "a/" * 60_000],
     None, "is 120000 bytes long"),
    ("a NUL byte in storage", ["validate", "--space", "{digits}", "--set", "storage=\"/tmp/a\\0b\""], None,
     "storage: '/tmp/a\\x00b' holds a NUL byte"),
    ("one parameter in branches of two different choices", ["validate", "--space", "{space}"],
     lambda t, r: _space_file(t, TWO_CHOICES), "space.optimizer.choice.sgd.lr and space.lr_schedule.choice.step.lr "
                                               "both set 'lr'"),
    ("warm start of a value fixed: pins", ["validate", "--space", "{digits}", "--set",
                                           "search.warm_start=[{blocks: 3, lr: 1.0e-3}]"], None,
     "search.warm_start[0].blocks: 3, but fixed.blocks pins it to 2"),
    ("dataset.root: / (the whole file system)", ["search", "--space", "{digits}", "--set", "dataset.name=imagefolder",
                                                 "--set", "dataset.root=/", "--results", "{tmp}/r", "--no-dashboard"],
     None, "dataset.root /: is the file-system root, not a data folder"),
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
    assert fragment.replace("{tmp}", str(tmp)) in lines[0], lines[0]


# ------------------------------------------------------------------------------------ beyond the table
@pytest.mark.parametrize("rel", ["space.yaml", "best.yaml", "trials.csv", "best/metrics.json"])
def test_list_skips_a_folder_with_a_corrupt_file_and_lists_the_rest(results, capsys, rel):
    shutil.copytree(results / NAME, results / "broken")
    garbage = b"\xff\xfe{[not: yaml, json nor csv\n" if rel != "trials.csv" else b"a\n\xff"
    (results / "broken" / rel).write_bytes(garbage)
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


def _writer_after(path: Path, seconds: float, done: threading.Event, waited: list) -> None:
    """If the command is still running after `seconds`, open the FIFO for writing (again and again) so that a
    reader blocked on it goes on, and note that it waited: the test then fails instead of hanging."""
    if done.wait(seconds):
        return
    waited.append(True)
    while not done.is_set():
        with contextlib.suppress(OSError):  # ENXIO: no reader has it open at this moment
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        time.sleep(0.05)


@pytest.mark.parametrize("command, rel", [("best", "trials.csv"), ("best", "best/metrics.json"), ("list", "trials.csv"),
                                          ("list", "space.yaml"), ("compare", "best/metrics.json")])
def test_a_fifo_in_place_of_a_results_file_is_refused_without_waiting(results, capsys, command, rel):
    # opening a FIFO for reading blocks until a writer comes: `tuner best` hung for ever. In this process (a
    # subprocess costs 2 s of imports), with a thread that plays the writer after 30 s, so that without the
    # fix this fails instead of hanging the test run
    path = results / NAME / rel
    path.unlink()
    os.mkfifo(path)
    done, waited = threading.Event(), []
    writer = threading.Thread(target=_writer_after, args=(path, 30, done, waited), daemon=True)
    writer.start()
    try:
        code = main([command, "--results", str(results)])
    finally:
        done.set()
        writer.join()
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert not waited, f"tuner {command} waited on the FIFO {rel}"
    assert code in (0, 2) and len(lines) <= 1, err  # an answer, no traceback
    if (command, rel) == ("best", "trials.csv"):  # read because it is there: refused, naming it
        assert code == 2 and lines[0].startswith("error:") and "not a regular file" in lines[0]
        assert str(path) in lines[0]


# ------------------------------------------------------------------------------------ the value range predict reads
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[:200], np.round(d.images[:200] * 255 / 16).astype(np.uint8)  # floats 0-16, as trained


def test_predict_takes_digits_as_scikit_learn_gives_them(results):
    # load_digits().images are floats 0-16; taken as 0-255 they were near-black and every one came out "1"
    model = tuner.load(results / NAME / "best")
    raw, as_trained = _digits()
    want = model.predict(as_trained)
    assert len(set(want)) > 3
    assert model.predict(raw) == want and model.predict(raw / 16) == want  # 0-16 and 0-1 floats
    assert model.predict(raw, value_range=(0, 16)) == want
    assert model.predict(raw.astype(np.uint8), value_range=(0, 16)) == want


@pytest.mark.parametrize("images, fragment", [
    (lambda raw: raw.astype(np.uint8), "value_range=(0, 16)"),   # uint8 0-16: grey levels, or dark pixels?
    (lambda raw: raw - 8, "pass value_range=(low, high)"),        # negative
    (lambda raw: raw * 100, "pass value_range=(low, high)"),      # above 255
])
def test_predict_refuses_images_whose_range_it_cannot_tell_in_one_line(results, images, fragment):
    model = tuner.load(results / NAME / "best")
    with pytest.raises(UserError, match=re.escape(fragment)) as err:
        model.predict(images(_digits()[0]))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value_range", [(16, 0), (0,), "0-16", (0, float("nan"))])
def test_predict_refuses_a_value_range_that_is_not_low_high(results, value_range):
    with pytest.raises(UserError, match="value_range"):
        tuner.load(results / NAME / "best").predict(_digits()[0], value_range=value_range)


def test_a_bundle_from_before_value_range_predicts_as_it_always_did(results, tmp_path):
    old = tuner.load(_bundle(tmp_path, results, lambda b: b["preprocessing"].pop("value_range")))
    raw, _ = _digits()
    assert old.trained_range is None
    # floats above 1 were taken as 0-255, as before (the bundle does not say otherwise)
    assert old.predict(raw) == old.predict(np.clip(raw, 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------ a real full disk
@pytest.fixture()
def small_disk(tmp_path):
    """A real file system of 4 MiB (tmpfs) to fill: a full disk as a user meets it. Needs root to mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _pages(n: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return -(-n // page) * page


def _fill(disk: Path, leave: int = 0) -> None:
    """Fill the disk but `leave` bytes (tmpfs counts whole pages, written zeros too)."""
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - leave))


def _half_written(folder: Path) -> list[Path]:
    """tuner's 0-byte files and left temporaries under `folder` (Ray's own folder ray/ is Ray's)."""
    return [p for p in folder.rglob("*") if p.is_file() and "ray" not in p.relative_to(folder).parts[:-1]
            and p.name != "filler" and (p.stat().st_size == 0 or ".tmp" in p.name)]


def _disk_full_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the disk is full"), err
    return err[0]


def test_best_export_onto_a_full_disk_leaves_no_0_byte_bundle(results, small_disk, capsys):
    dest = small_disk / "export"
    _fill(small_disk)
    assert main(["best", "--results", str(results), "--export", str(dest)]) == 2
    line = _disk_full_line(capsys)
    assert str(dest) in line and ".tmp" not in line  # the file's own name, not its temporary's
    assert not _half_written(small_disk)
    with pytest.raises(UserError, match="no model bundle there"):  # not a torch error on a 0-byte model.pt
        tuner.load(dest)


def test_an_export_over_an_older_one_on_a_full_disk_leaves_the_older_one_whole(results, small_disk, capsys):
    dest = small_disk / "export"
    assert main(["best", "--results", str(results), "--export", str(dest)]) == 0
    old = {p.name: p.read_bytes() for p in dest.iterdir()}
    metrics = results / NAME / "best" / "metrics.json"  # a newer retrain's metrics, to export over the old
    metrics.write_text(metrics.read_text().replace("{", '{"newer": 1, ', 1))
    _fill(small_disk, leave=_pages(1))  # room for one small file, not for all of them
    capsys.readouterr()
    assert main(["best", "--results", str(results), "--export", str(dest)]) == 2
    _disk_full_line(capsys)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == old  # no new metrics.json beside the old model
    assert not _half_written(small_disk)


def test_onnx_export_onto_a_full_disk_writes_no_half_model_onnx(results, small_disk, capsys):
    pytest.importorskip("onnx")
    dest = small_disk / "export"
    best = [f for f in (results / NAME / "best").iterdir() if f.is_file()]
    _fill(small_disk, leave=sum(_pages(f.stat().st_size) for f in best))  # the bundle fits, model.onnx not
    assert main(["best", "--results", str(results), "--export", str(dest), "--format", "onnx"]) == 2
    assert "model.onnx" in _disk_full_line(capsys)
    assert not (dest / "model.onnx").exists() and not (dest / "preprocessing.json").exists()
    assert not _half_written(small_disk)
    assert tuner.load(dest).class_names == [str(i) for i in range(10)]  # the bundle itself is whole


@pytest.mark.parametrize("fmt", ["md", "html", "csv"])
def test_compare_on_a_full_disk_leaves_no_empty_table(results, small_disk, capsys, fmt):
    on_disk = Path(shutil.copytree(results, small_disk / "results"))
    assert main(["compare", "--results", str(on_disk)]) == 0  # the tables as they were
    before = {p.name: p.read_bytes() for p in on_disk.glob("comparison.*")}
    (on_disk / NAME / "best" / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "num_params": 1}))
    _fill(small_disk)
    capsys.readouterr()
    assert main(["compare", "--results", str(on_disk), "--format", fmt]) == 2
    _disk_full_line(capsys)
    assert {p.name: p.read_bytes() for p in on_disk.glob("comparison.*")} == before
    assert not _half_written(small_disk)


@pytest.mark.slow
def test_a_search_that_fills_the_disk_says_so_in_one_line_and_leaves_no_half_file(small_disk):
    results = small_disk / "results"
    _fill(small_disk, leave=400 << 10)  # room for the data split and the first tables, not for the trials
    r = subprocess.run([sys.executable, "-m", "tuner", "search", "--space", str(DIGITS), "--results", str(results),
                        "--no-dashboard", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    err = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode == 2 and err[-1].startswith("error: the disk is full"), r.stderr[-3000:]
    # Ray printed the failed trial's 40-line worker traceback after it ("Unhandled error")
    assert "Traceback" not in r.stderr + r.stdout and "Unhandled error" not in r.stderr, r.stderr[-3000:]
    assert not _half_written(results)  # a .epochs.csv.*.tmp was left
