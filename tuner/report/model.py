"""best/'s reports of the retrained model: confusion matrix, classification report, learning curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tuner.atomic import write_text  # noqa: E402
from tuner.report.figures import save as _save, short as _short  # noqa: E402

NUMBERS_UP_TO = 30  # classes: past this a confusion matrix gets no per-cell numbers nor class names


def test_report(out: Path, y_true: np.ndarray, proba: np.ndarray, class_names: list[str],
                history: list[dict] | None) -> None:
    """best/: confusion_matrix.csv/.png, classification_report.csv and (for a trained model) curves.png."""
    from sklearn.metrics import classification_report, confusion_matrix

    out = Path(out)
    k = len(class_names)
    pred = proba.argmax(1)
    cm = confusion_matrix(y_true, pred, labels=np.arange(k))
    write_text(out / "confusion_matrix.csv", pd.DataFrame(cm, index=class_names, columns=class_names).to_csv())
    rep = classification_report(y_true, pred, labels=np.arange(k), target_names=class_names, output_dict=True,
                                zero_division=0)
    write_text(out / "classification_report.csv", _report_table(rep, len(y_true)).to_csv())
    plot_confusion(cm, class_names, out / "confusion_matrix.png")
    if history:
        plot_history(history, out / "curves.png", title="retrained best config")


def _report_table(rep: dict, n: int) -> pd.DataFrame:
    """scikit-learn's report as its text form lays it out: the accuracy in the f1-score column with the test
    set's size as its support (as a dict, its one number filled every column, support 0.9889 included)."""
    accuracy = rep.pop("accuracy", None)
    table = pd.DataFrame(rep).T
    if accuracy is not None:
        averages = [i for i in table.index if i.endswith(" avg")]
        row = pd.DataFrame({"f1-score": [accuracy], "support": [n]}, index=["accuracy"])
        table = pd.concat([table.drop(index=averages), row, table.loc[averages]])
    table["support"] = table["support"].astype(int)
    return table


def top_confusions(cm: np.ndarray, names: list[str], n: int = 15) -> list[tuple[str, str, int]]:
    """The n largest off-diagonal cells: (true, predicted, count), most frequent first."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1][:n]
    pairs = [np.unravel_index(i, off.shape) for i in flat]
    return [(names[i], names[j], int(off[i, j])) for i, j in pairs if off[i, j] > 0]

def plot_confusion(cm: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix. Up to ~30 classes: names and counts in the cells. Past that
    (Stanford Cars has 196) numbers and names cannot be read, so the colour carries the matrix, a square-root
    colour scale keeps the rare confusions visible, and a side list names the most frequent confusions."""
    k = len(names)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    title = f"confusion matrix: {k} classes, {int(cm.sum())} test images, accuracy {accuracy:.3f}"
    if k <= NUMBERS_UP_TO:
        side = max(5.0, 2.5 + 0.38 * k)
        fig, ax = plt.subplots(figsize=(side + 1.2, side))
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(k), [_short(n, 18) for n in names], rotation=90, fontsize=8)
        ax.set_yticks(range(k), [_short(n, 18) for n in names], fontsize=8)
        cell_font = 8 if k <= 15 else 6
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=cell_font,
                            color="white" if norm[i, j] > 0.5 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="share of the true class")
        ax.set_title(title, fontsize=10)
    else:
        fig = plt.figure(figsize=(15, 10.5))
        ax = fig.add_axes((0.06, 0.07, 0.58, 0.84))
        cax = fig.add_axes((0.655, 0.07, 0.012, 0.84))
        im = ax.imshow(norm, cmap="viridis", norm=PowerNorm(gamma=0.5, vmin=0, vmax=1), interpolation="nearest")
        step = max(1, int(round(k / 20 / 5)) * 5) if k > 40 else 5
        ticks = list(range(0, k, step))
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=8)
        ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=8)
        fig.colorbar(im, cax=cax, label="share of the true class (square-root scale)")
        ax.set_title(title, fontsize=11)
        # the side list: which classes are mistaken for which, by name
        index = {n: i for i, n in enumerate(names)}
        lines = ["most frequent confusions", "count  true class", "       → predicted as", ""]
        for t, p, c in top_confusions(cm, names, 16):
            lines += [f"{c:>5}  {index[t]:>3} {_short(t, 34)}", f"       → {index[p]:>3} {_short(p, 34)}"]
        worst = np.argsort(np.diag(norm) + (cm.sum(1) == 0))[:8]
        lines += ["", "least recalled classes", "recall  class", ""]
        lines += [f"{norm[i, i]:>6.2f}  {i:>3} {_short(names[i], 34)}" for i in worst]
        fig.text(0.71, 0.91, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace")
        fig.text(0.71, 0.04, "axis numbers are class indices, in the order of\nclassification_report.csv "
                 "and confusion_matrix.csv", fontsize=8, color="0.35")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= NUMBERS_UP_TO:
        fig.tight_layout()
    _save(fig, path)


def plot_history(history: list[dict], path: Path, title: str = "") -> None:
    """Train and validation loss and accuracy per epoch; the best validation epoch is marked."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    if history and "train_loss" in history[0] and not pd.isna(history[0].get("train_loss")):
        h = pd.DataFrame(history)
        best = h.loc[h["val_accuracy"].idxmax()]
        for ax, key in zip(axes, ("loss", "accuracy")):
            ax.plot(h["epoch"], h[f"train_{key}"], "o-", ms=3, label="train")
            ax.plot(h["epoch"], h[f"val_{key}"], "o-", ms=3, label="validation")
            ax.axvline(best["epoch"], color="0.5", ls="--", lw=1, label=f"best val epoch ({int(best['epoch'])})")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(key)
            ax.set_title(key)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if len(h) > 1 and h["train_loss"].max() / max(h["train_loss"].min(), 1e-12) > 30:
            axes[0].set_yscale("log")  # a loss that falls by orders of magnitude is read on a log axis
        axes[1].set_ylim(top=1.01)  # a point at 100% stays visible
    else:  # non-iterative families (knn, features) report once: one bar per metric
        last = history[-1] if history else {}
        for ax, key in zip(axes, ("loss", "accuracy")):
            v = last.get(f"val_{key}", np.nan)
            ax.bar(["validation"], [0 if pd.isna(v) else v], width=0.4)
            ax.set_title(f"{key}: {v:.4f}" if not pd.isna(v) else key)
            ax.set_ylabel(key)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
