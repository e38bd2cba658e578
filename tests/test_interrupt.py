"""Ctrl-C (SIGINT) and SIGTERM at any moment of a search: exit 130 or 143, one line saying how to go on, no
traceback, no Ray process left behind (issue 20).

The searches run through the real CLI in a subprocess of their own session. Each is interrupted at a named
moment by the test hook in tuner.interrupt (TUNER_TEST_SIGNAL=PHASE:SIGNAL: the process sends itself the
signal on reaching PHASE), so what is tested is that moment, not whichever one a timer happened to hit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "digits_linear.yaml"


def _session_left(sid: int) -> list[str]:
    """The processes still in the session the search started (Ray's are in it; the watchdog is not)."""
    out = subprocess.run(["ps", "-eo", "sid=,pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split(None, 1)[0] == str(sid)]


def _search(tmp_path: Path, hook: str, *extra: str, ignore_sigint: bool = False) -> tuple[int, str, Path]:
    """`tuner search` of a small space, interrupted by `hook`; returns (exit status, output, results)."""
    results = tmp_path / "results"
    env = dict(os.environ, TUNER_TEST_SIGNAL=hook)
    # a job started with `&` in a shell script inherits SIGINT ignored
    inherit = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "search", "--space", str(SPACE), "--results",
                             str(results), "--no-dashboard", "--smoke", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=inherit)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # no Ray process outlives the driver: the watchdog ends the stragglers within a second or two
    deadline = time.time() + 60
    while _session_left(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _session_left(proc.pid), _session_left(proc.pid)
    return proc.returncode, out, results


def _check(code: int, out: str, status: int, says: str) -> str:
    assert code == status, out[-3000:]
    for noise in ("Traceback", "Exception ignored", "received at time", "*** SIG"):
        assert noise not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert says in last, out[-3000:]
    return last


NOTHING_SAVED = "before anything was saved: nothing to resume"


@pytest.mark.slow
@pytest.mark.parametrize("hook, status, says", [
    ("start:SIGINT", 130, NOTHING_SAVED),         # the first second: arguments not even parsed yet
    ("prepare:SIGINT", 130, NOTHING_SAVED),       # data preparation
    ("prepare:SIGTERM", 143, NOTHING_SAVED),
    ("prepare:SIGINT,SIGINT", 130, NOTHING_SAVED),  # a second Ctrl-C 0.3 s later: no traceback either
    # Ray's start: inside the at-fork hook of its first process, where Python drops what a handler raises
    ("ray+fork:SIGINT", 130, NOTHING_SAVED),
    ("ray+fork:SIGTERM", 143, NOTHING_SAVED),     # ray.init's own handler has SIGTERM then
    ("ray+fork:SIGINT,SIGINT", 130, NOTHING_SAVED),
    # the Tuner made (ray/tuner.pkl), Tune's loop not begun: nothing to resume yet (see the SIGKILL test)
    ("tuner+now:SIGINT", 130, NOTHING_SAVED),
    ("fit:SIGINT", 130, "--resume` continues"),   # a trial has reported: Tune saves, --resume continues
    ("fit:SIGTERM", 143, "--resume` continues"),
    ("fit:SIGINT,SIGINT", 130, "--resume` continues"),
    ("retrain:SIGINT", 130, "--resume` continues"),
    ("retrain:SIGTERM,SIGINT", 143, "--resume` continues"),
    # SIGTERM to every process of the search, Ray's too, as a batch system sends it: Ray's shutdown without
    # its GCS waited 60 s and exited 1; tuner is gone within tuner.interrupt.SIGTERM_GRACE_S
    ("fit:-SIGTERM", 143, "--resume` continues"),
    ("retrain:-SIGTERM", 143, "--resume` continues"),
], ids=lambda v: str(v).replace(" ", "") if isinstance(v, str) else "")
def test_a_signal_at_any_moment_of_a_search_stops_it_with_one_line(tmp_path, hook, status, says):
    code, out, results = _search(tmp_path, hook)
    if hook.endswith(":-SIGTERM") and code == 1:
        _ended_by_ray_first(out, results)
        return
    last = _check(code, out, status, says)
    assert last.startswith("interrupted" if status == 130 else "stopped by SIGTERM"), last
    assert "retrained best config" not in out  # the retrain never finished...
    assert not (results / "digits_linear" / "best" / "model.pt").exists()  # ... nor left a model
    if says == NOTHING_SAVED:  # and the command it prints starts the search again
        assert "--resume" not in last and "`python -m tuner search --space" in last


def _ended_by_ray_first(out: str, results: Path) -> None:
    """SIGTERM to the whole process group: Ray's client in the driver ends the process (exit 1) as soon as its
    node's object store is gone, about 50 ms after Ray's processes got the signal, which on a loaded machine
    can come before Python runs tuner's handler (seen in 1 of 5 tries under 3 busy processes; Ray's log: "The
    connection to the plasma store is failed. Terminate the process."). Nothing tuner can run then; what is
    promised (docs/running.md) is no traceback, no Ray process left, and a folder --resume finishes."""
    assert "Node failure" in out or "lost objects" in out, out[-3000:]
    for noise in ("Traceback", "Exception ignored"):
        assert noise not in out, out[-3000:]
    r = subprocess.run([sys.executable, "-m", "tuner", "search", "--space", str(SPACE), "--results", str(results),
                        "--no-dashboard", "--smoke", "--resume"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (results / "digits_linear" / "best" / "model.pt").is_file()


@pytest.mark.slow
def test_ctrl_c_is_not_lost_when_the_search_inherits_sigint_ignored(tmp_path):
    # `tuner search ... &` in a script, then `kill -INT`: Python leaves an ignored SIGINT ignored, and the
    # search ran on to the end, retrained and exited 0
    code, out, _ = _search(tmp_path, "prepare:SIGINT", ignore_sigint=True)
    _check(code, out, 130, NOTHING_SAVED)


@pytest.mark.slow
def test_resume_after_a_sigterm_during_the_search_finishes_it(tmp_path):
    code, out, results = _search(tmp_path, "fit:SIGTERM", "--no-retrain")
    last = _check(code, out, 143, "--resume` continues")
    command = last.split("`")[1].split()
    assert command[:3] == ["python", "-m", "tuner"] and command[-1] == "--resume"
    r = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (results / "digits_linear" / "best.yaml").is_file()


@pytest.mark.slow
def test_a_search_killed_before_tunes_loop_began_is_started_again_with_every_trial(tmp_path):
    # SIGKILLed after ray/tuner.pkl and before Tune's first experiment state: Tune's restore of that ran
    # num_samples=1 (Ray 2.60's resume passes none), so --resume of a 6-trial search ended with 1 trial
    # (2 of 6 configurations seen in CI with search.fuse: 3)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "tuner", "search", "--space", str(SPACE), "--results", str(results),
           "--no-dashboard", "--no-retrain", "--set", "search.num_samples=4", "--set", "scheduler.max_epochs=2",
           "--set", "scheduler.grace_period=1", "--set", "dataset.limit=300"]
    killed = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, TUNER_TEST_SIGNAL="tuner+now:SIGKILL"),
                            capture_output=True, text=True, timeout=600, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    ray = results / "digits_linear" / "ray"
    assert (ray / "tuner.pkl").is_file() and not list(ray.glob("experiment_state-*.json")), os.listdir(ray)
    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 2 and "error: --resume: nothing to resume" in resumed.stderr, resumed.stderr
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)  # not refused: nothing kept
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    trials = pd.read_csv(results / "digits_linear" / "trials.csv")
    assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"}, trials


# --------------------------------------------------------------------------- the mechanism, without Ray
LOST_IN_A_FORK = """
import os, signal, subprocess, sys, time
from tuner import interrupt

interrupt.begin(lambda signum: "interrupted")
armed = [True]

def after_fork():  # Python runs at-fork hooks and drops what they raise ("Exception ignored in ...")
    if armed:
        armed.clear()
        signal.raise_signal(signal.SIGINT)  # handled here, inside the hook

os.register_at_fork(after_in_parent=after_fork)
try:
    subprocess.run(["true"], preexec_fn=lambda: None)  # as Ray starts its processes: the hooks run
    time.sleep(5)
    print("lost")
except KeyboardInterrupt as exc:
    sys.exit(interrupt.finish(exc))
"""


def test_a_signal_whose_exception_python_drops_is_raised_again(tmp_path):
    # Ray's start forks a dozen processes; a Ctrl-C handled in an at-fork hook was lost that way
    r = subprocess.run([sys.executable, "-c", LOST_IN_A_FORK], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 130 and "lost" not in r.stdout, r.stdout + r.stderr
    assert r.stderr.strip() == "interrupted"  # and no "Exception ignored" traceback


def test_a_second_signal_while_stopping_exits_at_once_without_a_traceback(tmp_path):
    script = ("import os, signal, time\nfrom tuner import interrupt\n"
              "interrupt.begin(lambda signum: 'stopped')\n"
              "try:\n    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
              "except KeyboardInterrupt:\n"
              "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"  # stuck in the cleanup: asked again
              "print('not at once')\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 143 and r.stdout == "" and r.stderr.strip() == "stopped", r.stdout + r.stderr


CUTS = {
    # raised inside tqdm's constructor after its first draw: the bar never closed
    "before its with": "cut_off = progress.bar(300, 'testing', leave={leave})\n",
    # inside tqdm's close(), after it set `disable` and before it ended the line: a second close is a no-op
    "inside its close": "cut_off = progress.bar(300, 'testing', leave={leave})\ncut_off.disable = True\n",
    # inside the write of a bar's first draw, its text already on the terminal, the line an earlier bar ended
    # before it: what is known of the stream must not be the earlier bar's
    "inside a write": ("import sys\n"
                       "progress.bar(10, 'retraining', leave={leave}).close()\n"
                       "class Cut:\n"
                       "    def __init__(self, real): self.real = real\n"
                       "    def write(self, s):\n"
                       "        self.real.write(s); sys.stderr = self.real; raise interrupt.Interrupted()\n"
                       "    def __getattr__(self, name): return getattr(self.real, name)\n"
                       "sys.stderr = Cut(sys.stderr)\n"
                       "try:\n"
                       "    progress.bar(300, 'testing', leave={leave})\n"
                       "except KeyboardInterrupt:\n"
                       "    pass\n"),
}


@pytest.mark.parametrize("cut", sorted(CUTS))
@pytest.mark.parametrize("leave", [False, True])
def test_the_last_line_starts_a_line_of_its_own_when_a_bar_was_cut_off(leave, cut):
    # CI: SIGINT during the retrain's test pass printed "testing:   0%|   | 0/300 [00:00<?, ?img/s]interrupted;
    # ... --resume` continues", and SIGTERM the same with "stopped by SIGTERM": each way a signal can leave a
    # bar's line open (CUTS)
    code = ("from tuner import interrupt, progress\n"
            "interrupt.begin(lambda signum: 'interrupted; go on')\n"
            + CUTS[cut].format(leave=leave)
            + "raise SystemExit(interrupt.finish(interrupt.Interrupted()))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert r.returncode == 130, r.stderr
    shown = r.stderr.decode().replace("\r", "\n").strip().splitlines()  # what a terminal shows, line by line
    assert shown[-1] == "interrupted; go on", r.stderr
    assert any(line.startswith("testing:") for line in shown), r.stderr
