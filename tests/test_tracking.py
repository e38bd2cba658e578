"""The `tracking:` block against the real things: an MLflow tracking server started here (SQLite backend, on
127.0.0.1), read back through MlflowClient, and W&B in offline mode, its run files read back."""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tuner.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "digits_cnn.yaml"
SMALL = ["--set", "search.num_samples=2", "--set", "scheduler.max_epochs=2", "--set", "scheduler.grace_period=2",
         "--set", "fixed.channels=8", "--no-dashboard"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (d / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{d}/db.sqlite",
                             "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], cwd=d, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300  # its first start creates the database: a minute on a busy 2-core machine
        while True:
            assert proc.poll() is None, (d / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=5).close()
                break
            except OSError:
                assert time.time() < deadline, (d / "server.log").read_text()[-3000:]
                time.sleep(1)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def tracked(mlflow_server, tmp_path_factory):
    """One real search (2 trials, 2 epochs, retrained) logging to the server and to W&B offline."""
    d = tmp_path_factory.mktemp("tracked")
    block = {"mlflow": {"uri": mlflow_server, "experiment": "digits-tracking", "register": "digits_cnn_model"},
             "wandb": {"project": "digits-tracking", "mode": "offline", "dir": str(d / "wandb")}}
    code = main(["search", "--space", str(SPACE), "--results", str(d / "results"), *SMALL,
                 "--set", f"tracking={json.dumps(block)}"])
    assert code == 0
    return d, mlflow_server


@pytest.mark.slow
def test_every_trial_is_an_mlflow_run_under_one_parent(tracked):
    from mlflow.tracking import MlflowClient

    d, uri = tracked
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("digits-tracking")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tuner.role") == "search"]
    trials = [r for r in runs if r.data.tags.get("tuner.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    table = pd.read_csv(d / "results" / "digits_cnn" / "trials.csv", dtype={"trial_id": str})
    epochs = pd.read_csv(d / "results" / "digits_cnn" / "epochs.csv", dtype={"trial_id": str})
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["tuner.status"] == "completed"
        row = table[table["trial_id"] == run.info.run_name].iloc[0]
        assert float(run.data.params["lr"]) == pytest.approx(row["lr"])
        assert run.data.params["batch_size"] == str(row["batch_size"])
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        mine = epochs[epochs["trial_id"] == run.info.run_name]
        assert [m.step for m in history] == list(mine["epoch"])
        assert [m.value for m in history] == pytest.approx(list(mine["val_accuracy"]))
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(row["val_accuracy"])
    metrics = json.loads((d / "results" / "digits_cnn" / "best" / "metrics.json").read_text())
    assert parent.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert parent.data.metrics["test_f1_macro"] == pytest.approx(metrics["f1_macro"])
    best = yaml.safe_load((d / "results" / "digits_cnn" / "best.yaml").read_text())
    assert parent.data.tags["tuner.best_trial"] == best["trial_id"]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"space.yaml", "trials.csv", "best.yaml", "report.html"} <= names


@pytest.mark.slow
def test_a_trial_running_at_ctrl_c_is_one_run_killed_then_reopened_by_resume_and_ends_by_its_own_status(
        mlflow_server, tmp_path):
    """A trial still running when the search stopped was left RUNNING, and --resume started a second run for
    it beside the first (a new user saw 9 runs for 8 trials, one RUNNING for ever). The backend, as the driver
    drives it: the first run ends interrupted (KILLED); the resumed one goes on in it. Ray's part (which trial
    restarts) is the resume tests'."""
    from mlflow.tracking import MlflowClient

    from tuner import spaces
    from tuner.search.tracking import Mlflow, TrackingCallback
    from tuner.tracking import MlflowConfig

    exp = spaces.load(SPACE)
    cfg = MlflowConfig(uri=mlflow_server, experiment="digits-resumed")
    first = Mlflow(cfg, exp, tmp_path, resume=False)
    for t in ("done", "cut"):
        first.trial_start(exp, t, {"lr": 0.01})
        first.trial_result(t, {"val_accuracy": 0.5}, 1)
    first.trial_end("done", "completed")
    first.end(ok=False)  # Ctrl-C
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = {r.info.run_name: r for r in client.search_runs([first.experiment_id], "tags.`tuner.role` = 'trial'")}
    assert (runs["cut"].info.status, runs["cut"].data.tags["tuner.status"]) == ("KILLED", "interrupted")

    second = Mlflow(cfg, exp, tmp_path, resume=True)
    assert second.parent == first.parent and second.runs == first.runs
    callback = TrackingCallback(exp, [second])
    trial = type("Trial", (), {"trial_id": "cut", "config": {"lr": 0.01}, "last_result": None})()
    callback.on_trial_start(1, [], trial)
    assert client.get_run(first.runs["cut"]).info.status == "RUNNING"
    for epoch, done in ((2, False), (3, True)):  # the scheduler stops it at epoch 3 of 12
        trial.last_result = {"training_iteration": epoch, "val_accuracy": 0.6, "done": done}
        callback.on_trial_result(1, [], trial, trial.last_result)
    callback.on_trial_complete(1, [], trial)
    second.end(ok=True)
    runs = client.search_runs([first.experiment_id], "tags.`tuner.role` = 'trial'")
    assert sorted(r.info.run_name for r in runs) == ["cut", "done"]
    cut = next(r for r in runs if r.info.run_name == "cut")
    assert (cut.info.status, cut.data.tags["tuner.status"]) == ("FINISHED", "stopped early")
    assert [m.step for m in client.get_metric_history(cut.info.run_id, "val_accuracy")] == [1, 2, 3]


@pytest.mark.slow
def test_the_retrained_model_is_registered_with_its_signature_and_predicts_as_tuner_load(tracked):
    import mlflow
    from mlflow.tracking import MlflowClient

    import tuner
    from tuner.data import prepare
    from tuner.spaces import DatasetConfig

    d, uri = tracked
    client = MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions("name='digits_cnn_model'")
    assert [v.version for v in versions] == ["1"]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/digits_cnn_model/1")
    inputs = model.metadata.get_input_schema().inputs[0]
    assert inputs.type == np.dtype("uint8") and tuple(inputs.shape) == (-1, 8, 8, 1)
    data = prepare(DatasetConfig(name="digits"), progress=False)
    images = data.x_test[:16]
    local = tuner.load(d / "results" / "digits_cnn" / "best")
    got = model.predict(images)
    assert list(got.columns) == [str(c) for c in local.class_names]
    assert np.abs(got.to_numpy() - local.predict_proba(images)).max() < 1e-5


def _wandb_records(run_dir: Path) -> list:
    """The records of an offline run's .wandb file: W&B's log format (LevelDB's: 32 KiB blocks of chunks with a
    7-byte header) holding protobuf Records, read with W&B's own message classes."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks, out = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


@pytest.mark.slow
def test_every_trial_is_an_offline_wandb_run_and_the_search_holds_the_model(tracked):
    d, _ = tracked
    runs = {}
    for run_dir in (d / "wandb" / "wandb").glob("offline-run-*"):
        records = _wandb_records(run_dir)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                   for r in records if r.WhichOneof("record_type") == "history"]
        exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
        kinds = {r.WhichOneof("record_type") for r in records}
        runs[run.display_name] = (run, history, exits, kinds)
    epochs = pd.read_csv(d / "results" / "digits_cnn" / "epochs.csv", dtype={"trial_id": str})
    assert set(runs) == set(epochs["trial_id"]) | {"digits_cnn-search"}
    for name, (run, history, exits, _) in runs.items():
        assert run.run_group == "digits_cnn" and run.project == "digits-tracking" and exits == [0]
        if name == "digits_cnn-search":
            assert run.job_type == "search"
            continue
        assert run.job_type == "trial"
        config = {c.key: json.loads(c.value_json) for c in run.config.update}
        assert config["batch_size"] in (32, 64, 128)
        mine = epochs[epochs["trial_id"] == name]
        assert [h["val_accuracy"] for h in history] == pytest.approx(list(mine["val_accuracy"]))
    assert "artifact" in runs["digits_cnn-search"][3]  # the retrained model, logged as an artifact


@pytest.mark.parametrize("block, message", [
    ({"mlflw": {}}, "unknown key tracking.mlflw"),
    ({"mlflow": {"url": "x"}}, "tracking.mlflow: unknown key 'url'"),
    ({"wandb": {"mode": "sometimes"}}, "tracking.wandb.mode is 'sometimes'"),
    ({"mlflow": {"uri": 5}}, "tracking.mlflow.uri must be a non-empty string"),
    ("mlflow", "tracking must be a mapping"),
])
def test_a_bad_tracking_block_is_one_error_line(block, message, capsys):
    assert main(["validate", "--space", str(SPACE), "--set", f"tracking={json.dumps(block)}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_the_block_is_in_the_schema_and_in_space_yaml(capsys):
    import jsonschema

    from tuner.schema import schema

    raw = yaml.safe_load(SPACE.read_text()) | {"tracking": {"mlflow": {"uri": "http://127.0.0.1:5000"},
                                                             "wandb": {"project": "p", "mode": "offline"}}}
    jsonschema.validate(raw, schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw | {"tracking": {"wandb": {"mode": "sometimes"}}}, schema())
    assert main(["validate", "--space", str(SPACE), "--set", "tracking.wandb.mode=offline"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out.rsplit("\n", 2)[0])
    assert resolved["tracking"] == {"wandb": {"mode": "offline"}}


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_missing_package_is_exit_2_with_the_install_line(package, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # what `import mlflow` meets where it is not installed
    code = main(["search", "--space", str(SPACE), "--results", str(tmp_path / "r"), "--no-dashboard",
                 "--set", f"tracking.{package}.mode=offline" if package == "wandb" else "tracking.mlflow.uri=./mlruns"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"tracking.{package} needs the {package} package: pip install 'tuner-hpo[tracking]'" in err[0]


def test_an_mlflow_server_that_does_not_answer_is_one_error_line(tmp_path, capsys):
    code = main(["search", "--space", str(SPACE), "--results", str(tmp_path / "r"), "--no-dashboard",
                 "--set", f"tracking.mlflow.uri=http://127.0.0.1:{_free_port()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no MLflow server answers there" in err[0], err
