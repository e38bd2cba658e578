"""What a command and every process it starts use, sampled every half second (for `bench_seed_scale.py`).

Per process: peak resident memory (RSS), and the honest figures beside it: USS (pages only that process
holds) and PSS (its share of shared pages), and RSS split into anonymous memory (RssAnon: its heap, what
a copy of the images would be) and mapped files (RssFile: the cache's pages it touched, which the machine
holds once, in its page cache, and can drop). A trial that maps the image cache counts every cached page
it touched in its RSS (and, while no other process maps them, in its USS); RssAnon does not. The raylet's
touched shared memory is the object store's (Ray's plasma store lives in the raylet). On a machine with an NVIDIA GPU:
the GPU's busy fraction (NVML's utilisation, or `nvidia-smi`) and each process's GPU memory.

psutil comes with Ray (`ray[default]` vendors it in ray/thirdparty_files); importing ray puts it on the path.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

try:
    import psutil
except ImportError:  # ray[default] ships it
    import ray  # noqa: F401
    import psutil

INTERVAL = 0.5


@dataclass
class Peak:
    """One process's peaks over the run, and what it was."""

    titles: set = field(default_factory=set)
    rss: int = 0
    uss: int = 0
    pss: int = 0
    shm: int = 0          # RssShmem: shared memory it touched (the raylet's is the object store)
    anon: int = 0         # RssAnon: its own heap (a copy of the images would be here)
    file: int = 0         # RssFile: mapped files' pages (the image cache), shared, reclaimable
    gpu: int = 0          # bytes on the GPU

    @property
    def kind(self) -> str:
        t = " ".join(self.titles)
        if "raylet" in t:
            return "raylet"
        if "ImplicitFunc" in t or "run_trial" in t:
            return "trial"
        return "other"


def _status(pid: int) -> dict[str, int]:
    """RssAnon, RssFile and RssShmem of /proc/PID/status, in bytes."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


class _Gpu:
    """Utilisation and per-process memory from NVML (nvidia-ml-py) or nvidia-smi; nothing without a GPU."""

    def __init__(self):
        self.nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001 - no NVML: nvidia-smi, or no GPU at all
            self.smi = shutil.which("nvidia-smi")
        self.present = bool(self.nvml or self.smi)

    def sample(self) -> tuple[float | None, dict[int, int]]:
        """(mean utilisation in [0, 1] over the GPUs, {pid: bytes})."""
        if self.nvml:
            n = self.nvml
            util = [n.nvmlDeviceGetUtilizationRates(h).gpu / 100 for h in self.handles]
            mem = {p.pid: p.usedGpuMemory or 0 for h in self.handles
                   for p in n.nvmlDeviceGetComputeRunningProcesses(h)}
            return sum(util) / max(len(util), 1), mem
        if not self.smi:
            return None, {}
        q = [self.smi, "--format=csv,noheader,nounits"]
        util = subprocess.run(q + ["--query-gpu=utilization.gpu"], capture_output=True, text=True).stdout.split()
        apps = subprocess.run(q + ["--query-compute-apps=pid,used_memory"], capture_output=True, text=True).stdout
        mem = {}
        for line in apps.splitlines():
            pid, _, used = line.partition(",")
            if pid.strip().isdigit() and used.strip().isdigit():
                mem[int(pid)] = int(used) * 2**20
        values = [float(u) / 100 for u in util if u.replace(".", "").isdigit()]
        return (sum(values) / len(values) if values else None), mem


class Monitor(threading.Thread):
    """Samples the process tree under `pid` every INTERVAL seconds until `stop()`."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peaks: dict[int, Peak] = {}
        self.gpu_util: list[tuple[float, float]] = []  # (time, busy fraction)
        self._done = threading.Event()
        self.gpu = _Gpu()

    def run(self) -> None:
        while not self._done.is_set():
            self._sample()
            self._done.wait(INTERVAL)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return
        for p in procs:
            try:
                title = " ".join(p.cmdline()[:2]) or p.name()
                m = p.memory_full_info()
            except psutil.Error:
                continue
            peak = self.peaks.setdefault(p.pid, Peak())
            peak.titles.add(title[:80])
            peak.rss, peak.uss = max(peak.rss, m.rss), max(peak.uss, m.uss)
            st = _status(p.pid)
            peak.pss, peak.shm = max(peak.pss, getattr(m, "pss", 0)), max(peak.shm, st.get("RssShmem", 0))
            peak.anon, peak.file = max(peak.anon, st.get("RssAnon", 0)), max(peak.file, st.get("RssFile", 0))
        if self.gpu.present:
            util, mem = self.gpu.sample()
            if util is not None:
                self.gpu_util.append((time.time(), util))
            for pid, used in mem.items():
                if pid in self.peaks:
                    self.peaks[pid].gpu = max(self.peaks[pid].gpu, used)

    # ------------------------------------------------------------------ summaries
    def of(self, kind: str) -> list[Peak]:
        return [p for pid, p in self.peaks.items() if pid != self.pid and p.kind == kind]

    @property
    def root(self) -> Peak:
        return self.peaks.get(self.pid, Peak())

    def busy(self, start: float, end: float) -> float | None:
        """The GPU's mean busy fraction between two times (None without a GPU)."""
        inside = [u for t, u in self.gpu_util if start <= t <= end]
        return sum(inside) / len(inside) if inside else None
