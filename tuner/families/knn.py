"""K nearest neighbours over cached embeddings: image retrieval, searched over k, metric and normalisation.

A KNN "fit" is only storing the training embeddings, so a search over k, metric, normalisation and vote
weighting is really a search over neighbour lists. For each (metric, normalisation) the neighbour search
runs once, up to K_TABLE neighbours per validation image, and is kept in memory and on disk; a trial then
reads its first k columns and votes, which takes milliseconds. The vote is scikit-learn's
(`KNeighborsClassifier`): a majority (ties -> the lowest class index) or 1/distance weights, where a
zero distance outweighs everything else.

The backbone (what turns images into vectors) is `pixels`, a torchvision arch with `backbone_weights`, or a
bundle exported by `tuner best --export`. Its features are computed once per data set and image size by
`tuner.embeddings.cached` and shared with the `features` family (`tuner.families.embedding`); the
neighbour tables are `tuner.neighbours`.
"""
from __future__ import annotations

import itertools
import time
from typing import Iterator

import numpy as np

from tuner.errors import UserError
from tuner.families.base import DataInfo, Family, Param, RunContext, register_family, values
from tuner.families.embedding import EmbeddingLearner, backbone_params, check_backbone
from tuner.metrics import proba_metrics
from tuner.neighbours import TABLES, Table, neighbours, table_kind, vote, without_self

METRICS = ("euclidean", "manhattan", "cosine")


def check_k(k: int, extra: int, n: int) -> None:
    """k neighbours (plus `extra`: a leave-one-out table also holds each image itself) among n references."""
    if k + extra > n:
        raise UserError(f"k: {k} neighbours but only {n} training images; lower k")


class KnnLearner(EmbeddingLearner):
    """Stores the training embeddings; `fit` scores the validation split once from a cached neighbour table."""

    def __init__(self, cfg: dict, info: DataInfo, ctx: RunContext | None = None):
        super().__init__(cfg, info, ctx)
        self.k, self.metric, self.weighting = int(cfg["k"]), cfg["metric"], cfg["weights"]
        self.kind = table_kind(self.metric, cfg["normalize"])

    def latency_key(self) -> str | None:
        """Inference is the backbone on the new images, then one neighbour search of the table's kind against
        the reference set; k and the vote weighting change the vote over at most K_TABLE columns only. So
        one measurement per (backbone, table kind, reference set, device): with the backbone's forward
        passes it was nearly all of a KNN trial (2.7 of 2.8 s on the shared 2-core machine, 121 trials)."""
        return f"knn|{self.backbone.key}|{self.kind}|{self.cfg['validation']}|{self.device}"

    @property  # computed from what is stored; Learner's is a number a trained model sets once
    def num_params(self) -> int:  # type: ignore[override]
        stored = 0 if self.x_train is None else int(self.x_train.size)
        return self.backbone.num_params + stored

    def _check_k(self, extra: int = 0, k: int | None = None) -> None:
        check_k(self.k if k is None else k, extra, len(self.references()[0]))

    def scoring_table(self, data, k: int | None = None) -> tuple[Table, np.ndarray]:
        """Embed `data` (cached) and return the neighbour table validation is scored from, with at least k
        columns (default: this learner's k; `tuner.fused.lookup` asks once for the largest k of many configs),
        and the labels of its rows."""
        k = self.k if k is None else k
        feats = self.embed(data)
        if self.cfg["validation"] == "loo":
            # KNN trains nothing, so every non-test image can be both reference and validation: each one is
            # scored by its neighbours among all the others. One table over train+val serves every k, and
            # 1,437 digits judge a config instead of 360, so the chosen k is much less a matter of luck.
            self.data_key += "|reference=train+val"  # the test table differs with the reference set
            self.x_train = np.concatenate([feats["train"], feats["val"]])
            self.y_train = np.concatenate([self.y_train, np.asarray(data.y_val, dtype=np.int64)])
            self._check_k(extra=1, k=k)
            table = without_self(TABLES.get(f"{self.data_key}|loo", self.x_train, self.x_train, self.kind,
                                              k + 1, self.device, self.cache_dir, self.progress))
            return table, self.y_train
        self._check_k(k=k)
        table = TABLES.get(f"{self.data_key}|val", self.x_train, feats["val"], self.kind, k, self.device,
                           self.cache_dir, self.progress)
        return table, np.asarray(data.y_val)

    def fit(self, data, max_epochs: int = 1) -> Iterator[dict]:
        t0 = time.perf_counter()
        table, y_eval = self.scoring_table(data)
        proba = vote(table, self.references()[1], self.k, self.metric, self.weighting, self.info.num_classes)
        val_loss, val_acc = proba_metrics(proba, y_eval)
        yield {"epoch": 1, "val_loss": val_loss, "val_accuracy": val_acc, "epoch_time_s": time.perf_counter() - t0}

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x_train, y_train = self.references()
        self._check_k()
        feats, key = self.query(images)
        if key is not None:
            table = TABLES.get(key, x_train, feats, self.kind, self.k, self.device, self.cache_dir, self.progress)
        else:
            table = neighbours(x_train, feats, self.kind, self.k, self.device, progress=self.progress)
        return vote(table, y_train, self.k, self.metric, self.weighting, self.info.num_classes).astype(np.float32)


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
        "k": Param(5, "int", low=1, fusable=True, help="neighbours that vote"),
        "metric": Param("euclidean", "str", METRICS, help="distance between embeddings"),
        "weights": Param("uniform", "str", VOTE_WEIGHTS, fusable=True,
                         help="vote weighting; the backbone's are backbone_weights"),
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
        check_backbone(self.resolve(constants), searched, file)

    def learner(self, config: dict, info: DataInfo, ctx: RunContext | None = None) -> KnnLearner:
        return KnnLearner(self.resolve(config), info, ctx)

    def warm_up(self, constants: dict, searched: dict, data, ctx: RunContext) -> None:
        """The embeddings and one neighbour table per (metric, normalisation) the space can draw: every trial is
        then a look-up. A k range or a metric left to a numeric range is not enumerable: those tables wait."""
        def vals(key):
            return values(key, constants, searched, self.params[key].default)

        ks = vals("k") or [searched["k"].args[1]]
        pairs = [(m, n) for m in vals("metric") or [] for n in vals("normalize") or []]
        kinds = {table_kind(m, n): (m, n) for m, n in pairs}
        for backbone, weights, validation in itertools.product(vals("backbone") or [], vals("backbone_weights") or [],
                                                               vals("validation") or []):
            for m, n in kinds.values():
                cfg = {**constants, "backbone": backbone, "backbone_weights": weights, "validation": validation,
                       "metric": m, "normalize": n, "k": max(int(k) for k in ks)}
                try:
                    list(self.learner(cfg, data.info, ctx).fit(data))
                except UserError:
                    pass  # k larger than the training set: the trials that draw it say so themselves
