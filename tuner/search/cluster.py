"""Ray's side of a search: starting or joining Ray (address, token file), whether the cluster can hold a
trial's resources, and the shared storage trials checkpoint to when they run on other machines."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from tuner import interrupt
from tuner.errors import UserError
from tuner.spaces import check_name


def has_dashboard() -> bool:
    try:
        import ray.dashboard  # noqa: F401
        import aiohttp  # noqa: F401  (ray[default] brings it; plain `ray` has no dashboard)
        return True
    except ImportError:
        return False


def check_address(address: str, where: str = "--address") -> None:
    """Fail in seconds on an address where nothing listens: ray.init would retry for minutes. `where` names
    where the address came from (--address, or the RAY_ADDRESS variable)."""
    import socket

    if address == "auto":
        return  # Ray finds the local cluster itself, or says at once that there is none
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{where} {address}: expected auto, HOST:PORT (ray start's GCS port, 6379) "
                        f"or ray://HOST:10001")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"{where} {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                        f"with `ray start --head` or drop {where} to run locally") from None


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process on the machine (Linux /proc)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": comm may hold spaces
        except OSError:
            continue  # it ended meanwhile
        table[int(name)] = (int(fields[1]), int(fields[19]))
    return table


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def watch_ray(driver: int, ray_dir: str, interval: float = 1.0) -> None:
    """The watchdog's loop (its own small process): end the local Ray of `driver` when the driver dies unseen.

    Ray makes its GCS, raylet, dashboard and monitors die with the driver (prctl PDEATHSIG), and the raylet's
    workers die with the raylet; but the dashboard agent and runtime-env agent, children of the raylet, first
    report the raylet's death to the GCS, which is dead too, and wait 60 s for it (ray/_private/process_watcher.py,
    report_raylet_error_logs -> publish_error_to_driver). So while the driver lives, this notes every process
    under its Ray children (the driver's children run from `ray_dir`), with its start time so a reused pid is
    never taken for one; once the driver is gone (this process gets a new parent) it kills those still there.
    After a normal exit (ray.shutdown) none is, and nothing else is ever touched.
    """
    me = os.getpid()
    seen: dict[int, int] = {}  # pid -> start time
    is_ray: dict[tuple[int, int], bool] = {}
    while os.getppid() == driver:
        table = _processes()
        children = defaultdict(list)
        for pid, (ppid, _) in table.items():
            children[ppid].append(pid)
        todo = []
        for pid in children[driver]:
            key = (pid, table[pid][1])
            # gcs_server, raylet: the program; dashboard.py, monitor.py: [python, (-u,) file]. Only a yes is
            # kept: a child caught between fork and exec still shows the driver's own command line
            if not is_ray.get(key) and pid != me and any(a.startswith(ray_dir + os.sep) for a in _argv(pid)[:3]):
                is_ray[key] = True
            if is_ray.get(key):
                todo.append(pid)
        while todo:
            pid = todo.pop()
            seen[pid] = table[pid][1]
            todo += children[pid]
        time.sleep(interval)
    table = _processes()
    for pid, start in seen.items():
        if pid in table and table[pid][1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


_watchdog: subprocess.Popen | None = None


def start_ray_watchdog() -> None:
    """Start watch_ray for this process, before it starts a local Ray (Linux: it reads /proc)."""
    global _watchdog
    import ray

    if (_watchdog is not None and _watchdog.poll() is None) or not sys.platform.startswith("linux"):
        return
    code = "import sys; from tuner.search.cluster import watch_ray; watch_ray(int(sys.argv[1]), sys.argv[2])"
    # a session of its own: Ctrl-C or a closed terminal, which end the driver, must not end its watchdog first
    _watchdog = subprocess.Popen([sys.executable, "-c", code, str(os.getpid()),
                                  os.path.dirname(os.path.abspath(ray.__file__))],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)


# Ray's servers bind all interfaces unless the node address is loopback (dashboard/agent.py grpc_ip,
# reporter_agent.py, runtime_env/agent/main.py, the GCS and raylet gRPC servers), and on Linux ray.init turns
# 127.0.0.1 into the machine's outward address (_private/services.py: resolve_ip_for_localhost ->
# get_node_ip_address) unless ray_constants.ENABLE_RAY_CLUSTER is false: Ray's single-machine mode, the
# default on macOS and Windows. A search without --address is one machine, so start_local_ray uses that mode.
# tuner reads no Prometheus metrics: no per-node metrics export server, no metrics sent by every worker.
# address "local": always a new Ray of our own. Without it ray.init joins the cluster a `ray start --head` on
# this machine left in <ray temp dir>/ray_current_cluster, and then refuses our _system_config.
LOCAL_RAY: dict[str, Any] = {"address": "local", "_node_ip_address": "127.0.0.1",
             "_system_config": {"enable_metrics_collection": False, "prestart_worker_first_driver": False}}


def start_local_ray(kwargs: dict):
    """ray.init of a Ray on this machine alone, every listener on 127.0.0.1; ended with this process."""
    import ray
    from ray._private import ray_constants

    start_ray_watchdog()  # before Ray: its processes are noted as they appear
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER  # read when ray was imported: too late for the variable
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        return ray.init(**kwargs, **LOCAL_RAY)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode  # only the start needs it; later Rays here are untouched


def init_ray(address: str | None, dashboard: bool, say: Callable[[str], None] = print, verbose: bool = True) -> None:
    import ray

    # with --address, or else RAY_ADDRESS (Ray's own variable, as `ray` commands read it), ray.init joins that
    # cluster: it is not ours to configure. Without either, a new Ray of our own (LOCAL_RAY), even when a
    # `ray start --head` cluster runs on this machine. The address is checked first, even when this process
    # has a Ray already: a wrong RAY_ADDRESS is the user's error whatever ran before.
    where = "--address" if address else "RAY_ADDRESS"
    if not address and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        check_address(address, where)
    if ray.is_initialized():
        return
    # without --verbose the console is tuner's (tuner.search.console): Ray's warnings stay in its log files
    kwargs: dict = {"ignore_reinit_error": True, "logging_level": logging.WARNING if verbose else logging.ERROR,
                    "log_to_driver": verbose}
    local = not address
    if address:
        kwargs["address"] = address
    if local:
        kwargs["include_dashboard"] = bool(dashboard and has_dashboard())
        if kwargs["include_dashboard"]:
            kwargs["dashboard_host"] = "127.0.0.1"  # never on a public interface unless the user says so
    interrupt.signal_for_tests("ray")
    try:
        ctx = start_local_ray(kwargs) if local else ray.init(**kwargs)
    except ConnectionError as exc:
        raise _not_joined(where, str(address), exc) from None
    except SystemExit as exc:  # ray.init's own SIGTERM handler, until it connects: sys.exit(SIGTERM)
        if exc.code == signal.SIGTERM:
            raise interrupt.stop(signal.SIGTERM) from None
        raise
    finally:
        # Ray's driver replaces tuner's SIGTERM handler with one that aborts with a stack dump: take it back
        interrupt.reinstall()
    # Ray writes its dashboard token readable by everyone on the machine (0644); keep it ours
    token = Path.home() / ".ray" / "auth_token"
    if token.is_file() and token.stat().st_uid == os.getuid():
        token.chmod(0o600)
    if not local:  # which cluster, and what it has: a search that joined the wrong one shows it at once
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        have = ray.cluster_resources()
        say(f"Ray: joined the cluster at {address}: {len(nodes)} node(s), {have.get('CPU', 0):g} CPUs, "
            f"{have.get('GPU', 0):g} GPUs")
    url = getattr(ctx, "dashboard_url", None)
    if url:
        say(f"Ray dashboard: http://{url}  (login token: `ray get-auth-token`, also in ~/.ray/auth_token)")


def end_ray() -> None:
    """The program is ending: disconnect from Ray and end the local Ray this process started (a cluster's stays
    up). Ray's atexit handler would do the same after a half-second sleep."""
    import ray

    from tuner.search.adapters import end_monitor_first

    if ray.is_initialized():
        end_monitor_first()
        ray.shutdown()


def _not_joined(where: str, address: str, exc: ConnectionError) -> UserError:
    """The error for a cluster ray.init could not join: none there, or one that asks for Ray's token."""
    from tuner.search.adapters import refused_for_token

    if not refused_for_token(exc):
        return UserError(f"{where} {address}: no Ray cluster answers there ({exc}); start one with "
                         f"`ray start --head` or drop {where} to run locally")
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return UserError(f"{where} {address}: the Ray cluster there refused this machine's token; give it "
                         f"the cluster's own (`ray get-auth-token` on the head prints it) in RAY_AUTH_TOKEN "
                         f"or ~/.ray/auth_token")
    return UserError(f"{where} {address}: the Ray cluster there asks for Ray's token (`ray start --head` turns "
                     f"token authentication on); run with RAY_AUTH_MODE=token and the cluster's token in "
                     f"~/.ray/auth_token or RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it), or "
                     f"on the head itself use --address auto")


def check_cluster_fits(resources: dict) -> None:
    """A trial runs on one node: asking for more than the largest node has leaves every trial PENDING forever."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    have = f"the cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs in {len(nodes)} node(s)"
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        largest = max((n.get(ray_key, 0) for n in nodes), default=0)
        if resources[key] > largest:
            raise UserError(f"resources.{key}: {resources[key]:g} per trial, but no node has that many "
                            f"({have}, at most {largest:g} on one node); lower resources.{key} or use "
                            f"resources: auto")


def fit_resources(total: dict, concurrent: int) -> dict:
    """`resources: auto`: share the cluster's CPUs and GPUs evenly between the concurrent trials."""
    n = max(1, concurrent)
    cpu = max(1, int(total.get("CPU", 1) // n))
    gpus = total.get("GPU", 0)
    # whole GPUs when there are enough, else a share; rounded down, or 3 shares of 2/3 (0.667) would
    # ask for more than the 2 GPUs there are
    gpu = 0.0 if not gpus else (float(int(gpus // n)) if gpus >= n else math.floor(gpus / n * 1000) / 1000)
    return {"cpu": cpu, "gpu": gpu}


CLOUD_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")


def check_storage(storage: str) -> str:
    """`storage`: a folder every node reaches (NFS, ...) or a pyarrow file-system URI (s3://, gs://, ...).

    Checked before Ray starts; a local folder comes back absolute, since Ray's workers do not share our cwd.
    """
    if "://" in storage:
        scheme = storage.split("://", 1)[0].lower()
        if scheme == "file":
            return "file://" + check_storage(storage[len("file://"):])
        if scheme not in CLOUD_SCHEMES:
            raise UserError(f"storage {storage!r}: unknown URI scheme {scheme!r}; use a shared folder or one of "
                            f"{', '.join(s + '://' for s in ('file',) + CLOUD_SCHEMES)}")
        return storage.rstrip("/")
    path = Path(storage).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"storage {storage}: cannot create the folder ({exc.strerror}); give a writable "
                        f"folder that every node of the cluster mounts") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"storage {storage}: folder is not writable; give one every node can write to")
    return str(path)


def is_tune_experiment(names: list[str]) -> bool:
    """Ray writes tuner.pkl and experiment_state-*.json at the top of every experiment it runs."""
    import fnmatch

    from tuner.search.adapters import experiment_state_pattern

    return any(n == "tuner.pkl" or fnmatch.fnmatch(n, experiment_state_pattern()) for n in names)


def local_folder(storage: str) -> str | None:
    """The folder a storage path or `file://` URI names; None for a cloud URI (s3://, gs://, ...)."""
    if storage.startswith("file://"):
        return storage[len("file://"):]
    return None if "://" in storage else storage


@contextlib.contextmanager
def storage_lock(storage: str | None, name: str):
    """One search per experiment on a storage folder too: two searches with different results folders but
    the same `storage` and name would otherwise write (and the second remove) one Ray experiment. An OS lock
    file beside `<storage>/<name>` (flock: held by the process, gone with it; NFS v4 honours it). A cloud
    URI (s3://, gs://, ...) has no such lock: there, keep names unique (docs/running.md, "Clusters")."""
    local = local_folder(storage) if storage else None
    if local is None:
        yield
        return
    from tuner.rundir import os_lock

    with os_lock(Path(local) / f".{name}.tuner-lock",
                 f"storage {local}/{name}: another search of this experiment is running ({{who}}), from another "
                 f"results folder; wait for it, stop it, or pick another --name"):
        yield


def remove_experiment(storage: str, name: str, check_only: bool = False) -> None:
    """A new search of the same name replaces the old one on the storage too (else Ray mixes their trials).

    Only `<storage>/<name>` itself, and only when it is a Tune experiment: never a link, a file or a folder
    that is something else (the storage may be shared with other people's data). `check_only`: refuse as it
    would, remove nothing (a search checks before Ray starts and removes once nothing else can refuse).
    """
    import pyarrow.fs

    check_name(name, "experiment name")
    local = local_folder(storage)
    if local is not None:
        root = Path(local).resolve()
        target = root / name
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise UserError(f"storage {target}: not an experiment folder (a link or a file); pick another name "
                            f"or remove it by hand")
        if not target.exists():
            return
        if target.resolve().parent != root or not (is_tune_experiment(os.listdir(target)) or
                                                   not os.listdir(target)):
            raise UserError(f"storage {target}: exists but is not a Ray Tune experiment (no tuner.pkl or "
                            f"experiment_state-*.json); pick another name or remove it by hand")
        if not check_only:
            shutil.rmtree(target)
        return
    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    remote = f"{root.rstrip('/')}/{name}"
    info = fs.get_file_info(remote)
    if info.type == pyarrow.fs.FileType.NotFound:
        return
    names = [Path(i.path).name for i in fs.get_file_info(pyarrow.fs.FileSelector(remote))] \
        if info.type == pyarrow.fs.FileType.Directory else None
    if names is None or (names and not is_tune_experiment(names)):
        raise UserError(f"storage {storage}/{name}: exists but is not a Ray Tune experiment; pick another name "
                        f"or remove it by hand")
    if not check_only:
        fs.delete_dir(remote)


# --------------------------------------------------------------------------- the experiment folder
