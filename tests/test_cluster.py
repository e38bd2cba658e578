"""The Ray a local search starts: reachable from this machine only, no worker started before one is needed,
gone with the search that started it."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Runs in its own interpreter (a Ray of its own, started the way `tuner search` starts it); prints every
# socket that waits for connections, of itself and of all the processes under it, once Ray's agents and a
# worker are up, and the worker processes there are then.
LISTENERS = textwrap.dedent("""
    import json, sys, time
    import ray
    import psutil  # after ray: Ray ships it (ray/thirdparty_files)
    from tuner.search.cluster import init_ray

    init_ray(None, dashboard=True, say=lambda line: None, verbose=False)
    me = psutil.Process()

    def listening():
        out = []
        for p in [me] + me.children(recursive=True):
            try:
                name, socks = p.name(), p.net_connections(kind="inet")
            except psutil.Error:
                continue
            # TCP waiting for connections, or UDP bound to no peer
            out += [[p.pid, name, s.laddr.ip, s.laddr.port] for s in socks
                    if s.status == psutil.CONN_LISTEN or (s.type == 2 and not s.raddr)]
        return out

    def workers():  # Python workers: default_worker.py until they name themselves ray::IDLE, ray::<task>
        out = []
        for p in me.children(recursive=True):
            try:
                name, cmd = p.name(), p.cmdline()
            except psutil.Error:
                continue
            starting = len(cmd) > 1 and cmd[1].endswith("default_worker.py")
            out += [[p.pid, name]] if starting or (name.startswith("ray::") and "Agent" not in name) else []
        return out

    deadline = time.time() + 60
    while time.time() < deadline:  # the agents open their ports a little after ray.init returns
        names = {n for _, n, _, _ in listening()}
        if {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names:
            break
        time.sleep(1)
    idle = workers()  # the node up, nothing asked of it yet
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker runs, so its server is up
    print(json.dumps({"listening": listening(), "workers_before_a_task": idle}))
    ray.shutdown()
""")


@pytest.fixture(scope="module")
def local_ray() -> dict:
    """What LISTENERS saw of a local Ray: its listening sockets, and its workers before anything ran."""
    proc = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_local_ray_starts_no_worker_before_one_is_needed(local_ray):
    # the raylet would start one idle worker per CPU for the first driver, which Tune's trial actors never
    # used (LOCAL_RAY's prestart_worker_first_driver); the agents are up by now, so those would be too
    assert local_ray["workers_before_a_task"] == [], local_ray


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only(local_ray):
    found = local_ray["listening"]
    names = {name for _, name, _, _ in found}
    # the GCS, the raylet (node manager, object manager), both agents, the dashboard and a worker all listen
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, found
    assert len(found) >= 8, found
    public = [s for s in found if s[2] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not public, f"listening beyond loopback: {public}"


@pytest.mark.slow
def test_killed_search_leaves_no_ray_process(tmp_path):
    import os
    import signal
    import time

    import ray  # noqa: F401  (puts Ray's psutil on the path)
    import psutil

    # its own session, so that nothing here shares its process group
    driver = subprocess.Popen([sys.executable, "-m", "tuner", "search", "--space", "search_spaces/digits_linear.yaml",
                               "--smoke", "--no-retrain", "--results", str(tmp_path)], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours: list[psutil.Process] = []
    try:
        deadline = time.time() + 150
        while time.time() < deadline and driver.poll() is None:
            ours = psutil.Process(driver.pid).children(recursive=True)
            if any(p.name().startswith("ray::ImplicitFunc") for p in ours if p.is_running()):
                break  # a trial is running: GCS, raylet, dashboard, both agents and workers are all up
            time.sleep(0.3)
        assert driver.poll() is None, "the search ended before a trial was seen running"
        names = {p.name() for p in ours if p.is_running()}
        assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.time() + 15
        while time.time() < deadline:
            # is_running() compares the start time too: a pid reused meanwhile is not ours
            left = [p for p in ours if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            if not left:
                break
            time.sleep(0.3)
        assert not left, f"still running 15 s after the driver was killed: {[(p.pid, p.name()) for p in left]}"
    finally:
        for p in [p for p in ours if p.is_running()] + ([psutil.Process(driver.pid)] if driver.poll() is None else []):
            try:
                p.kill()  # only processes that were under our own driver, checked by pid and start time
            except psutil.Error:
                pass


@pytest.fixture()
def head_cluster():
    """A `ray start --head` cluster of its own (its own temp dir, and RAY_TMPDIR pointing there so a search in
    the same environment finds it as it would find one in /tmp/ray), with Ray's default token authentication
    (its token in the environment): (the environment to run in, its GCS address). Stopped in teardown by
    killing only the processes it started (`ray stop` would stop every Ray on the machine)."""
    import os
    import secrets
    import shutil
    import signal
    import socket
    import tempfile
    import time

    import ray  # noqa: F401  (puts Ray's psutil on the path)
    import psutil

    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # its own token (Ray's RAY_AUTH_TOKEN), not ~/.ray/auth_token: on a fresh machine a Ray started by another
    # test at the same moment could write a different token there than the one this head took
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")} | {
        "RAY_TMPDIR": tmp, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", f"--temp-dir={tmp}/ray",
                             "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.exists(f"{tmp}/ray/ray_current_cluster") and time.time() < deadline:
            assert head.poll() is None, "ray start --head ended"
            time.sleep(0.5)
        assert os.path.exists(f"{tmp}/ray/ray_current_cluster"), "ray start --head did not come up in 120 s"
        yield env, f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # `ray start --block` outlived SIGTERM by the whole 30 s this once waited: a short grace, then KILL
            head.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        for p in psutil.process_iter(["cmdline"]):  # what left our process group: named by our temp dir
            if any(tmp in a for a in p.info["cmdline"] or []):
                try:
                    p.kill()
                except psutil.Error:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_a_local_search_starts_its_own_ray_beside_a_ray_start_head_cluster(tmp_path, head_cluster):
    # ray.init() without an address joins the cluster `ray start --head` noted on this machine, and then
    # refused tuner's _system_config: "When connecting to an existing cluster, _system_config must not be
    # provided" failed every local search
    proc = subprocess.run([sys.executable, "-m", "tuner", "search", "--space", "search_spaces/digits_linear.yaml",
                           "--smoke", "--no-retrain", "--no-dashboard", "--results", str(tmp_path)],
                          env=head_cluster[0], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "search: 2 trials" in proc.stdout and "Ray: joined" not in proc.stdout, proc.stdout


@pytest.mark.slow
def test_a_cluster_that_asks_for_rays_token_is_joined_with_ray_auth_mode_token_and_named_without_it(
        tmp_path, head_cluster):
    """`ray start --head` turns Ray's token authentication on, and a driver given --address sends the token
    only with RAY_AUTH_MODE=token: without it ray.init failed after 20 s as "no Ray cluster answers there"."""
    env, address = head_cluster
    env = env | {"RAY_gcs_server_port_wait_time_s": "2"}  # Ray's own retries of the refused connection: 20 s
    cmd = [sys.executable, "-m", "tuner", "search", "--space", "search_spaces/digits_linear.yaml", "--smoke",
           "--no-retrain", "--no-dashboard", "--results", str(tmp_path), "--address", address]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert last.startswith(f"error: --address {address}: the Ray cluster there asks for Ray's token"), last
    assert "RAY_AUTH_MODE=token" in last and "ray get-auth-token" in last, last
    joined = subprocess.run(cmd, env=env | {"RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "search: 2 trials" in joined.stdout, joined.stdout
    assert f"Ray: joined the cluster at {address}: 1 node(s), 1 CPUs, 0 GPUs" in joined.stdout, joined.stdout


def test_ray_address_that_nothing_answers_is_one_error_line(monkeypatch):
    import socket

    from tuner.errors import UserError
    from tuner.search.cluster import init_ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and closed again: nothing listens there
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(UserError, match=rf"^RAY_ADDRESS 127.0.0.1:{port}: no Ray cluster answers there"):
        init_ray(None, dashboard=False)
