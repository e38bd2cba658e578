"""A search at the seeds' scale, end to end: a Stanford-Cars-sized image folder through the shipped
`cars_transfer.yaml` and `cars_knn.yaml` (changed only by `--set`), every stage timed and its memory measured.

The data is synthetic (`cars_like.py`): no real data set can be fetched on the machines this runs on. It has
Cars' shape: 16,185 JPEGs of Cars' pixel sizes (mean ~700x480), 196 classes, Cars' train/test halves. It is
made once under the cache folder and reused; the decode measured is always a fresh one (a new cache).

    python benchmarks/bench_seed_scale.py --quick --json seed.json   # 2-core CPU: about 10 minutes
    python benchmarks/bench_seed_scale.py                          # as shipped: ResNet50 at 224 px (a GPU)
    python benchmarks/bench_seed_scale.py --quick --images 300     # a few hundred images (the test)

Stages: `decode` (the whole set at 224 px, alone, as `tuner.data.prepare` does it before Ray starts); the
transfer search (`--quick`: 4 trials of mobilenet_v3_small at 64 px, 2 epochs), its retrain, test and
export (`tuner best --export`); the knn search over that export's embeddings of every image (the shipped
120-configuration grid), its retrain (a fit), test and export; scikit-learn refits on the same embeddings.
`--concurrency 2,4` adds a memory probe: N trials at once (an mlp at 224 px, so each reads every image);
`--memory-only` runs just that probe, `--probe-size 512` on a 12.7 GB decoded set.

Every figure is printed in one table and written by `--json PATH`. Memory: peak RSS of the driver and of each
trial worker, with USS and PSS beside it (RSS counts the shared, memory-mapped cache pages a process
touched; USS is what it alone holds), the object store (the raylet's shared memory) and the cache on disk.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from cars_like import CARS_CLASSES, CARS_IMAGES, make_cars_like  # noqa: E402
from proctree import Monitor  # noqa: E402

SPACES = ROOT / "search_spaces"
# --quick: what fits the 2-core reference machine in about 10 minutes (besides making the data once)
QUICK_TRANSFER = ["fixed.arch=mobilenet_v3_small", "dataset.image_size=64", "search.num_samples=4",
                  "scheduler.max_epochs=2", "scheduler.grace_period=1"]
# fewer images than Cars (the test's few hundred): 2 transfer trials of 1 epoch, 13 knn configurations
TINY_TRANSFER = ["search.num_samples=2", "scheduler.max_epochs=1"]
TINY_KNN = ["space.k={grid: [1, 13]}", "space.weights={grid: [uniform]}"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --------------------------------------------------------------------------- running the CLI, watched
class Run:
    """A tuner command run as a user runs it, its output echoed and time-stamped line by line, its process
    tree sampled (`proctree.Monitor`)."""

    def __init__(self, args: list[str], env: dict, label: str):
        self.label, self.lines = label, []
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "tuner", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        self.monitor = Monitor(proc.pid)
        self.monitor.start()
        buf = b""
        while True:
            chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            if not chunk:
                break
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            buf += chunk
            *done, buf = re.split(rb"[\r\n]", buf)
            now = time.time()
            self.lines += [(now, d.decode(errors="replace")) for d in done if d.strip()]
        self.rc = proc.wait()
        self.monitor.stop()
        self.wall = time.time() - t0
        self.start = t0
        if self.rc not in (0,):
            raise SystemExit(f"[bench] {label}: `tuner {' '.join(args)}` exited {self.rc}")

    def at(self, pattern: str, last: bool = False) -> tuple[float, re.Match] | None:
        """(time, match) of the first (or last) output line matching `pattern`."""
        hits = [(t, m) for t, line in self.lines if (m := re.search(pattern, line))]
        return (hits[-1] if last else hits[0]) if hits else None

    def between(self, a: str, b: str) -> float | None:
        """Seconds from the first line matching `a` to the first after it matching `b`."""
        ta = self.at(a)
        tb = next((t for t, line in self.lines if ta and t >= ta[0] and re.search(b, line)), None)
        return round(tb - ta[0], 2) if ta and tb else None


def search(space: Path, sets: list[str], name: str, results: Path, env: dict) -> tuple[Run, dict]:
    args = ["search", "--space", str(space), "--results", str(results), "--no-dashboard", "--overwrite", "--name", name]
    for s in sets:
        args += ["--set", s]
    run = Run(args, env, name)
    info = json.loads((results / name / "run.json").read_text())
    return run, info


def export(name: str, results: Path, dest: Path, env: dict) -> Run:
    return Run(["best", "--experiment", name, "--results", str(results), "--export", str(dest)], env, f"{name} export")


# --------------------------------------------------------------------------- stages
def decode_stage(folder: Path, size: int, cache: Path, env: dict) -> dict:
    """The whole set decoded at `size` px into a fresh cache, alone (what a search does before Ray starts).
    torch is imported first, as a search's driver has it (tuner.search.driver) before it prepares the data:
    the decode resizes with it, and its import (about 1.4 s) is not the decode's."""
    code = ("import json, sys, torch; from tuner.data import prepare; from tuner.spaces import DatasetConfig, "
            "SplitConfig;"
            f"d = prepare(DatasetConfig(name='imagefolder', root={str(folder)!r}, image_size={size}, "
            "normalize='imagenet',"
            " split=SplitConfig(val=0.2, test='official', seed=0)), cache_dir=sys.argv[1]);"
            "s = d.stats; print('STATS ' + json.dumps(dict(prepare_s=s.seconds, decode_s=s.decode_s, decoded=s.decoded,"
            " nbytes=s.nbytes)))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(cache)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=None, text=True)
    mon = Monitor(proc.pid)
    mon.start()
    out = proc.communicate()[0]
    mon.stop()
    if proc.returncode:
        raise SystemExit(f"[bench] decode: exited {proc.returncode}")
    stats = json.loads(out.split("STATS ", 1)[1])
    stats["peak_rss"], stats["peak_uss"], stats["peak_anon"] = mon.root.rss, mon.root.uss, mon.root.anon
    return stats


def trial_memory(run: Run) -> dict:
    trials = run.monitor.of("trial")
    return {"trial_workers": len(trials), "peak_rss_trial_bytes": max((p.rss for p in trials), default=None),
            "peak_uss_trial_bytes": max((p.uss for p in trials), default=None),
            "peak_pss_trial_bytes": max((p.pss for p in trials), default=None),
            "peak_anon_trial_bytes": max((p.anon for p in trials), default=None),
            "peak_file_trial_bytes": max((p.file for p in trials), default=None),
            "peak_gpu_trial_bytes": [p.gpu for p in trials] if run.monitor.gpu.present else None,
            "object_store_bytes": max((p.shm for p in run.monitor.of("raylet")), default=None)}


def search_figures(run: Run, info: dict, results: Path, name: str) -> dict:
    """Seconds of each stage of one `tuner search` (search, retrain, test) and its throughput and memory."""
    import pandas as pd

    epochs = len(pd.read_csv(results / name / "epochs.csv")) if (results / name / "epochs.csv").is_file() else 0
    search_s = info["search_s"]
    t_start, t_end = run.at(r"^results: .*trials\.csv"), run.at(r"^search: \d+ trials in")
    warm = run.at(r"^warm-up: .*\(([\d.]+) s\)")
    ray_start_s = info["prepare_and_start_s"] - info.get("prepare_s", 0) - (float(warm[1][1]) if warm else 0)
    out = {"prepare_s": info.get("prepare_s"), "ray_start_s": round(ray_start_s, 2),
           "warm_up_s": float(warm[1][1]) if warm else None, "search_s": search_s, "trials": info["trials"],
           "epochs": epochs, "trials_per_hour": round(info["trials"] / search_s * 3600, 1),
           "epochs_per_hour": round(epochs / search_s * 3600, 1),
           "search_to_retrain_s": run.between(r"^search: \d+ trials in", r"^retraining the best config|^testing on"),
           "retrain_s": run.between(r"^retraining the best config", r"^testing on"),
           "retrain_epochs": len([1 for _, line in run.lines if re.match(r"\s+retrain epoch \d+", line)]),
           "test_s": run.between(r"^testing on", r"^retrained best config"),
           "peak_rss_driver_bytes": run.monitor.root.rss, "peak_uss_driver_bytes": run.monitor.root.uss,
           "peak_anon_driver_bytes": run.monitor.root.anon, "peak_file_driver_bytes": run.monitor.root.file,
           "gpu_busy_fraction": run.monitor.busy(t_start[0], t_end[0]) if t_start and t_end else None}
    test = run.at(r"^testing on (\d+) images")
    if test and out["test_s"]:
        out["test_img_per_s"] = round(int(test[1][1]) / max(out["test_s"], 1e-9), 1)
    emb = run.at(r"embedded (\d+) images in ([\d.]+) s")
    if emb:
        seconds = float(emb[1][2])
        out["extraction_s"], out["extraction_img_per_s"] = seconds, round(int(emb[1][1]) / max(seconds, 1e-9), 1)
    # the search's tables (built before its trials) apart from the test pass's own (built after the retrain):
    # the comparison with scikit-learn's refits is of the search alone
    done = run.at(r"^search: \d+ trials in")
    table = r"^neighbour table \S+: .* in ([\d.]+) s"
    tables = [(t, float(m[1])) for t, line in run.lines if (m := re.search(table, line))]
    search_side = [sec for t, sec in tables if done is None or t <= done[0]]
    out["tables_s"] = round(sum(search_side), 2) if search_side else None
    out["test_tables_s"] = round(sum(sec for _, sec in tables) - sum(search_side), 2) if tables else None
    return out | trial_memory(run)


def sklearn_refits(run: Run, results: Path, name: str, folder: Path) -> dict:
    """The plain way on the knn search's own embeddings: a KNeighborsClassifier refit (leave-one-out over
    train+val, as `validation: loo`) per configuration. A refit costs the same for every k and vote weighting,
    so one is timed per (metric, normalisation) and counted for the 20 configurations each serves."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import normalize

    from tuner.data import get_reader
    from tuner.spaces import DatasetConfig

    emb = run.at(r"embedded \d+ images in [\d.]+ s .*-> (\S+)")
    feats = Path(emb[1][1])
    x = np.concatenate([np.load(feats / "train.npy"), np.load(feats / "val.npy")])
    src = get_reader("imagefolder")(DatasetConfig(name="imagefolder", root=str(folder)))
    labels = np.concatenate([src.train.labels, src.test.labels])
    split = np.load(results / name / "split.npz")
    y = np.concatenate([labels[split["train"]], labels[split["val"]]])
    per_pair, agree, worst = {}, None, 0.0
    import pandas as pd

    trials = pd.read_csv(results / name / "trials.csv")
    for metric in ("manhattan", "euclidean", "cosine"):
        for norm in ("none", "l2"):
            t0 = time.perf_counter()
            xs = normalize(x) if norm == "l2" else x
            knn = KNeighborsClassifier(n_neighbors=13, metric=metric, algorithm="brute").fit(xs, y)
            pred = knn.predict(None)
            per_pair[f"{metric}-{norm}"] = round(time.perf_counter() - t0, 2)
            row = trials[(trials["k"] == 13) & (trials["metric"] == metric) & (trials["normalize"] == norm)
                         & (trials["weights"] == "uniform")]
            if len(row):  # the same configuration's accuracy through tuner
                # equal up to the images whose 13th and 14th neighbours are equally far (an untrained backbone's
                # embeddings tie often): which of the two counts is an arbitrary order, in both libraries
                dist = knn.kneighbors(None, n_neighbors=14)[0]
                tied = float(np.isclose(dist[:, 12], dist[:, 13], rtol=1e-5, atol=1e-6).mean())
                diff = abs(float(row["val_accuracy"].iloc[0]) - float((pred == y).mean()))
                worst = max(worst, diff - tied)
                agree = (diff <= tied + 1e-9) and (agree is not False)
    total = sum(per_pair[f"{m}-{n}"] for m, n in zip(trials["metric"], trials["normalize"]))  # one refit a trial
    return {"sklearn_refit_s": per_pair, "sklearn_refits_s": round(total, 1), "sklearn_agrees": agree,
            "sklearn_diff_beyond_ties": round(max(worst, 0.0), 4), "knn_configs": len(trials)}


def concurrency_stage(folder: Path, n: int, results: Path, env: dict, nbytes: int, size: int = 224) -> dict:
    """N trials at once, each reading every image (an mlp, one epoch): what each holds."""
    space = results / f"concurrency{n}.yaml"
    space.write_text(f"name: c{n}\ndataset: {{name: imagefolder, root: {folder}, image_size: {size}, "
                     "normalize: imagenet,"
                     f" split: {{val: 0.2, test: official, seed: 0}}}}\nfamily: mlp\n"
                     f"search: {{algorithm: random, num_samples: {n}, max_concurrent: {n}}}\n"
                     f"scheduler: {{name: fifo, max_epochs: 1}}\nresources: {{cpu: {round(2 / n, 3)}, gpu: 0}}\n"
                     f"fixed: {{hidden: [16], batch_size: 256}}\nspace: {{lr: {{loguniform: [0.0001, 0.001]}}}}\n")
    run = Run(["search", "--space", str(space), "--results", str(results), "--no-dashboard", "--no-retrain",
               "--overwrite"], env, f"{n} concurrent")
    trials = run.monitor.of("trial")
    return {"concurrent": n, "set_bytes": nbytes, "driver_rss": run.monitor.root.rss,
            "driver_anon": run.monitor.root.anon, "trial_rss": sorted(p.rss for p in trials),
            "trial_uss": sorted(p.uss for p in trials), "trial_pss": sorted(p.pss for p in trials),
            "trial_anon": sorted(p.anon for p in trials), "trial_file": sorted(p.file for p in trials),
            "object_store_bytes": max((p.shm for p in run.monitor.of("raylet")), default=None)}


# --------------------------------------------------------------------------- the whole run
def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip() if shutil.which("nvidia-smi") else None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": memory,
            "gpu": gpu or None, "load_average_at_start": os.getloadavg()[0]}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def transfer_sets(args, folder: Path) -> list[str]:
    from tuner.backbones import imagenet_file

    arch = "mobilenet_v3_small" if args.quick else "resnet50"
    sets = ["dataset.name=imagefolder", f"dataset.root={folder}"]
    if not imagenet_file(arch)[0].is_file():
        sets.append("fixed.weights=none")  # no ImageNet file here (and nothing to fetch it from)
    sets += QUICK_TRANSFER if args.quick else []
    if args.quick and args.images < CARS_IMAGES:
        sets += TINY_TRANSFER
    return sets + args.transfer_set


def classes(images: int) -> int:
    """Cars' 196 classes, or fewer for a few hundred images (the test): a class needs images in train and val,
    and one left alone in train stays there (tuner.data's split), so 300 images over 196 classes had no val."""
    return min(CARS_CLASSES, max(2, images // 20))


def data_folder(base: Path, images: int) -> Path:
    n = classes(images)
    return base / (f"cars_like-{images}" if n == CARS_CLASSES else f"cars_like-{images}-{n}")


def run_all(args) -> dict:
    from tuner.settings import cache_dir

    base = cache_dir() / "bench"
    folder = data_folder(base, args.images)
    made = make_cars_like(folder, images=args.images, classes=classes(args.images), say=log)
    work = base / f"run-{os.getpid()}-{int(time.time())}"
    cache, results = work / "cache", work / "results"
    results.mkdir(parents=True)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TUNER_CACHE": str(cache), "PYTHONPATH": path}
    out = {"mode": "quick" if args.quick else "full", "images": args.images, "cores": os.cpu_count(),
           "machine": machine(), "data": made, "stages": {}}
    try:
        log(f"decode: {args.images:,} images at 224 px into a fresh cache")
        d = decode_stage(folder, 224, cache / "decode", env)
        out.update(decode_s=round(d["decode_s"], 2), prepare_s=round(d["prepare_s"], 2), decoded_bytes=d["nbytes"],
                   decode_img_per_s=round(d["decoded"] / d["decode_s"], 1),
                   decode_img_per_s_per_core=round(d["decoded"] / d["decode_s"] / os.cpu_count(), 1),
                   peak_rss_prepare_bytes=d["peak_rss"], peak_anon_prepare_bytes=d["peak_anon"],
                   cache_bytes=du(cache / "decode"))
        out["stages"] |= {"decode": out["decode_s"], "prepare": out["prepare_s"]}
        shutil.rmtree(cache / "decode")  # the searches below decode on their own (a fresh cache each run)
        log("cars_transfer: search, retrain, test")
        tr, info = search(SPACES / "cars_transfer.yaml", transfer_sets(args, folder), "cars_transfer", results, env)
        out["transfer"] = search_figures(tr, info, results, "cars_transfer")
        ex = export("cars_transfer", results, work / "transfer_export", env)
        out["transfer"]["export_s"] = round(ex.wall, 2)
        log("cars_knn: search over the export's embeddings of every image, retrain, test")
        size = next((s.split("=")[1] for s in transfer_sets(args, folder) if s.startswith("dataset.image_size=")),
                    "224")
        kn, kinfo = search(SPACES / "cars_knn.yaml", ["dataset.name=imagefolder", f"dataset.root={folder}",
                                                       f"dataset.image_size={size}",
                                                       f"fixed.backbone={work / 'transfer_export'}"]
                           + (TINY_KNN if args.quick and args.images < CARS_IMAGES else []) + args.knn_set,
                           "cars_knn", results, env)
        out["knn"] = search_figures(kn, kinfo, results, "cars_knn")
        out["knn"]["export_s"] = round(export("cars_knn", results, work / "knn_export", env).wall, 2)
        log("scikit-learn: KNeighborsClassifier refits on the same embeddings")
        out["knn"] |= sklearn_refits(kn, results, "cars_knn", folder)
        tuner_side = (out["knn"]["tables_s"] or 0) + out["knn"]["search_s"]
        out["knn_vs_sklearn"] = round(out["knn"]["sklearn_refits_s"] / tuner_side, 2)
        for n in args.concurrency:
            out.setdefault("concurrency", []).append(concurrency_stage(folder, n, results, env, out["decoded_bytes"]))
        out["cache_bytes_after"] = du(cache)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    tr_, kn_ = out["transfer"], out["knn"]
    out.update(search_s=tr_["search_s"], trials=tr_["trials"],
               peak_rss_driver_bytes=max(tr_["peak_rss_driver_bytes"], kn_["peak_rss_driver_bytes"],
                                         out["peak_rss_prepare_bytes"]),
               peak_rss_trial_bytes=max(filter(None, [tr_["peak_rss_trial_bytes"], kn_["peak_rss_trial_bytes"]]),
                                        default=None),
               peak_uss_trial_bytes=max(filter(None, [tr_["peak_uss_trial_bytes"], kn_["peak_uss_trial_bytes"]]),
                                        default=None),
               gpu_busy_fraction=tr_["gpu_busy_fraction"])
    for k in ("prepare_s", "warm_up_s", "search_s", "search_to_retrain_s", "retrain_s", "test_s", "export_s",
              "extraction_s", "tables_s"):
        for side, fig in (("transfer", tr_), ("knn", kn_)):
            if fig.get(k) is not None:
                out["stages"][f"{side}_{k[:-2]}"] = fig[k]
    out["machine"]["load_average_at_end"] = os.getloadavg()[0]
    return out


def table(out: dict) -> str:
    gb = lambda b: "-" if b is None else f"{b / 1e9:.2f} GB"  # noqa: E731
    tr, kn = out["transfer"], out["knn"]
    rows = [("decode (224 px, fresh cache)", f"{out['decode_s']} s", f"{out['decode_img_per_s']} img/s, "
             f"{out['decode_img_per_s_per_core']} per core"),
            ("data preparation (all, before Ray)", f"{out['prepare_s']} s",
             f"{out['prepare_s'] / max(out['decode_s'], 1e-9):.2f}x the decode"),
            ("decoded set / cache on disk", gb(out["decoded_bytes"]), gb(out["cache_bytes"])),
            ("decode: peak RSS / anon", gb(out["peak_rss_prepare_bytes"]), gb(out["peak_anon_prepare_bytes"]))]
    for side, f in (("transfer", tr), ("knn", kn)):
        rows += [(f"{side}: prepare / Ray start / warm-up",
                  f"{f['prepare_s']} / {f['ray_start_s']} / {f['warm_up_s']} s", ""),
                 (f"{side}: search", f"{f['search_s']} s", f"{f['trials']} trials ({f['trials_per_hour']}/h), "
                  f"{f['epochs']} epochs ({f['epochs_per_hour']}/h)"),
                 (f"{side}: search -> retrain / retrain / test", f"{f['search_to_retrain_s']} / {f['retrain_s']} / "
                  f"{f['test_s']} s", f"{f['retrain_epochs']} epochs; test {f.get('test_img_per_s', '-')} img/s"),
                 (f"{side}: export", f"{f['export_s']} s", ""),
                 (f"{side}: peak RSS driver / largest trial", f"{gb(f['peak_rss_driver_bytes'])} / "
                  f"{gb(f['peak_rss_trial_bytes'])}", f"anon (own heap) {gb(f['peak_anon_driver_bytes'])} / "
                  f"{gb(f['peak_anon_trial_bytes'])}; trial USS {gb(f['peak_uss_trial_bytes'])}, PSS "
                  f"{gb(f['peak_pss_trial_bytes'])}; object store {gb(f['object_store_bytes'])}"),
                 (f"{side}: GPU busy / trial GPU memory", str(f["gpu_busy_fraction"]), str(f["peak_gpu_trial_bytes"]))]
    rows += [("knn: extraction", f"{kn.get('extraction_s')} s", f"{kn.get('extraction_img_per_s')} img/s"),
             ("knn: neighbour tables, search / test pass", f"{kn['tables_s']} / {kn.get('test_tables_s')} s", ""),
             ("knn vs scikit-learn refits", f"{out['knn_vs_sklearn']}x", f"sklearn {kn['sklearn_refits_s']} s for "
              f"{kn['knn_configs']} configs; same accuracy: {kn['sklearn_agrees']}")]
    return _rows(rows + _concurrency_rows(out))


def _concurrency_rows(out: dict) -> list[tuple[str, str, str]]:
    gb = lambda b: "-" if b is None else f"{b / 1e9:.2f}"  # noqa: E731
    return [(f"{c['concurrent']} concurrent trials, set {gb(c['set_bytes'])} GB",
             f"driver RSS {gb(c['driver_rss'])} GB", "trials' RSS " + ", ".join(gb(v) for v in c["trial_rss"])
             + " GB; anon " + ", ".join(gb(v) for v in c["trial_anon"]) + "; USS "
             + ", ".join(gb(v) for v in c["trial_uss"]) + "; PSS " + ", ".join(gb(v) for v in c["trial_pss"])
             + f"; object store {gb(c['object_store_bytes'])}") for c in out.get("concurrency", [])]


def concurrency_table(out: dict) -> str:
    return _rows(_concurrency_rows(out))


def _rows(rows: list[tuple[str, str, str]]) -> str:
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b:>24}  {c}" for a, b, c in rows)


def memory_only(args) -> dict:
    """The --concurrency probes alone, on the made folder, in a fresh cache (decoded once, by the first)."""
    from tuner.settings import cache_dir

    base = cache_dir() / "bench"
    folder = data_folder(base, args.images)
    make_cars_like(folder, images=args.images, classes=classes(args.images), say=log)
    work = base / f"run-{os.getpid()}-{int(time.time())}"
    (work / "results").mkdir(parents=True)
    env = {**os.environ, "TUNER_CACHE": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    size = args.probe_size
    nbytes = args.images * size * size * 3
    try:
        return {"images": args.images, "machine": machine(), "probe_size": size, "concurrency":
                [concurrency_stage(folder, n, work / "results", env, nbytes, size) for n in args.concurrency]}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small backbone at 64 px, 4 trials: ~10 min on 2 cores")
    p.add_argument("--images", type=int, default=CARS_IMAGES, help="images in the folder (the test: a few hundred)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--keep", action="store_true", help="keep the run's cache and results (under the cache folder)")
    p.add_argument("--concurrency", type=lambda s: [int(v) for v in s.split(",") if v], default=[],
                   help="also measure N concurrent trials' memory, e.g. 2,4")
    p.add_argument("--transfer-set", action="append", default=[], help="one more --set for cars_transfer.yaml")
    p.add_argument("--knn-set", action="append", default=[], help="one more --set for cars_knn.yaml")
    p.add_argument("--memory-only", action="store_true", help="only the --concurrency probes (no searches)")
    p.add_argument("--probe-size", type=int, default=224, help="--memory-only: image size (512: a 12.7 GB set)")
    args = p.parse_args(argv)
    out = memory_only(args) if args.memory_only else run_all(args)
    print(table(out) if not args.memory_only else concurrency_table(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
