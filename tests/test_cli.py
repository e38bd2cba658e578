"""The command line as a user drives it: search -> best --export -> tuner.load, and one-line errors (exit 2)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import tuner
from tuner import interrupt
from tuner.cli import build_parser, main
from tuner.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
CONTRACT_METRICS = {"accuracy", "loss", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
                    "recall_weighted", "f1_weighted", "balanced_accuracy", "auc_ovr", "tpr", "tnr", "fpr", "fnr",
                    "num_test", "num_params", "train_time_s"}


@pytest.mark.slow
def test_search_writes_the_contract_results_layout(finished_search):
    d = finished_search / "digits_cnn"
    for f in ["space.yaml", "trials.csv", "epochs.csv", "best.yaml", "split.npz", "plots/learning_curves.png",
              "plots/parameters.png", "plots/importance.png", "best/model.pt", "best/metrics.json",
              "best/confusion_matrix.csv", "best/confusion_matrix.png", "best/classification_report.csv",
              "best/curves.png"]:
        assert (d / f).is_file(), f
    assert (d / "ray").is_dir()
    assert (finished_search / "comparison.md").is_file() and (finished_search / "comparison.csv").is_file()


@pytest.mark.slow
def test_trials_and_epochs_csv_have_contract_columns(finished_search):
    d = finished_search / "digits_cnn"
    trials = pd.read_csv(d / "trials.csv")
    assert len(trials) == 2  # --smoke wins over --set: 2 trials
    for col in ["trial_id", "status", "error", "lr", "batch_size", "blocks", "epochs", "val_accuracy", "val_loss",
                "time_s"]:
        assert col in trials, col
    assert set(trials["status"]) == {"TERMINATED"}
    epochs = pd.read_csv(d / "epochs.csv")
    assert list(epochs.columns) == ["trial_id", "epoch", "train_loss", "train_accuracy", "val_loss",
                                    "val_accuracy", "lr", "time_s"]
    assert set(epochs["trial_id"]) == set(trials["trial_id"])


@pytest.mark.slow
def test_metrics_json_has_every_contract_key(finished_search):
    metrics = json.loads((finished_search / "digits_cnn" / "best" / "metrics.json").read_text())
    assert CONTRACT_METRICS <= set(metrics)
    assert 0 <= metrics["accuracy"] <= 1 and metrics["num_test"] > 0


@pytest.mark.slow
def test_best_yaml_holds_whole_config_and_validation_metrics(finished_search):
    best = yaml.safe_load((finished_search / "digits_cnn" / "best.yaml").read_text())
    assert {"lr", "batch_size", "blocks", "pool"} <= set(best["config"])
    assert 0 <= best["metrics"]["val_accuracy"] <= 1


@pytest.mark.slow
def test_split_indices_are_saved_and_disjoint(finished_search):
    split = np.load(finished_search / "digits_cnn" / "split.npz")
    sets = [set(split[k]) for k in ("train", "val", "test")]
    assert all(len(s) for s in sets)
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


@pytest.mark.slow
def test_best_export_then_load_predicts_numpy_and_pil(finished_copy, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    out = tmp_path / "bundle"
    assert main(["best", "--results", str(finished_copy), "--experiment", "digits_cnn", "--export", str(out)]) == 0
    assert "val_accuracy" in capsys.readouterr().out
    model = tuner.load(out)
    assert model.class_names == [str(i) for i in range(10)]
    d = load_digits()
    images = np.round(d.images[:50] * 255 / 16).astype(np.uint8)
    preds = model.predict(images)
    assert len(preds) == 50 and set(preds) <= set(model.class_names)
    assert np.mean(np.array(preds) == d.target[:50].astype(str)) > 0.3  # one smoke epoch: well above chance
    pil = Image.fromarray(images[0]).resize((32, 32))  # any size: the bundle resizes to what it was trained on
    assert model.predict(pil)[0] in model.class_names
    assert model.predict_proba(images[:3]).shape == (3, 10)


@pytest.mark.slow
def test_best_export_defaults_to_experiment_export_folder(finished_copy):
    assert main(["best", "--results", str(finished_copy), "--export"]) == 0
    assert (finished_copy / "digits_cnn" / "export" / "model.pt").is_file()


@pytest.mark.slow
def test_list_shows_the_experiment_and_says_when_it_stopped_short_of_its_trials(finished_copy, capsys):
    assert main(["list", "--results", str(finished_copy)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("digits_cnn") and "   2 trials" in line and "unfinished" not in line, line
    trials = finished_copy / "digits_cnn" / "trials.csv"  # as a search killed after its first trial leaves it
    trials.write_text("".join(trials.read_text().splitlines(keepends=True)[:2]))
    assert main(["list", "--results", str(finished_copy)]) == 0
    assert capsys.readouterr().out.strip().endswith("(unfinished: 1 of 2 trials; --resume continues it)")
    shutil.rmtree(finished_copy / "digits_cnn" / "ray")  # as a search refused before Ray saved anything
    assert main(["list", "--results", str(finished_copy)]) == 0
    assert capsys.readouterr().out.strip().endswith("(unfinished: 1 of 2 trials; the same command starts it)")


def test_validate_prints_resolved_space_and_exits_0(capsys):
    assert main(["validate", "--space", str(SPACES / "digits_cnn.yaml"), "--set", "fixed.lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.01" in out and "valid" in out


@pytest.mark.parametrize("argv, fragment", [
    (["validate", "--space", "nope.yaml"], "nope.yaml"),
    (["validate", "--space", "{digits}", "--set", "bogus=1"], "bogus"),
    (["validate", "--space", "{digits}", "--set", "space.lr={loguniform: [0, 1]}"], "space.lr"),
    (["validate", "--space", "{digits}", "--set", "space.lr={uniform: [1, 0]}"], "space.lr"),
    (["validate", "--space", "{digits}", "--set", "space.batch_size={choice: []}"], "space.batch_size"),
    (["validate", "--space", "{digits}", "--set", "space.depth={int: [1, 3]}"], "depth"),
    (["validate", "--space", "{digits}", "--set", "noequals"], "noequals"),
    (["validate", "--space", "{bad_yaml}"], "not valid YAML"),
    (["search", "--space", "{digits}", "--set", "dataset.name=cifar10", "--no-dashboard"], "dataset.root"),
    (["search", "--space", "{digits}", "--resume", "--results", "{tmp}", "--no-dashboard"], "nothing to resume"),
    (["best", "--results", "{tmp}"], "no finished experiment"),
    (["compare", "--results", "{tmp}/none"], "no such folder"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_error_line(tmp_path, capsys, argv, fragment):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspace: [unclosed\n")
    subs = {"{digits}": str(SPACES / "digits_cnn.yaml"), "{bad_yaml}": str(bad), "{tmp}": str(tmp_path)}
    argv = [a.replace("{tmp}", str(tmp_path)) if "{tmp}" in a else subs.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error:") and fragment in err[0]
    assert "Traceback" not in err[0]


@pytest.mark.slow  # fresh interpreters: their imports take seconds
def test_python_dash_m_and_console_script_both_run():
    for cmd in ([sys.executable, "-m", "tuner", "validate", "--space", str(SPACES / "digits_linear.yaml")],
                [str(Path(sys.executable).parent / "tuner"), "validate", "--space", str(SPACES / "digits_mlp.yaml")]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "valid" in done.stdout


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_dashboard_port_out_of_range_exits_2_with_one_error_line(tmp_path, capsys, port):
    d = tmp_path / "results" / "digits_cnn"  # an experiment with a study, so only the port can be wrong
    d.mkdir(parents=True)
    (d / "space.yaml").write_text("name: digits_cnn\nfamily: cnn\n")
    (d / "optuna.journal").write_text("")
    assert main(["dashboard", "--results", str(tmp_path / "results"), "--experiment", "digits_cnn",
                 "--port", port]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert f"--port: {port!r} is not a port; give one from 1 to 65535" in lines[0]
    assert "optuna-dashboard" not in out  # refused before the server starts


def test_dashboard_port_0_is_refused_and_65535_accepted_by_the_parser():
    with pytest.raises(UserError, match="--port: '0' is not a port"):
        build_parser().parse_args(["dashboard", "--port", "0"])
    assert build_parser().parse_args(["dashboard", "--port", "65535"]).port == 65535
    assert build_parser().parse_args(["dashboard"]).port == 8080


@pytest.mark.parametrize("resume", [[], ["--resume"], ["--resum"]])
def test_ctrl_c_during_search_prints_the_users_own_command_with_resume_once(monkeypatch, capsys, resume):
    def interrupted(args):
        interrupt.note_resumable(lambda: True)  # as the driver does: Ray has saved the experiment
        raise KeyboardInterrupt

    monkeypatch.setattr("tuner.commands.search", interrupted)
    argv = shlex.split("search --space 'my spaces/digits.yaml' --name d1 --results 'out dir' --no-dashboard "
                       "--set 'space.lr={loguniform: [1.0e-4, 1.0e-2]}' --set search.num_samples=2") + resume
    assert main(argv) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("interrupted; `") and lines[0].endswith("` continues where this stopped")
    command = lines[0].split("`")[1]
    assert shlex.split(command) == ["tuner", *argv] + ([] if resume else ["--resume"])  # runnable as printed


@pytest.mark.parametrize("overwrite", ["--overwrite", "--overw"])
def test_the_command_that_continues_a_search_started_with_overwrite_leaves_overwrite_out(monkeypatch, capsys,
                                                                                         overwrite):
    """--overwrite beside --resume replaces nothing, but reads to a user as if the line would empty the folder."""
    def interrupted(args):
        interrupt.note_resumable(lambda: True)
        raise KeyboardInterrupt

    monkeypatch.setattr("tuner.commands.search", interrupted)
    argv = ["search", "--space", "s.yaml", overwrite, "--set", "search.num_samples=2"]
    assert main(argv) == 130
    command = capsys.readouterr().err.strip().split("`")[1]
    assert shlex.split(command) == ["tuner", "search", "--space", "s.yaml", "--set", "search.num_samples=2",
                                    "--resume"]
    # before anything was saved the search is started again: as the user wrote it, --overwrite and all
    def not_saved(args):
        interrupt.note_resumable(lambda: False)
        raise KeyboardInterrupt

    monkeypatch.setattr("tuner.commands.search", not_saved)
    assert main(argv) == 130
    assert shlex.split(capsys.readouterr().err.strip().split("`")[1]) == ["tuner", *argv]


@pytest.mark.parametrize("resume", [[], ["--resum", "--retry-failed"]])
def test_ctrl_c_before_anything_was_saved_says_nothing_to_resume_and_how_to_start_again(monkeypatch, capsys,
                                                                                        resume):
    def interrupted(args):
        interrupt.note_resumable(lambda: False)  # Ray has saved nothing yet (data preparation, Ray's start)
        raise KeyboardInterrupt

    monkeypatch.setattr("tuner.commands.search", interrupted)
    argv = shlex.split("search --space s.yaml --results 'out dir' --set search.num_samples=2")
    assert main(argv + resume) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "nothing to resume" in lines[0] and lines[0].endswith("starts the search again")
    assert shlex.split(lines[0].split("`")[1]) == ["tuner", *argv]


@pytest.mark.slow  # fresh interpreters: their imports take seconds
def test_output_into_a_closed_pipe_ends_quietly_like_a_unix_tool(tmp_path):
    # `tuner validate ... | head -1`: the reader leaves before tuner writes; no traceback, exit 141 (SIGPIPE)
    env = dict(os.environ)  # conftest puts this checkout first on PYTHONPATH
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "validate", "--space",
                             str(ROOT / "search_spaces" / "digits_cnn.yaml")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("argv, status", [(["--version"], 0), (["validate", "--space", "missing.yaml"], 2)])
def test_the_program_leaves_with_its_commands_status_after_every_atexit_handler_the_command_registered(argv, status):
    """`python -m tuner` skips Python's teardown (cli._ProgramEnd): only once the handlers that libraries
    register while the command runs (Ray's shutdown, MLflow's flush) have run, and with the command's status."""
    code = ("import atexit, sys\nimport tuner.cli as cli\nrun = cli._command\n"
            "def command(argv, program):\n    atexit.register(print, 'a handler the command registered ran')\n"
            "    return run(argv, program)\n"
            f"cli._command = command\nsys.argv = ['tuner'] + {argv!r}\nraise SystemExit(cli.main())\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == status, r.stderr
    assert r.stdout.rstrip().endswith("a handler the command registered ran"), r.stdout
