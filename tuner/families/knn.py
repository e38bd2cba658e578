"""K nearest neighbours over cached embeddings: image retrieval, searched over k, metric and normalisation.

A KNN "fit" is only storing the training embeddings, so a search over k, metric, normalisation and vote
weighting is really a search over neighbour lists. For each (metric, normalisation) the neighbour search
runs once, up to K_TABLE neighbours per validation image, and is kept in memory and on disk; a trial then
reads its first k columns and votes, which takes milliseconds. The vote is scikit-learn's
(`KNeighborsClassifier`): a majority (ties -> the lowest class index) or 1/distance weights, where a
zero distance outweighs everything else.

The backbone (what turns images into vectors) is `pixels`, a torchvision arch with `backbone_weights`, or a
bundle exported by `tuner best --export`. Its features are computed once per data set and image size by
`tuner.embeddings.cached` and shared with the `features` family.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tuner import embeddings
from tuner.engine import Preprocess
from tuner.errors import UserError
from tuner.families.base import DataInfo, Family, Param, register_family

PIXELS = "pixels"
K_TABLE = 64          # neighbours kept per query: every searched k up to this is a look-up
METRICS = ("euclidean", "manhattan", "cosine")


# --------------------------------------------------------------------------- backbone -> embeddings
def backbone_params() -> dict[str, Param]:
    """What knn and features share: where the vectors come from and how they are normalised."""
    return {
        "backbone": Param(PIXELS, "str", help="pixels | a torchvision arch (resnet50, vgg19, ...) | "
                                              "path to a bundle exported by `tuner best --export`"),
        "backbone_weights": Param("imagenet", "str", help="the arch's weights: imagenet | none | a .pt bundle path"),
        "normalize": Param("none", "str", ("none", "l2"), help="l2: scale each embedding to length 1"),
    }


def check_backbone(constants: dict, searched: dict, file: str) -> None:
    """Before Ray starts (not at `validate`, so a space can be checked before its bundle exists): pixels
    needs nothing; every arch's weights file and every bundle path the search may use must be here."""
    names = list(searched["backbone"].args) if "backbone" in searched else [constants.get("backbone", PIXELS)]
    weights = (list(searched["backbone_weights"].args) if "backbone_weights" in searched
               else [constants.get("backbone_weights", "imagenet")])
    for b in names:
        for w in weights:
            _check_one_backbone(str(b), str(w), file)


def _check_one_backbone(b: str, weights: str, file: str) -> None:
    if b == PIXELS:
        return
    from tuner import backbones

    if b in backbones.supported_archs():
        backbones.check_weights(b, weights, f"{file}: backbone_weights", fetch=True)
        return
    p = backbones.resolve_path(str(b))
    if not p.exists():
        raise UserError(f"{file}: backbone {b!r} is neither `pixels`, a torchvision arch (resnet50, vgg19, ...) "
                        f"nor an existing bundle; export one with `tuner best --export DIR` and give DIR")
    from tuner.export import read_bundle

    read_bundle(p)  # a readable tuner bundle, or a UserError that says so


class Backbone:
    """uint8 NHWC images -> float32 (N, D) vectors: flattened normalised pixels, or a frozen network's features.

    With `state` (the module's weights from an exported bundle) a torchvision arch is built without its
    ImageNet file, so a knn / features bundle loads on a machine that has only the bundle.
    """

    def __init__(self, name: str, weights: str, info: DataInfo, device: torch.device | str = "cpu",
                 state: dict | None = None):
        from tuner import backbones

        self.name, self.weights, self.info = name, weights, info
        self.device = torch.device(device)
        if name == PIXELS:
            module, channels, key = nn.Flatten(), info.channels, PIXELS
        elif state is not None and name in backbones.supported_archs():
            module, channels, key = backbones.extractor(name, "none", info)
        else:
            module, channels, key = backbones.extractor(name, weights, info)
        if state is not None and name != PIXELS:
            module.load_state_dict(state)
        self.module = module.to(self.device).eval()
        self.pre = Preprocess(info.mean, info.std, info.channels, channels).to(self.device)
        # the data key says which images; this says what was done to them (the normalisation is not in data.key)
        self.key = f"{key}|mean={tuple(info.mean)}|std={tuple(info.std)}|{info.height}x{info.width}"
        self.num_params = sum(p.numel() for p in self.module.parameters())

    def splits(self, data, cache_dir: str | None) -> dict[str, np.ndarray]:
        """Features of train/val/test, embedded at most once per data set, backbone and image size."""
        return embeddings.cached(data, self.key, self.module, self.pre, self.device, cache_dir)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return embeddings.compute(self.module, self.pre, images, self.device)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """As sklearn.preprocessing.normalize: each row divided by its norm; zero rows stay zero."""
    return F.normalize(x, dim=1, eps=1e-30)


# --------------------------------------------------------------------------- neighbour tables
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
               device: torch.device | str = "cpu", backend: str | None = None) -> Table:
    """The k nearest training vectors of each query for one table kind, nearest first.

    On the CPU this is scikit-learn's own brute-force search (its chunked, multi-threaded ArgKmin, the
    fastest CPU kernel at hand, Manhattan included), asked once for k neighbours instead of once per config.
    On a GPU it is torch: one GEMM per block of queries for Euclidean and cosine, cdist for Manhattan.
    `backend` (sklearn | torch) overrides that choice (the tests run the torch path on the CPU too).
    """
    device = torch.device(device)
    t = torch.from_numpy(np.array(train, dtype=np.float32))   # a copy: the cache is a read-only memory map
    q_all = torch.from_numpy(np.array(query, dtype=np.float32))
    k = min(k, len(t))
    if kind == "cosine" or kind.endswith("-l2"):
        t, q_all = l2_normalize(t), l2_normalize(q_all)
    if len(q_all) == 0:
        return Table(np.zeros((0, k), dtype=np.int64), _distances(torch.zeros(0, k), kind, False))
    if (backend or ("torch" if device.type == "cuda" else "sklearn")) == "sklearn":
        from sklearn.neighbors import NearestNeighbors
        from threadpoolctl import threadpool_limits

        metric = "cosine" if kind == "cosine" else kind.split("-")[0]
        with threadpool_limits(max(1, torch.get_num_threads())):  # the CPUs this trial was given
            nn_ = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(t.numpy())
            d, i = nn_.kneighbors(q_all.numpy())
        return Table(i.astype(np.int64), _distances(torch.from_numpy(d), kind, stand_in=False))
    t_dev = t.to(device)
    t_sq = t_dev.pow(2).sum(1) if kind.startswith("euclidean") else None
    rows = max(1, min(len(q_all), (1 << 26) // max(len(t), 1)))  # a block of distances stays near 256 MB
    idx, vals = [], []
    for start in range(0, len(q_all), rows):
        v, i = _block(q_all[start:start + rows].to(device), t_dev, t_sq, kind).topk(k, dim=1, largest=False)
        idx.append(i.cpu())
        vals.append(v.cpu())
    return Table(torch.cat(idx).numpy().astype(np.int64), _distances(torch.cat(vals), kind, stand_in=True))


_MEMO: OrderedDict[str, Table] = OrderedDict()   # this process's tables; Ray reuses trial actors
_MEMO_SIZE = 16


def _fits(table: Table, train, query, k: int) -> bool:
    """A table can serve these vectors: one row per query, enough columns, rows of this training set."""
    return (table.idx.shape[0] == len(query) and table.k >= min(k, len(train))
            and (table.idx.size == 0 or int(table.idx.max()) < len(train)))


def cached_table(key: str, train, query, kind: str, k: int, device="cpu", cache_dir: str | None = None) -> Table:
    """A neighbour table with at least k columns, from memory, from disk, or computed once (file-locked).
    `key` names the vectors (EmbeddingLearner.data_key: a hash of the data and the backbone); a table that
    does not fit them anyway (a hand-edited cache) is computed again, never indexed out of range."""
    full = f"{key}|{kind}|{len(train)}x{len(query)}"
    hit = _MEMO.get(full)
    if hit is not None and _fits(hit, train, query, k):
        _MEMO.move_to_end(full)
        return hit
    want = max(k, K_TABLE)
    if cache_dir is None:
        table = neighbours(train, query, kind, want, device)
    else:
        from filelock import FileLock

        folder = Path(cache_dir) / "knn"
        folder.mkdir(parents=True, exist_ok=True)
        f = folder / f"{hashlib.sha1(full.encode()).hexdigest()[:16]}.npz"
        with FileLock(str(f) + ".lock"):  # concurrent trials wait for the first instead of searching too
            table = None
            if f.is_file():
                z = np.load(f)
                table = Table(z["idx"], {m[5:]: z[m] for m in z.files if m.startswith("dist_")})
                if not _fits(table, train, query, k):
                    table = None
            if table is None:
                table = neighbours(train, query, kind, want, device)
                tmp = folder / f".{f.stem}.{os.getpid()}.npz"
                np.savez(tmp, idx=table.idx, **{f"dist_{m}": v for m, v in table.dist.items()})
                os.replace(tmp, f)
    _MEMO[full] = table
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return table


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


def proba_metrics(proba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(log loss, accuracy) as the engine computes them for the trained families."""
    if len(y) == 0:
        return float("nan"), float("nan")
    p = np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.log(p).mean()), float((proba.argmax(1) == y).mean())


# --------------------------------------------------------------------------- the family
class EmbeddingLearner:
    """What knn and features share: the backbone (built on first use), the training embeddings, and the
    test split's cached features for the retrain's one test pass."""

    def __init__(self, cfg: dict, info: DataInfo, device="cpu", cache_dir: str | None = None):
        self.cfg, self.info, self.cache_dir = cfg, info, cache_dir
        self.device = torch.device(device)
        self._backbone: Backbone | None = None
        self._backbone_state: dict | None = None   # from a bundle, before the backbone is built
        self.x_train: np.ndarray | None = None
        self.y_train: np.ndarray | None = None
        self._test: tuple[np.ndarray, np.ndarray] | None = None  # (the test images, their cached features)
        self.data_key = ""

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = Backbone(self.cfg["backbone"], self.cfg["backbone_weights"], self.info, self.device,
                                      state=self._backbone_state)
        return self._backbone

    def embed(self, data) -> dict[str, np.ndarray]:
        feats = self.backbone.splits(data, self.cache_dir)
        self.x_train, self.y_train = feats["train"], np.asarray(data.y_train, dtype=np.int64)
        self._test = (data.x_test, feats["test"])
        self.data_key = f"{data.key}|{self.backbone.key}"
        return feats

    def query(self, images: np.ndarray) -> tuple[np.ndarray, str | None]:
        """Features of images to predict, and the cache key of their split when they are the test split."""
        if self._test is not None and images is self._test[0]:
            return self._test[1], f"{self.data_key}|test"
        return self.backbone(images), None

    def weights(self) -> dict:
        """The bundle: the training embeddings and labels (plus the backbone's own weights)."""
        out = {"x_train": torch.from_numpy(np.array(self.x_train, dtype=np.float32)),
               "y_train": torch.from_numpy(np.asarray(self.y_train, dtype=np.int64))}
        if self.cfg["backbone"] != PIXELS:
            out["backbone"] = self.backbone.module.state_dict()
        return out

    def load_weights(self, w: dict) -> None:
        self.x_train = w["x_train"].numpy()
        self.y_train = w["y_train"].numpy()
        if "backbone" in w:
            self._backbone_state, self._backbone = dict(w["backbone"]), None

    # nothing to resume in a one-step fit: the state is what the bundle holds
    def state_dict(self) -> dict:
        return self.weights()

    def load_state_dict(self, state: dict) -> None:
        self.load_weights(state)


class KnnLearner(EmbeddingLearner):
    """Stores the training embeddings; `fit` scores the validation split once from a cached neighbour table."""

    def __init__(self, cfg: dict, info: DataInfo, device="cpu", cache_dir: str | None = None):
        super().__init__(cfg, info, device, cache_dir)
        self.k, self.metric, self.weighting = int(cfg["k"]), cfg["metric"], cfg["weights"]
        self.kind = table_kind(self.metric, cfg["normalize"])

    @property
    def num_params(self) -> int:
        stored = 0 if self.x_train is None else int(self.x_train.size)
        return self.backbone.num_params + stored

    def _check_k(self, extra: int = 0) -> None:
        if self.k + extra > len(self.x_train):
            raise UserError(f"k: {self.k} neighbours but only {len(self.x_train)} training images; lower k")

    def fit(self, data, max_epochs: int = 1) -> Iterator[dict]:
        t0 = time.perf_counter()
        feats = self.embed(data)
        if self.cfg["validation"] == "loo":
            # KNN trains nothing, so every non-test image can be both reference and validation: each one is
            # scored by its neighbours among all the others. One table over train+val serves every k, and
            # 1,437 digits judge a config instead of 360, so the chosen k is much less a matter of luck.
            self.data_key += "|reference=train+val"  # the test table differs with the reference set
            self.x_train = np.concatenate([feats["train"], feats["val"]])
            self.y_train = np.concatenate([self.y_train, np.asarray(data.y_val, dtype=np.int64)])
            self._check_k(extra=1)
            table = without_self(cached_table(f"{self.data_key}|loo", self.x_train, self.x_train, self.kind,
                                              self.k + 1, self.device, self.cache_dir))
            y_eval = self.y_train
        else:
            self._check_k()
            table = cached_table(f"{self.data_key}|val", self.x_train, feats["val"], self.kind, self.k,
                                 self.device, self.cache_dir)
            y_eval = np.asarray(data.y_val)
        proba = vote(table, self.y_train, self.k, self.metric, self.weighting, self.info.num_classes)
        val_loss, val_acc = proba_metrics(proba, y_eval)
        yield {"epoch": 1, "val_loss": val_loss, "val_accuracy": val_acc, "epoch_time_s": time.perf_counter() - t0}

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        if self.x_train is None:
            raise RuntimeError("fit the learner (or load_weights) before predicting")
        self._check_k()
        feats, key = self.query(images)
        if key is not None:
            table = cached_table(key, self.x_train, feats, self.kind, self.k, self.device, self.cache_dir)
        else:
            table = neighbours(self.x_train, feats, self.kind, self.k, self.device)
        return vote(table, self.y_train, self.k, self.metric, self.weighting, self.info.num_classes).astype(np.float32)


VOTE_WEIGHTS = ("uniform", "distance")


@register_family
class Knn(Family):
    """K nearest neighbours over embeddings: image retrieval, with a majority or distance-weighted vote.

    The `backbone` turns each image into a vector once (`pixels`, a pretrained torchvision arch, or a
    bundle exported by `tuner best --export`, e.g. a fine-tuned transfer model with its head cut off);
    a search over k, metric, normalisation and vote weighting then costs one neighbour search per
    (metric, normalize), and every other trial is a table look-up. No training, one report per trial.
    """
    name = "knn"
    iterative = False
    params = {
        **backbone_params(),
        "k": Param(5, "int", low=1, help="neighbours that vote"),
        "metric": Param("euclidean", "str", METRICS, help="distance between embeddings"),
        "weights": Param("uniform", "str", VOTE_WEIGHTS, help="vote weighting; the backbone's are backbone_weights"),
        "validation": Param("loo", "str", ("loo", "holdout"),
                            help="loo: leave-one-out over train+val, which then all serve as reference images; "
                                 "holdout: reference = train, scored on val"),
    }

    def validate(self, constants: dict, searched: dict, file: str) -> None:
        # the contract's `weights` also names backbone weights elsewhere: point a user who means those the right way
        values = [constants.get("weights")] + list(getattr(searched.get("weights"), "args", ()))
        for v in values:
            if v is not None and v not in VOTE_WEIGHTS:
                raise UserError(f"{file}: weights {v!r}: for knn `weights` is the vote weighting (uniform | "
                                f"distance); put the backbone's weights (imagenet | none | bundle path) "
                                f"in backbone_weights")
        super().validate(constants, searched, file)

    def preflight(self, constants: dict, searched: dict, file: str) -> None:
        check_backbone(constants, searched, file)

    def learner(self, config: dict, info: DataInfo, device="cpu", cache_dir: str | None = None) -> KnnLearner:
        return KnnLearner(self.resolve(config), info, device=device, cache_dir=cache_dir)
