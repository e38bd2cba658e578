"""Classic classifiers over cached embeddings: logistic regression, random forests, SVMs (and KNN), from scikit-learn.

As the CIFAR-10 seed did with VGG19: take a backbone's features once (shared with every trial through the
embedding cache), then search over the classifier and its own parameters. Parameters that belong to another
classifier are ignored, so one space can search `classifier: {choice: [logreg, random_forest, svm, knn]}`.

An exported bundle must load with `torch.load(weights_only=True)`, which cannot hold a scikit-learn object;
so the bundle keeps the training embeddings and labels, and loading refits the classifier on them. Every
classifier here is deterministic given `seed`, so the refit predicts exactly what was tested.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import torch

from tuner.errors import UserError
from tuner.families.base import DataInfo, Family, Param, RunContext, register_family
from tuner.families.embedding import EmbeddingLearner, backbone_params, check_backbone, warm_embeddings
from tuner.metrics import proba_metrics

CLASSIFIERS = ("logreg", "random_forest", "svm", "knn")
TRAIN_METRICS_MAX = 2000   # train_loss / train_accuracy on at most this many training images (SVM predict is slow)


def make_classifier(cfg: dict):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    jobs = max(1, torch.get_num_threads())  # the CPUs this trial was given (engine.set_threads)
    name, seed = cfg["classifier"], int(cfg["seed"])
    if name == "logreg":
        return LogisticRegression(C=float(cfg["C"]), max_iter=int(cfg["max_iter"]), random_state=seed)
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=int(cfg["n_estimators"]), max_depth=int(cfg["max_depth"]) or None,
                                      min_samples_leaf=int(cfg["min_samples_leaf"]), criterion=cfg["criterion"],
                                      random_state=seed, n_jobs=jobs)
    if name == "svm":
        return SVC(C=float(cfg["C"]), kernel=cfg["kernel"], gamma=cfg["gamma"], degree=int(cfg["degree"]),
                   decision_function_shape="ovr", break_ties=True, random_state=seed)
    return KNeighborsClassifier(n_neighbors=int(cfg["k"]), n_jobs=jobs)


class FeaturesLearner(EmbeddingLearner):
    """Embeds once (cached), normalises, fits one scikit-learn classifier, reports validation metrics once."""

    def __init__(self, cfg: dict, info: DataInfo, ctx: RunContext | None = None):
        super().__init__(cfg, info, ctx)
        self.model: Any = None  # the fitted scikit-learn classifier (scikit-learn has no type hints)
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    @property  # computed from what is stored; Learner's is a number a trained model sets once
    def num_params(self) -> int:  # type: ignore[override]
        m, n = self.model, 0
        if hasattr(m, "coef_"):
            n = m.coef_.size + m.intercept_.size
        elif hasattr(m, "estimators_"):
            n = sum(t.tree_.node_count for t in m.estimators_)
        elif hasattr(m, "support_vectors_"):
            n = m.support_vectors_.size + m.dual_coef_.size
        elif self.x_train is not None:  # knn: the stored embeddings are the model
            n = int(self.x_train.size)
        return self.backbone.num_params + int(n)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Embeddings -> what the classifier sees: the `normalize` setting applied (training statistics)."""
        x = np.array(x, dtype=np.float32)
        norm = self.cfg["normalize"]
        if norm == "l2":
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        elif norm == "standard":
            x = (x - self.mean) / self.scale
        return x

    def _fit_classifier(self) -> None:
        x_train, y_train = self.references()
        x = np.asarray(x_train, dtype=np.float32)
        if self.cfg["normalize"] == "standard":  # statistics of the training split only
            self.mean = x.mean(0, dtype=np.float64).astype(np.float32)
            std = x.std(0, dtype=np.float64)
            self.scale = np.where(std < 1e-5, 1.0, std).astype(np.float32)  # constant features: as StandardScaler
        if self.cfg["classifier"] == "knn" and int(self.cfg["k"]) > len(x):
            raise UserError(f"k: {self.cfg['k']} neighbours but only {len(x)} training images; lower k")
        if len(np.unique(y_train)) < 2:
            raise UserError("dataset: the training split has one class; a classifier needs at least two")
        self.model = make_classifier(self.cfg).fit(self.transform(x), y_train)

    def _proba(self, feats: np.ndarray) -> np.ndarray:
        """Probabilities over all classes (a class missing from a small training split gets 0)."""
        x = self.transform(feats)
        if self.cfg["classifier"] == "svm":
            # softmax of the one-vs-rest decision values: its argmax is SVC.predict (break_ties=True: a
            # tie in one-vs-one votes goes to the larger decision value, not the lower class), at none of
            # the 5-fold cost of probability=True (whose Platt argmax can even disagree with predict)
            d = self.model.decision_function(x)
            d = np.stack([-d, d], 1) if d.ndim == 1 else d
            p = torch.softmax(torch.from_numpy(np.asarray(d, dtype=np.float64)), 1).numpy()
        else:
            p = self.model.predict_proba(x)
        out = np.zeros((len(x), self.info.num_classes), dtype=np.float32)
        out[:, self.model.classes_] = p
        return out

    def fit(self, data, max_epochs: int = 1) -> Iterator[dict]:
        t0 = time.perf_counter()
        yield self.fit_embedded(self.embed(data), data, t0)

    def fit_embedded(self, feats: dict[str, np.ndarray], data, t0: float) -> dict:
        """The classifier fitted on embeddings already taken (`embed`, or `adopt` of another learner's), and
        its one report; `tuner.fused.lookup` fits many configs on one embedding this way."""
        self._fit_classifier()
        x_train, y_train = self.x_train, self.y_train
        assert x_train is not None and y_train is not None  # adopted or embedded before the fit (a bug otherwise)
        val_loss, val_acc = proba_metrics(self._proba(feats["val"]), np.asarray(data.y_val))
        sub = np.linspace(0, len(y_train) - 1, min(len(y_train), TRAIN_METRICS_MAX)).astype(int)
        train_loss, train_acc = proba_metrics(self._proba(x_train[sub]), y_train[sub])
        return {"epoch": 1, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                "val_accuracy": val_acc, "epoch_time_s": time.perf_counter() - t0}

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the learner (or load_weights) before predicting")
        return self._proba(self.query(images)[0])

    def load_weights(self, w: dict) -> None:
        super().load_weights(w)
        self._fit_classifier()  # deterministic given the seed: the same model that was tested


@register_family
class Features(Family):
    """A scikit-learn classifier (logistic regression, random forest, SVM or KNN) on a backbone's
    embeddings, computed once and shared by every trial.

    Use it to ask whether a pretrained network's features plus a classic classifier are enough (the
    CIFAR-10 seed's VGG19 features); `classifier` can itself be searched, and parameters that belong
    to a classifier not chosen are ignored. No training loop, one report per trial.
    """
    name = "features"
    iterative = False
    params = {
        **backbone_params(),
        "normalize": Param("none", "str", ("none", "l2", "standard"),
                           help="l2: each embedding to length 1; standard: per-feature z-score"),
        "classifier": Param("logreg", "str", CLASSIFIERS, fusable=True,
                            help="a scikit-learn classifier; parameters of the others are ignored"),
        "C": Param(1.0, "float", low=1e-12, fusable=True, help="logreg and svm: inverse regularisation strength"),
        "max_iter": Param(1000, "int", low=1, fusable=True, help="logreg"),
        "n_estimators": Param(100, "int", low=1, fusable=True, help="random_forest"),
        "max_depth": Param(0, "int", low=0, fusable=True, help="random_forest; 0 = unlimited"),
        "min_samples_leaf": Param(1, "int", low=1, fusable=True, help="random_forest"),
        "criterion": Param("gini", "str", ("gini", "entropy", "log_loss"), fusable=True, help="random_forest"),
        "kernel": Param("rbf", "str", ("rbf", "linear", "poly", "sigmoid"), fusable=True, help="svm"),
        "gamma": Param("scale", "any", fusable=True, help="svm: scale | auto | a number > 0"),
        "degree": Param(3, "int", low=1, fusable=True, help="svm with kernel poly"),
        "k": Param(5, "int", low=1, fusable=True, help="knn"),
        "seed": Param(0, "int", fusable=True, help="the classifier's random_state"),
    }

    def validate(self, constants: dict, searched: dict, file: str) -> None:
        super().validate(constants, searched, file)
        gammas = [constants["gamma"]] if "gamma" in constants else []
        dist = searched.get("gamma")
        if dist is not None:
            gammas += list(dist.args)
        for g in gammas:
            if not (g in ("scale", "auto") or (isinstance(g, (int, float)) and not isinstance(g, bool) and g > 0)):
                raise UserError(f"{file}: gamma {g!r}: expected scale, auto or a number > 0")

    def preflight(self, constants: dict, searched: dict, file: str) -> None:
        check_backbone(self.resolve(constants), searched, file)

    def learner(self, config: dict, info: DataInfo, ctx: RunContext | None = None) -> FeaturesLearner:
        return FeaturesLearner(self.resolve(config), info, ctx)

    def warm_up(self, constants: dict, searched: dict, data, ctx: RunContext) -> None:
        """The embeddings of every backbone the space can draw, before the trials start (see `Family.warm_up`)."""
        warm_embeddings(self, constants, searched, data, ctx)
