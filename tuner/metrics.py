"""Scores computed one way for every family and every caller: loss and accuracy from probabilities, the
test metrics of metrics.json, a trial's score key and rank, the Pareto front (numpy and pandas only)."""
from __future__ import annotations

import math

import numpy as np


def proba_metrics(proba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(log loss, accuracy) as the engine computes them for the trained families."""
    if len(y) == 0:
        return float("nan"), float("nan")
    p = np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.log(p).mean()), float((proba.argmax(1) == y).mean())


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict:
    """The contract's metrics.json keys (without num_params / train_time_s, which the caller knows)."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.int64)
    k = proba.shape[1]
    pred = proba.argmax(1)
    labels = np.arange(k)
    loss, accuracy = proba_metrics(proba, y_true)
    out = {
        "accuracy": accuracy,
        "loss": loss,
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, pred)),
    }
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(y_true, pred, average=avg, labels=np.unique(y_true),
                                                             zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(pr), float(rc), float(f1)
    aucs = []
    for c in labels:
        pos = y_true == c
        if pos.any() and (~pos).any():
            aucs.append(skm.roc_auc_score(pos, proba[:, c]))
    out["auc_ovr"] = float(np.mean(aucs)) if aucs else float("nan")
    cm = skm.confusion_matrix(y_true, pred, labels=labels)
    tp = np.diag(cm).astype(float)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    present = cm.sum(1) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        out["tpr"] = float(np.mean((tp / (tp + fn))[present]))
        out["fnr"] = float(np.mean((fn / (tp + fn))[present]))
        out["tnr"] = float(np.mean((tn / (tn + fp))[present]))
        out["fpr"] = float(np.mean((fp / (tn + fp))[present]))
    out["num_test"] = int(len(y_true))
    return out


# a trial's val_loss at its best epoch, reported beside its running best: after a --resume the console has
# seen only the epochs since, and breaks a tie on this, as best.yaml does on trials.csv's val_loss
BEST_LOSS = "val_loss_at_best"
# the epochs a trial restored from its checkpoint ran before it, sent with its first report after the restore:
# the checkpoint may be newer than what Ray's snapshot and tuner's tables took in before a SIGKILL
HISTORY = "history"


def epoch_of(result: dict | None) -> int:
    """The epochs a result counts: the trial's own `epoch`, which a restored trial's last epoch reported again
    keeps (trainable._train; Ray numbers that report one more), else Ray's training_iteration."""
    r = result or {}
    return int(r.get("epoch") or r.get("training_iteration") or 0)


def best_key(metric: str) -> str:
    """The running best a trial reports beside `metric`: the one score the searcher, scheduler and tables use."""
    return f"best_{metric}"


def rank_key(mode: str, score: float, val_loss: float, trial_id: str) -> tuple:
    """Smallest is best: the score, then (on a tie) the lower val_loss at that epoch, then the trial id,
    so the console, best.yaml, the retrain and the plots name the same trial (tables: `ranked`)."""
    loss = val_loss if val_loss == val_loss and val_loss is not None else math.inf
    return (-score if mode == "max" else score, loss, trial_id)


# --------------------------------------------------------------------------- Pareto front
def pareto_mask(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Rows of `values` (trials x objectives) that no other row dominates (at least as good on every
    objective, better on one). A row with a NaN is never on the front; equal rows do not dominate each
    other, so both stay."""
    v = np.asarray(values, dtype=float) * np.array([-1.0 if m == "max" else 1.0 for m in modes])  # all minimised
    ok = np.isfinite(v).all(axis=1) if v.size else np.zeros(len(v), dtype=bool)
    mask = np.zeros(len(v), dtype=bool)
    cand = v[ok]
    for i, row in zip(np.flatnonzero(ok), cand):
        mask[i] = not ((cand <= row).all(axis=1) & (cand < row).any(axis=1)).any()
    return mask


def candidates(df):
    """The rows of a trials table that may be the best: not failed (`status` ERROR), not infeasible (a
    `feasible` column, read as trials.csv writes it)."""
    if "status" in df:
        df = df[df["status"] != "ERROR"]
    if "feasible" in df:
        df = df[df["feasible"].astype(str).str.lower().isin(("true", "1", "1.0"))]
    return df


def ranked(df, col: str, mode: str):
    """The finished rows of a trials table (not failed, a finite `col`), best first: feasible ones before
    infeasible ones, then by `rank_key` (the score, the lower val_loss on a tie, the trial id). The one order
    best.yaml, the console and the plots all follow."""
    import pandas as pd

    if df.empty or col not in df:
        return df.iloc[0:0]
    done = df[df["status"] != "ERROR"] if "status" in df else df
    score = pd.to_numeric(done[col], errors="coerce")
    done = done[np.isfinite(score.to_numpy(dtype=float))]
    ok = set(candidates(done).index)
    loss = pd.to_numeric(done["val_loss"], errors="coerce") if "val_loss" in done else pd.Series(math.nan, done.index)
    keys = {i: (i not in ok, rank_key(mode, float(score[i]), float(loss[i]), str(done.at[i, "trial_id"])))
            for i in done.index}
    return done.loc[sorted(done.index, key=keys.__getitem__)]


def best_index(df, metrics: list[str], modes: list[str], col: str | None = None):
    """The index of best.yaml's row in a trials table, or None: the first of `ranked` by the first objective
    (or `col`) among the feasible rows, and among the Pareto front's when there are several objectives."""
    cand = candidates(df)
    if len(metrics) > 1:
        cand = pareto_front(cand, metrics, modes)
    order = ranked(cand, col or metrics[0], modes[0])
    return order.index[0] if len(order) else None


def pareto_front(df, cols: list[str], modes: list[str]):
    """The non-dominated rows of a trials table (a pandas DataFrame), best on the first objective first, each
    with its original index. Failed trials (`status` ERROR), infeasible ones (a `feasible` column) and rows
    with a missing objective are not candidates; a table without the objective columns has an empty front.
    The one definition of the front: pareto.csv, the best trial of a multi-objective search and the plot."""
    import pandas as pd

    if len(cols) != len(modes):
        raise ValueError(f"{len(cols)} objectives but {len(modes)} modes")
    if df.empty or any(c not in df for c in cols):
        return df.iloc[0:0]
    cand = candidates(df)
    values = np.column_stack([pd.to_numeric(cand[c], errors="coerce").to_numpy(dtype=float) for c in cols])
    front = cand[pareto_mask(values, modes)]
    return front.sort_values(cols[0], ascending=modes[0] == "min", kind="stable")


def feasible(result: dict, constraints: dict[str, dict]) -> bool:
    """Whether a result (a trial's row, or one epoch's metrics) is inside every constraint."""
    return all(c <= 0 for c in constraint_values(result, constraints))


def constraint_values(result: dict, constraints: dict[str, dict]) -> list[float]:
    """Optuna's convention: each value <= 0 means satisfied. A missing measurement counts as violated."""
    out = []
    for name, bound in constraints.items():
        v = result.get(name)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out += [1.0] * len(bound)
            continue
        if "max" in bound:
            out.append(float(v) - bound["max"])
        if "min" in bound:
            out.append(bound["min"] - float(v))
    return out
