"""Tables and plots from a results folder. Reads only files, so it works on any finished experiment."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC_COLUMNS = ["accuracy", "loss", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
                  "recall_weighted", "f1_weighted", "balanced_accuracy", "auc_ovr", "tpr", "tnr", "fpr", "fnr",
                  "num_test", "num_params", "train_time_s"]
COMPARISON_COLUMNS = ["experiment", "family"] + METRIC_COLUMNS


# --------------------------------------------------------------------------- the retrained model
def test_report(out: Path, y_true: np.ndarray, proba: np.ndarray, class_names: list[str], history: list[dict]):
    from sklearn.metrics import classification_report, confusion_matrix

    k = len(class_names)
    pred = proba.argmax(1)
    cm = confusion_matrix(y_true, pred, labels=np.arange(k))
    pd.DataFrame(cm, index=class_names, columns=class_names).to_csv(out / "confusion_matrix.csv")
    rep = classification_report(y_true, pred, labels=np.arange(k), target_names=class_names, output_dict=True,
                                zero_division=0)
    pd.DataFrame(rep).T.to_csv(out / "classification_report.csv")
    plot_confusion(cm, class_names, out / "confusion_matrix.png")
    plot_history(history, out / "curves.png", title="retrained best config")


def plot_confusion(cm: np.ndarray, names: list[str], path: Path) -> None:
    k = len(names)
    side = min(4 + 0.35 * k, 24)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    if k <= 30:  # past ~30 classes numbers and names become unreadable: colour alone carries it
        ax.set_xticks(range(k), names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({k} classes, {int(cm.sum())} test images)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_history(history: list[dict], path: Path, title: str = "") -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if history and "train_loss" in history[0]:
        ep = [h["epoch"] for h in history]
        for ax, key in zip(axes, ("loss", "accuracy")):
            ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", label="train")
            ax.plot(ep, [h[f"val_{key}"] for h in history], "o-", label="val")
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
            ax.legend()
            ax.grid(alpha=0.3)
    else:  # non-iterative families report once
        for ax, key in zip(axes, ("loss", "accuracy")):
            vals = [h.get(f"val_{key}", np.nan) for h in history]
            ax.bar(["val"], vals[-1:] or [0])
            ax.set_ylabel(key)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- the search
def experiment_plots(exp_dir: Path, top: int = 8) -> None:
    """plots/learning_curves.png, parameters.png, importance.png from trials.csv and epochs.csv."""
    exp_dir = Path(exp_dir)
    plots = exp_dir / "plots"
    plots.mkdir(exist_ok=True)
    trials = pd.read_csv(exp_dir / "trials.csv")
    epochs = pd.read_csv(exp_dir / "epochs.csv")
    space = yaml.safe_load((exp_dir / "space.yaml").read_text())
    metric, mode = space.get("metric", "val_accuracy"), space.get("mode", "max")
    ok = trials.dropna(subset=["val_accuracy"])
    ranked = ok.sort_values("val_accuracy" if metric == "val_accuracy" else "val_loss",
                            ascending=(metric == "val_loss") or mode == "min")

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for tid in ranked["trial_id"].head(top):
        e = epochs[epochs["trial_id"] == tid]
        for ax, key in zip(axes.flat, ("train_loss", "val_loss", "train_accuracy", "val_accuracy")):
            ax.plot(e["epoch"], e[key], marker=".", label=str(tid))
    for ax, key in zip(axes.flat, ("train_loss", "val_loss", "train_accuracy", "val_accuracy")):
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.set_xlabel("epoch")
    axes.flat[3].legend(fontsize=7, title=f"top {min(top, len(ranked))} trials")
    fig.tight_layout()
    fig.savefig(plots / "learning_curves.png", dpi=100)
    plt.close(fig)

    searched = {k: v for k, v in (space.get("space") or {}).items()
                if isinstance(v, dict) and k not in (space.get("fixed") or {})}
    n = max(len(searched), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    for ax, (k, dist) in zip(axes.flat, searched.items()):
        kind = next(iter(dist))
        vals = ok[k] if k in ok else pd.Series(dtype=float)
        if kind in ("choice", "grid"):
            cats = [str(v) for v in vals]
            order = sorted(set(cats))
            ax.scatter([order.index(c) for c in cats], ok["val_accuracy"], alpha=0.7)
            ax.set_xticks(range(len(order)), order, rotation=30, fontsize=8)
        else:
            ax.scatter(pd.to_numeric(vals), ok["val_accuracy"], alpha=0.7)
            if kind in ("loguniform", "logint"):
                ax.set_xscale("log")
        ax.set_xlabel(k)
        ax.set_ylabel("val_accuracy")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(searched):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(plots / "parameters.png", dpi=100)
    plt.close(fig)

    imp = importance(ok, searched, metric if metric in ok else "val_accuracy", mode)
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * max(len(imp), 1)))
    if imp:
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names])
        ax.set_xlabel("importance (Optuna, share of the metric's variance)")
    else:
        ax.text(0.5, 0.5, "too few finished trials to rank parameters", ha="center", va="center")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(plots / "importance.png", dpi=100)
    plt.close(fig)


def importance(trials: pd.DataFrame, searched: dict, metric: str, mode: str) -> dict[str, float]:
    """Optuna's parameter importance over the finished trials (rebuilt as an in-memory study)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {}
    for k, d in searched.items():
        kind, args = next(iter(d.items()))
        if kind in ("choice", "grid"):
            dists[k] = optuna.distributions.CategoricalDistribution([str(a) for a in args])
        elif kind in ("int", "logint"):
            dists[k] = optuna.distributions.IntDistribution(int(args[0]), int(args[1]), log=kind == "logint")
        else:
            dists[k] = optuna.distributions.FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")
    if len(trials) < 3 or not dists or metric not in trials:
        return {}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in trials.iterrows():
        params = {}
        for k, dist in dists.items():
            v = row.get(k)
            params[k] = str(v) if isinstance(dist, optuna.distributions.CategoricalDistribution) else \
                (int(v) if isinstance(dist, optuna.distributions.IntDistribution) else float(v))
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row[metric])))
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


# --------------------------------------------------------------------------- comparison
def comparison_rows(results: Path, names: list[str] | None = None) -> pd.DataFrame:
    rows = []
    dirs = [results / n for n in names] if names else sorted(p for p in results.iterdir() if p.is_dir())
    for d in dirs:
        m = d / "best" / "metrics.json"
        if not m.is_file():
            continue
        metrics = json.loads(m.read_text())
        family = ""
        if (d / "space.yaml").is_file():
            family = (yaml.safe_load((d / "space.yaml").read_text()) or {}).get("family", "")
        rows.append({"experiment": d.name, "family": family, **{k: metrics.get(k) for k in METRIC_COLUMNS}})
    df = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    return df.sort_values("accuracy", ascending=False, kind="stable").reset_index(drop=True)


def write_comparison(results: Path, names: list[str] | None = None) -> pd.DataFrame:
    results = Path(results)
    df = comparison_rows(results, names)
    df.to_csv(results / "comparison.csv", index=False)
    (results / "comparison.md").write_text(to_markdown(df) + "\n")
    return df


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def render(df: pd.DataFrame, fmt: str) -> str:
    """The comparison table as md, csv, html or tex, numbers rounded for reading."""
    if fmt == "md":
        return to_markdown(df)
    shown = df.map(_fmt)
    if fmt == "csv":
        return shown.to_csv(index=False).rstrip()
    if fmt == "html":
        return shown.to_html(index=False)
    return shown.to_latex(index=False)
