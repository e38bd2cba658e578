"""Neighbour tables: the K nearest training vectors of each query, computed once per (vectors, metric) and
cached, so that a search over k and vote weighting is a table look-up (see `tuner.families.knn`).

Numerics only (torch, numpy, scikit-learn for the manhattan fallback): no family knowledge.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tuner.atomic import writing

K_TABLE = 64          # neighbours kept per query: every searched k up to this is a look-up


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """As sklearn.preprocessing.normalize: each row divided by its norm; zero rows stay zero."""
    return F.normalize(x, dim=1, eps=1e-30)


def table_kind(metric: str, normalize: str) -> str:
    """The neighbour search a (metric, normalisation) needs. Cosine ranks the same with or without L2
    normalisation, and Euclidean on L2-normalised vectors ranks as cosine does (|a-b|^2 = 2 - 2 cos),
    so the six settings need four searches."""
    if metric == "cosine" or (metric == "euclidean" and normalize == "l2"):
        return "cosine"
    return f"{metric}-{normalize}"


@dataclass
class Table:
    """The K nearest training images of each query, nearest first, with exact distances per metric."""

    idx: np.ndarray                                   # (Nq, K) int64 rows of the training set
    dist: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (Nq, K) float64

    @property
    def k(self) -> int:
        return self.idx.shape[1]


def _block(q: torch.Tensor, t: torch.Tensor, t_sq: torch.Tensor | None, kind: str) -> torch.Tensor:
    """A monotone stand-in for the distance of a block of queries to every training vector (cheapest to rank)."""
    if kind == "cosine":
        return -(q @ t.T)                                      # both sides L2-normalised already
    if kind.startswith("euclidean"):                           # squared, by one GEMM
        assert t_sq is not None, "euclidean blocks take the training vectors' squared norms"
        return (q.pow(2).sum(1, keepdim=True) + t_sq[None, :] - 2.0 * (q @ t.T)).clamp_min_(0)
    return torch.cdist(q, t, p=1.0)


def _distances(v: torch.Tensor, kind: str, stand_in: bool) -> dict[str, np.ndarray]:
    """Distances of the k found, per metric the table serves (the cosine table also serves Euclidean on
    L2-normalised vectors, where |a - b| = sqrt(2 cos_distance))."""
    v = v.double()
    if kind == "cosine":
        cos = (1.0 + v).clamp_(0.0, 2.0) if stand_in else v   # 1 - cos, clipped as sklearn clips rounding
        return {"cosine": cos.numpy(), "euclidean": (2.0 * cos).sqrt().numpy()}
    if kind.startswith("euclidean"):
        return {"euclidean": (v.clamp_min(0).sqrt() if stand_in else v).numpy()}
    return {"manhattan": v.numpy()}


@torch.no_grad()
def neighbours(train: np.ndarray | torch.Tensor, query: np.ndarray | torch.Tensor, kind: str, k: int,
               device: torch.device | str = "cpu", backend: str | None = None, progress: bool = False) -> Table:
    """The k nearest training vectors of each query for one table kind, nearest first.

    On the CPU this is scikit-learn's own brute-force search (its chunked, multi-threaded ArgKmin, the
    fastest CPU kernel at hand, Manhattan included), asked once for k neighbours instead of once per config.
    On a GPU it is torch: one GEMM per block of queries for Euclidean and cosine, cdist for Manhattan.
    `backend` (sklearn | torch) overrides that choice (the tests run the torch path on the CPU too).
    `progress`: a bar over the queries on stderr, and a line with the time at the end.
    """
    from tuner.progress import bar, note

    t0 = time.perf_counter()
    device = torch.device(device)
    t = torch.from_numpy(np.array(train, dtype=np.float32))   # a copy: the cache is a read-only memory map
    q_all = torch.from_numpy(np.array(query, dtype=np.float32))
    k = min(k, len(t))
    if kind == "cosine" or kind.endswith("-l2"):
        t, q_all = l2_normalize(t), l2_normalize(q_all)
    if len(q_all) == 0:
        return Table(np.zeros((0, k), dtype=np.int64), _distances(torch.zeros(0, k), kind, False))
    shown = bar(len(q_all), f"neighbour table {kind}", progress, unit="query")
    with shown:
        if (backend or ("torch" if device.type == "cuda" else "sklearn")) == "sklearn":
            table = _sklearn(t, q_all, kind, k, shown)
        else:
            table = _torch(t, q_all, kind, k, device, shown)
    note(f"neighbour table {kind}: {len(q_all)} queries x {len(t)} vectors in {time.perf_counter() - t0:.1f} s",
         progress)
    return table


def _sklearn(t: torch.Tensor, q_all: torch.Tensor, kind: str, k: int, shown) -> Table:
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    metric = "cosine" if kind == "cosine" else kind.split("-")[0]
    # the queries in blocks, for the progress bar; sklearn chunks its own work much finer than this
    step = max(1024, len(q_all) // 20)
    ds, idx = [], []
    with threadpool_limits(max(1, torch.get_num_threads())):  # the CPUs this trial was given
        nn_ = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(t.numpy())
        for start in range(0, len(q_all), step):
            d, i = nn_.kneighbors(q_all[start:start + step].numpy())
            ds.append(d)
            idx.append(i)
            shown.update(len(i))
    return Table(np.concatenate(idx).astype(np.int64), _distances(torch.from_numpy(np.concatenate(ds)), kind,
                                                                  stand_in=False))


def _torch(t: torch.Tensor, q_all: torch.Tensor, kind: str, k: int, device: torch.device, shown) -> Table:
    t_dev = t.to(device)
    t_sq = t_dev.pow(2).sum(1) if kind.startswith("euclidean") else None
    rows = max(1, min(len(q_all), (1 << 26) // max(len(t), 1)))  # a block of distances stays near 256 MB
    idx, vals = [], []
    for start in range(0, len(q_all), rows):
        v, i = _block(q_all[start:start + rows].to(device), t_dev, t_sq, kind).topk(k, dim=1, largest=False)
        idx.append(i.cpu())
        vals.append(v.cpu())
        shown.update(len(i))
    return Table(torch.cat(idx).numpy().astype(np.int64), _distances(torch.cat(vals), kind, stand_in=True))


def _fits(table: Table, train, query, k: int) -> bool:
    """A table can serve these vectors: one row per query, enough columns, rows of this training set."""
    return (table.idx.shape[0] == len(query) and table.k >= min(k, len(train))
            and (table.idx.size == 0 or int(table.idx.max()) < len(train)))


class TableCache:
    """Neighbour tables by key: the last `size` in memory (Ray reuses a trial's actor, so the next trial of the
    same search finds its table here), every one on disk under cache_dir/knn/ for the other processes."""

    def __init__(self, size: int = 16):
        self.size = size
        self.tables: OrderedDict[str, Table] = OrderedDict()

    def get(self, key: str, train, query, kind: str, k: int, device="cpu", cache_dir: str | None = None,
            progress: bool = False) -> Table:
        """A neighbour table with at least k columns, from memory, from disk, or computed once (file-locked).
        `key` names the vectors (a hash of the data and the embedding that made the vectors); a table that
        does not fit them anyway (a hand-edited cache) is computed again, never indexed out of range."""
        full = f"{key}|{kind}|{len(train)}x{len(query)}"
        hit = self.tables.get(full)
        if hit is not None and _fits(hit, train, query, k):
            self.tables.move_to_end(full)
            return hit
        want = max(k, K_TABLE)
        if cache_dir is None:
            table = neighbours(train, query, kind, want, device, progress=progress)
        else:
            from filelock import FileLock

            folder = Path(cache_dir) / "knn"
            folder.mkdir(parents=True, exist_ok=True)
            f = folder / f"{hashlib.sha1(full.encode()).hexdigest()[:16]}.npz"
            with FileLock(str(f) + ".lock"):  # concurrent trials wait for the first instead of searching too
                stored = _read_table(f)
                if stored is not None and _fits(stored, train, query, k):
                    table = stored
                else:
                    table = neighbours(train, query, kind, want, device, progress=progress)
                    with writing(f) as tmp:
                        arrays: dict[str, Any] = {"idx": table.idx, **{f"dist_{m}": v for m, v in table.dist.items()}}
                        np.savez(tmp, **arrays)
        self.tables[full] = table
        while len(self.tables) > self.size:
            self.tables.popitem(last=False)
        return table


def _read_table(f: Path) -> Table | None:
    if not f.is_file():
        return None
    z = np.load(f)
    return Table(z["idx"], {m[5:]: z[m] for m in z.files if m.startswith("dist_")})


# this process's tables (one per process: a trial runs alone in its worker)
TABLES = TableCache()


def without_self(table: Table) -> Table:
    """A table of a set against itself, minus each row's own entry (leave-one-out). Where duplicates tie
    with the row itself and push it out of the table, the farthest neighbour goes instead."""
    n, k = table.idx.shape
    keep = table.idx != np.arange(n)[:, None]
    keep[keep.all(1), -1] = False
    return Table(table.idx[keep].reshape(n, k - 1), {m: d[keep].reshape(n, k - 1) for m, d in table.dist.items()})


def vote(table: Table, y_train: np.ndarray, k: int, metric: str, weights: str, num_classes: int) -> np.ndarray:
    """Class probabilities from the first k neighbours, as KNeighborsClassifier.predict_proba computes them."""
    idx = torch.from_numpy(table.idx[:, :k])
    labels = torch.from_numpy(np.asarray(y_train, dtype=np.int64))[idx]
    if weights == "uniform":
        w = torch.ones(labels.shape, dtype=torch.float64)
    else:
        d = torch.from_numpy(np.ascontiguousarray(table.dist[metric][:, :k]))
        with np.errstate(divide="ignore"):
            w = 1.0 / d
        zero = d == 0
        exact = zero.any(1)
        w[exact] = zero[exact].double()  # an exact match wins outright, as in sklearn's _get_weights
    votes = torch.zeros(len(idx), num_classes, dtype=torch.float64).scatter_add_(1, labels, w)
    return (votes / votes.sum(1, keepdim=True).clamp_min(1e-300)).numpy()
