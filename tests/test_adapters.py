"""Each Ray / Optuna internal tuner uses (tuner/search/adapters.py) is still there with the shape it relies on,
so an upgrade that changes one fails here, naming it; and ASHA's restored rungs make the decisions an
uninterrupted ASHA makes (deterministic: a fixed sequence of results, no Ray run)."""
from __future__ import annotations

import pickle
import random

import optuna
import pytest
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tuner.search import adapters


def test_the_checked_versions_are_the_installed_ones_or_the_checks_below_still_hold():
    # informative: a newer Ray or Optuna than the one the docstrings name is fine while this file passes
    assert adapters.RAY_CHECKED and adapters.OPTUNA_CHECKED
    assert ray.__version__ and optuna.__version__


def test_tune_run_tags_its_callbacks_where_skip_callback_usage_tag_replaces_it():
    import inspect

    from ray.air._internal import usage
    from ray.tune import tune as tune_module

    assert tune_module.air_usage is usage  # tune.run looks the tag up on the module at each call
    assert "air_usage.tag_callbacks(callbacks)" in inspect.getsource(tune_module.run)


@pytest.mark.slow  # fresh interpreters: their imports take seconds
def test_the_skipped_callback_tag_no_longer_imports_mlflow_and_wandb():
    # in fresh interpreters: the premise (Ray's tag imports both, about a second) and the fix
    import subprocess
    import sys

    code = """
import sys
from ray.air._internal import usage
from ray.tune import Callback
if sys.argv[1] == "skip":
    from tuner.search import adapters
    adapters.skip_callback_usage_tag()
usage.tag_callbacks([Callback()])
print("mlflow" in sys.modules, "wandb" in sys.modules)
"""
    out = {how: subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, check=True).stdout
           for how in ("ray", "skip")}
    assert out == {"ray": "True True\n", "skip": "False False\n"}, out


def test_a_tuner_keeps_its_tune_and_run_config_where_restored_configs_reads_them(tmp_path):
    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(num_samples=3),
                       run_config=tune.RunConfig(name="x", storage_path=str(tmp_path)))
    tune_config, run_config = adapters.restored_configs(tuner)
    assert isinstance(tune_config, tune.TuneConfig) and tune_config.num_samples == 3
    assert isinstance(run_config, tune.RunConfig) and run_config.name == "x"
    assert hasattr(tune_config, "search_alg") and hasattr(tune_config, "scheduler")
    assert hasattr(run_config, "callbacks") and hasattr(run_config, "stop") and hasattr(run_config, "verbose")


def test_tunes_experiment_state_file_is_the_one_rundir_looks_for(tmp_path):
    # TuneController writes CKPT_FILE_TMPL.format(session) at the first pass of its loop; a search stopped
    # before it is started again, not resumed (rundir.RAY_STATE, adapters.experiment_state_saved)
    from ray.tune.execution.tune_controller import TuneController

    from tuner.rundir import RAY_STATE

    name = TuneController.CKPT_FILE_TMPL.format("2026-12-05_02-59-48")
    assert adapters.experiment_state_pattern() == RAY_STATE == "experiment_state-*.json"
    assert not adapters.experiment_state_saved(str(tmp_path))
    (tmp_path / "tuner.pkl").write_bytes(b"")
    assert not adapters.experiment_state_saved(str(tmp_path)) and not adapters.experiment_state_saved(
        str(tmp_path / "absent"))
    (tmp_path / name).write_text("{}")
    assert adapters.experiment_state_saved(str(tmp_path)) and adapters.experiment_state_saved(tmp_path.as_uri())


def test_a_checkpoint_manager_keeps_the_latest_checkpoint_where_snapshot_checkpoints_reads_it(tmp_path):
    # the end to end check (a snapshot naming a deleted checkpoint) is in test_fused_search
    from ray.train._internal.checkpoint_manager import _CheckpointManager

    manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=2))
    assert hasattr(manager, "_latest_checkpoint_result") and manager._latest_checkpoint_result is None
    assert adapters.snapshot_checkpoints(str(tmp_path)) == []
    assert adapters.restore_deleted_checkpoints(str(tmp_path)) == []


def test_in_folder_moves_a_trials_storage_as_ray_moves_restored_trials(tmp_path):
    from ray.train._internal.storage import StorageContext

    old = StorageContext(storage_path=str(tmp_path / "A" / "exp"), experiment_dir_name="ray", trial_dir_name="trial_1")
    new = adapters.in_folder(old, str(tmp_path / "B" / "exp"), "ray")
    assert new.trial_fs_path == str(tmp_path / "B" / "exp" / "ray" / "trial_1")
    assert old.trial_fs_path == str(tmp_path / "A" / "exp" / "ray" / "trial_1")  # a copy: the old one unchanged


@pytest.mark.parametrize("cls", [adapters.FolderSearchGenerator, adapters.FolderVariantGenerator])
def test_the_search_algorithms_create_trials_in_next_trial_and_restore_in_set_state(cls):
    # _InFolder overrides these two; both must still be the methods Ray's controller and restore call
    for name in ("next_trial", "set_state", "get_state", "save_to_dir", "restore_from_dir"):
        assert callable(getattr(cls, name)), name
    assert cls.next_trial is adapters._InFolder.next_trial and cls.set_state is adapters._InFolder.set_state


def test_a_variant_generators_trials_go_to_home_and_home_survives_set_state(tmp_path):
    from ray.tune.experiment import Experiment

    gen = adapters.FolderVariantGenerator(max_concurrent=0)
    gen.add_configurations([Experiment("exp", lambda config: None, num_samples=2, config={"x": 1},
                                       storage_path=str(tmp_path / "A"))])
    state = gen.get_state()
    gen.home = (str(tmp_path / "B"), "exp")
    gen.set_state(state)  # a restore from the first run's snapshot keeps this run's home
    assert gen.home == (str(tmp_path / "B"), "exp")
    trial = gen.next_trial()
    assert trial.storage.storage_fs_path == str(tmp_path / "B") and trial.storage.experiment_dir_name == "exp"


def _optuna_search(tmp_path) -> adapters.OptunaSearchAdapter:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    return adapters.OptunaSearchAdapter(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m",
                                        mode="max", storage=storage, study_name="s",
                                        sampler=optuna.samplers.RandomSampler(seed=0))


def test_ray_optuna_search_keeps_its_state_in_the_attributes_the_adapter_names(tmp_path):
    s = _optuna_search(tmp_path)
    for name in adapters.OptunaSearchAdapter._REOPENED + ("_completed_trials", "_sampler", "_study_name", "_mode"):
        assert name in s.__dict__, name
    s.suggest("r1")
    assert isinstance(s.optuna_trial("r1"), optuna.Trial) and s.known() == {"r1"} and isinstance(s.study, optuna.Study)
    s.on_trial_complete("r1", {"m": 0.5})
    assert s.is_completed("r1")


def test_the_optuna_search_pickles_without_its_study_and_reopens_it_by_ray_trial_id(tmp_path):
    s = _optuna_search(tmp_path)
    s.suggest("r1")
    s.optuna_trial("r1").set_user_attr("ray_trial_id", "r1")
    back = pickle.loads(pickle.dumps(s))
    assert back.study is None and back.known() == set()  # nothing of the journal's path travels
    s.save(str(tmp_path / "snap.pkl"))
    back.restore(str(tmp_path / "snap.pkl"))
    assert back.__dict__.pop("_snapshot_known") == ["r1"] and back.study is None
    back.reopen(optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j"))))
    assert back.known() == {"r1"} and back.optuna_trial("r1").number == s.optuna_trial("r1").number


def test_a_restored_search_draws_on_from_its_snapshots_sampler_not_the_first_runs(tmp_path):
    s = _optuna_search(tmp_path)
    as_first_pickled = pickle.loads(pickle.dumps(s))  # tuner.pkl: the searcher before any trial
    first = s.suggest("r1")
    s.on_trial_complete("r1", {"m": 0.5})
    s.save(str(tmp_path / "snap.pkl"))
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    as_first_pickled.reopen(journal)  # what the driver does after Tuner.restore, before Ray restores the snapshot
    as_first_pickled.restore(str(tmp_path / "snap.pkl"))
    resumed = as_first_pickled.suggest("r2")
    assert resumed != first  # the seeded sampler went on; it did not start over
    assert resumed == s.suggest("r2")  # the draw the search never interrupted makes next
    study = as_first_pickled.study  # the reopened study asks the search's own sampler, and prunes nothing
    assert study.sampler is as_first_pickled._sampler and isinstance(study.pruner, optuna.pruners.NopPruner)


def test_a_frozen_trials_storage_id_reaches_the_same_trial_and_fail_unfinished_fails_it():
    study = optuna.create_study()
    asked = study.ask()
    frozen = study.trials[0]
    assert optuna.trial.Trial(study, adapters.storage_id(frozen)).number == asked.number
    adapters.fail_unfinished(study, frozen)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_contains_tells_a_value_inside_a_distribution_from_one_outside():
    dist = optuna.distributions.FloatDistribution(0.1, 0.2, log=True)
    assert adapters.contains(dist, 0.15) and not adapters.contains(dist, 0.3)
    assert adapters.contains(optuna.distributions.IntDistribution(1, 3), 2)


def test_asha_keeps_rungs_of_milestone_and_recorded_scores_per_bracket():
    asha = ASHAScheduler(metric="m", mode="max", max_t=9, grace_period=1, reduction_factor=3)
    rungs = adapters.asha_rungs(asha)
    assert [m for m, _ in rungs] == [9, 3, 1] and all(r == {} for _, r in rungs)
    assert asha._metric_op == 1.0 and ASHAScheduler(metric="m", mode="min")._metric_op == -1.0
    trial = Trial("tuner_test", stub=True, trial_id="a")
    asha.on_trial_add(None, trial)
    asha.on_trial_result(None, trial, {"training_iteration": 1, "m": 0.5})
    assert adapters.asha_rungs(asha)[2][1] == {"a": 0.5}  # a reported score lands in its rung's dict


# ------------------------------------------------------------------ ASHA resumed = ASHA uninterrupted
def _results(seed: int, trials: int = 8, max_t: int = 9) -> list[tuple[str, int, float]]:
    """Interleaved (trial, epoch, running best) results, in arrival order: trials start one after another
    and report at different paces, as concurrent trials do."""
    rng = random.Random(seed)
    best = {f"t{i}": 0.0 for i in range(trials)}
    pending = {f"t{i}": 1 for i in range(trials)}
    out = []
    while pending:
        tid = rng.choice(sorted(pending)[:3])  # at most 3 running at once
        best[tid] = max(best[tid], rng.random())
        out.append((tid, pending[tid], best[tid]))
        pending[tid] += 1
        if pending[tid] > max_t:
            del pending[tid]
    return out


def _decide(asha, results, added: set) -> dict[tuple[str, int], str]:
    """Feed results to ASHA as Ray would (a stopped trial reports nothing more); its decision for each."""
    out, stopped = {}, set()
    for tid, epoch, score in results:
        if tid in stopped:
            continue
        trial = Trial("tuner_test", stub=True, trial_id=tid)
        if tid not in added:
            asha.on_trial_add(None, trial)
            added.add(tid)
        out[tid, epoch] = asha.on_trial_result(None, trial, {"training_iteration": epoch, "m": score})
        if out[tid, epoch] == TrialScheduler.STOP:
            stopped.add(tid)
    return out


def _asha(mode: str = "max") -> ASHAScheduler:
    return ASHAScheduler(metric="m", mode=mode, max_t=9, grace_period=1, reduction_factor=3)


@pytest.mark.parametrize("seed", range(5))
def test_restored_rungs_make_the_decisions_an_uninterrupted_asha_makes(seed):
    results = _results(seed)
    whole = _decide(_asha(), results, set())
    stopped_at = {tid: e for (tid, e), d in whole.items() if d == TrialScheduler.STOP}
    ran = [(t, e, s) for t, e, s in results if e <= stopped_at.get(t, 99)]  # what an uninterrupted search ran
    cut = len(ran) // 2
    before, after = ran[:cut], ran[cut:]
    scores: dict[str, dict[int, float]] = {}
    for tid, epoch, score in before:  # what epochs.csv holds at the interruption
        scores.setdefault(tid, {})[epoch] = score
    resumed = _asha()
    added = set()
    for tid in scores:  # Ray adds every restored trial to the scheduler again
        resumed.on_trial_add(None, Trial("tuner_test", stub=True, trial_id=tid))
        added.add(tid)
    assert adapters.restore_asha(resumed, scores) > 0
    again = _decide(resumed, after, added)
    assert again == {k: whole[k] for k in again}
    # and the rungs had to be restored for that: an ASHA that forgot them lets on some trial it would stop
    forgetful = _decide(_asha(), after, set())
    assert forgetful != {k: whole[k] for k in forgetful}


def test_restore_asha_records_the_first_epoch_at_or_past_each_milestone_in_the_schedulers_sign():
    asha = _asha("min")
    n = adapters.restore_asha(asha, {"a": {1: 0.9, 2: 0.8, 4: 0.5}, "b": {1: 0.7}})
    rungs = dict(adapters.asha_rungs(asha))
    assert rungs[1] == {"a": -0.9, "b": -0.7} and rungs[3] == {"a": -0.5} and rungs[9] == {} and n == 3


def test_whole_file_uploads_replace_each_file_and_leave_other_file_systems_to_ray(tmp_path):
    import os

    import pyarrow.fs
    from ray.train._internal import storage

    src, dst = tmp_path / "staging", tmp_path / "results"
    (src / "trial_a").mkdir(parents=True)
    (src / "experiment_state-x.json").write_text('{"trial_data": []}')
    (src / "trial_a" / "result.json").write_text("{}\n")
    (dst / "trial_a").mkdir(parents=True)
    (dst / "experiment_state-x.json").write_text("old")
    before = os.stat(dst / "experiment_state-x.json").st_ino

    adapters.whole_file_uploads()
    adapters.whole_file_uploads()  # once is enough; a second call wraps nothing again
    syncer = storage._FilesystemSyncer(storage_filesystem=pyarrow.fs.LocalFileSystem())
    upload, kwargs = syncer._sync_up_command(str(src), str(dst))
    upload(**kwargs)
    assert (dst / "experiment_state-x.json").read_text() == '{"trial_data": []}'
    assert (dst / "trial_a" / "result.json").read_text() == "{}\n"
    # renamed over the old file (a new inode), not rewritten in place: a kill leaves one or the other
    assert os.stat(dst / "experiment_state-x.json").st_ino != before
    assert sorted(p.name for p in dst.rglob("*")) == ["experiment_state-x.json", "result.json", "trial_a"]
    # an excluding upload, and any other file system, stay Ray's own (and Ray's command still returns its
    # _upload_to_fs_path with local_path, fs and fs_path: the shape whole_file_uploads reads)
    assert syncer._sync_up_command(str(src), str(dst), exclude=["*.pkl"])[0] is storage._upload_to_fs_path
    remote = storage._FilesystemSyncer(storage_filesystem=pyarrow.fs.SubTreeFileSystem(str(dst),
                                                                                      pyarrow.fs.LocalFileSystem()))
    assert remote._sync_up_command(str(src), "x")[0] is storage._upload_to_fs_path


@pytest.mark.parametrize("text, readable", [('{"trial_data": []}', True), ("", False), ('{"trial_da', False)])
def test_resume_refuses_an_experiment_state_a_kill_cut_off(tmp_path, text, readable):
    from tuner.errors import UserError

    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')  # an older run's
    newest = tmp_path / "experiment_state-2026-01-02_00-00-00.json"  # the one Ray reads
    newest.write_text(text)
    if readable:
        adapters.check_state_readable(str(tmp_path), "x")
        return
    with pytest.raises(UserError, match="is empty or cut off .* --overwrite starts experiment 'x' again"):
        adapters.check_state_readable(str(tmp_path), "x")


def test_a_refused_token_is_told_apart_from_a_missing_cluster_by_the_error_chain_ray_init_raises():
    """refused_for_token reads the text of ray.init's error chain: Node._init_gcs_client puts the last
    connection error's traceback (an AuthenticationError when the token is refused) into the RuntimeError
    that ray.init's ConnectionError is raised from. The real refusal: test_cluster's token test."""
    import inspect

    from ray._private.node import Node
    from ray.exceptions import AuthenticationError

    source = inspect.getsource(Node._init_gcs_client)
    assert "traceback.format_exc()" in source and "connection error: {last_ex}" in source
    assert issubclass(AuthenticationError, Exception)
    refused = RuntimeError("Failed to connect to GCS. Last connection error: Traceback ...\n"
                           "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: missing or incorrect")
    try:
        try:
            raise refused
        except RuntimeError as e:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from e
    except ConnectionError as chained:
        assert adapters.refused_for_token(chained)
    assert not adapters.refused_for_token(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"))


def test_rays_loggers_come_after_the_searchs_callbacks_and_get_the_dict_they_changed():
    """take_from_result relies on both: Tune appends its CSV, JSON and TensorBoard loggers to the callbacks it
    is given, and CallbackList hands each callback the same result dict."""
    from ray.tune.callback import Callback, CallbackList
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    seen = []

    class Taker(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            assert adapters.take_from_result(result, "history") == [1, 2]

    class Logger(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen.append(dict(result))

    ours = Taker()
    made = _create_default_callbacks([ours])
    loggers = [i for i, c in enumerate(made) if isinstance(c, (CSVLoggerCallback, JsonLoggerCallback))]
    assert made.index(ours) == 0 and len(loggers) == 2 and min(loggers) > 0
    CallbackList([ours, Logger()]).on_trial_result(iteration=1, trials=[], trial=None,
                                                   result={"epoch": 3, "history": [1, 2]})
    assert seen == [{"epoch": 3}]


def test_a_continued_progress_csv_keeps_the_columns_of_its_header(tmp_path):
    """Ray's CSV logger takes a restarted trial's columns from its first result, not from the file's header
    (HeaderKeepingCSVLogger): a first result with other keys than the header's shifted every later row."""
    import csv

    from ray.tune.logger import CSVLoggerCallback

    class Trial:  # what the logger reads of a trial (hashable: its files are kept per trial)
        local_path, checkpoint = str(tmp_path), None

        def init_local_path(self) -> None:
            pass

    (tmp_path / "progress.csv").write_text("epoch,val_accuracy,members/a/stopped\n1,0.5,False\n")
    trial = Trial()
    resumed = {"epoch": 2, "members/a/error": "", "val_accuracy": 0.75, "members/a/history": "[...]"}

    def rows_after(logger) -> list[list[str]]:
        (tmp_path / "progress.csv").write_text("epoch,val_accuracy,members/a/stopped\n1,0.5,False\n")
        logger.log_trial_result(1, trial, dict(resumed))
        logger.log_trial_end(trial)
        return list(csv.reader((tmp_path / "progress.csv").open()))

    assert rows_after(adapters.HeaderKeepingCSVLogger())[-1] == ["2", "0.75", ""]
    ray_rows = rows_after(CSVLoggerCallback())  # Ray's own: the same row under the wrong columns
    assert ray_rows[-1] != ["2", "0.75", ""], "Ray's CSV logger keeps the header now: the adapter can go"


@pytest.mark.slow
def test_end_monitor_first_ends_the_local_rays_monitor_and_the_shutdown_then_ends_the_rest():
    """In a fresh process (the test workers' own Ray is left alone): Ray's node keeps its processes in
    `all_processes` under PROCESS_TYPE_MONITOR, end_monitor_first ends that one, and ray.shutdown the others."""
    import subprocess
    import sys

    code = """
import os, ray
from ray._private import ray_constants, worker
from tuner.search import adapters
from tuner.search.cluster import start_local_ray
start_local_ray({"include_dashboard": False, "logging_level": 40, "log_to_driver": False})
procs = {kind: [i.process for i in infos] for kind, infos in worker._global_node.all_processes.items()}
monitor = procs[ray_constants.PROCESS_TYPE_MONITOR]
assert len(monitor) == 1 and monitor[0].poll() is None, procs
adapters.end_monitor_first()
assert monitor[0].poll() is not None, "the monitor still runs"
assert all(p.poll() is None for kind, ps in procs.items() if kind != ray_constants.PROCESS_TYPE_MONITOR for p in ps)
ray.shutdown()
left = [p.pid for ps in procs.values() for p in ps if p.poll() is None]
assert not left, left
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
