"""Tables and plots from a results folder. Reads only files, so it works on any finished experiment.

Plots are matplotlib (Agg) PNGs meant to be read by a person: a title that says what is shown, axes that
name the metric, the best trial marked, and no numbers drawn where there are too many to read.
"""
from __future__ import annotations

import errno
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from tuner.errors import UserError
from tuner.report.importance import importance  # noqa: E402

METRIC_COLUMNS = ["accuracy", "loss", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
                  "recall_weighted", "f1_weighted", "balanced_accuracy", "auc_ovr", "tpr", "tnr", "fpr", "fnr",
                  "num_test", "num_params", "train_time_s"]
COMPARISON_COLUMNS = ["experiment", "family"] + METRIC_COLUMNS
FORMATS = ("md", "csv", "html", "tex")
INT_COLUMNS = ("num_test", "num_params")
NUMBERS_UP_TO = 30  # classes: past this a confusion matrix gets no per-cell numbers nor class names
DPI = 100
MAX_RESULT_BYTES = 16 << 20  # best.yaml, space.yaml, metrics.json are a few kB; more is not ours


# --------------------------------------------------------------------------- reading results
class CorruptResult(UserError):
    """A results file that cannot be read. `list` and `compare` skip its folder with a warning; `best` and
    the retrain stop on it (exit 2), naming the file and what to do."""


# what to do about each file, said once
_REDO = {
    "space.yaml": "it is the space the search ran; restore it from the space file, or remove the experiment folder",
    "best.yaml": "run the search again (`tuner search --resume` rewrites it), or remove the experiment folder",
    "trials.csv": "run the search again (`tuner search --resume` rewrites it), or remove the experiment folder",
    "metrics.json": "remove the best/ folder and run `tuner best --export` to retrain and test again",
    "ensemble.yaml": "run the suite again to rebuild the ensemble, or remove its folder",
}


def _corrupt(path: Path, why: str) -> CorruptResult:
    why = " ".join(str(why).split())[:200]  # one line, whatever the parser said
    return CorruptResult(f"{path}: cannot be read ({why}); {_REDO.get(path.name, 'remove or restore it')}")


def read_result(path: Path, need: tuple[str, ...] = ()) -> dict:
    """A results YAML or JSON file that must be a mapping holding the keys in `need`, or a CorruptResult."""
    from tuner.spaces import safe_yaml

    path = Path(path)
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            raise _corrupt(path, f"{path.stat().st_size} bytes, larger than any file tuner writes")
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text) if path.suffix == ".json" else safe_yaml(text)
    except CorruptResult:
        raise
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, UserError) as exc:
        raise _corrupt(path, exc) from None
    if not isinstance(data, dict):
        raise _corrupt(path, f"expected a mapping, found {type(data).__name__}")
    missing = [k for k in need if k not in data]
    if missing:
        raise _corrupt(path, f"no {', '.join(missing)}")
    return data


def read_best(exp_dir: Path) -> dict:
    """best.yaml: the best trial's `config` and validation `metrics`, both mappings."""
    path = Path(exp_dir) / "best.yaml"
    best = read_result(path, ("config", "metrics"))
    for key in ("config", "metrics"):
        if not isinstance(best[key], dict):
            raise _corrupt(path, f"{key} is not a mapping")
    return best


def read_trials(path: Path) -> pd.DataFrame:
    """trials.csv with its trial_id column, or a CorruptResult."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"trial_id": str})
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise _corrupt(path, exc) from None
    if "trial_id" not in df:
        raise _corrupt(path, "no trial_id column")
    return df


def warn(msg: str) -> None:
    """One `warning:` line on stderr: something was skipped, the command goes on."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# --------------------------------------------------------------------------- the retrained model
def test_report(out: Path, y_true: np.ndarray, proba: np.ndarray, class_names: list[str],
                history: list[dict] | None) -> None:
    """best/: confusion_matrix.csv/.png, classification_report.csv and (for a trained model) curves.png."""
    from sklearn.metrics import classification_report, confusion_matrix

    out = Path(out)
    k = len(class_names)
    pred = proba.argmax(1)
    cm = confusion_matrix(y_true, pred, labels=np.arange(k))
    pd.DataFrame(cm, index=class_names, columns=class_names).to_csv(out / "confusion_matrix.csv")
    rep = classification_report(y_true, pred, labels=np.arange(k), target_names=class_names, output_dict=True,
                                zero_division=0)
    pd.DataFrame(rep).T.to_csv(out / "classification_report.csv")
    plot_confusion(cm, class_names, out / "confusion_matrix.png")
    if history:
        plot_history(history, out / "curves.png", title="retrained best config")


def top_confusions(cm: np.ndarray, names: list[str], n: int = 15) -> list[tuple[str, str, int]]:
    """The n largest off-diagonal cells: (true, predicted, count), most frequent first."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1][:n]
    pairs = [np.unravel_index(i, off.shape) for i in flat]
    return [(names[i], names[j], int(off[i, j])) for i, j in pairs if off[i, j] > 0]


def _short(name: str, width: int = 26) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


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
        ax = fig.add_axes([0.06, 0.07, 0.58, 0.84])
        cax = fig.add_axes([0.655, 0.07, 0.012, 0.84])
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


# --------------------------------------------------------------------------- the search
def _space(exp_dir: Path) -> dict:
    return read_result(Path(exp_dir) / "space.yaml")


def searched_params(space: dict) -> dict[str, dict]:
    """The parameters that were searched (a distribution in space: and not pinned by fixed:)."""
    fixed = space.get("fixed") or {}
    out: dict[str, dict] = {}
    _flatten(space.get("space") or {}, out)
    return {k: v for k, v in out.items() if k not in fixed}


def _flatten(space: dict, out: dict) -> None:
    """A conditional choice ({choice: {option: {sub-space}}}) becomes a choice of its options, and each branch's
    parameters join the list; a name in several branches gets the union of their ranges (for the axes)."""
    for k, v in space.items():
        if not isinstance(v, dict) or len(v) != 1:
            continue
        kind, args = next(iter(v.items()))
        if kind == "choice" and isinstance(args, dict):
            out.setdefault(k, {"choice": list(args)})
            for sub in args.values():
                _flatten(sub or {}, out)
            continue
        if k not in out:
            out[k] = {kind: list(args)}
            continue
        old_kind, old = next(iter(out[k].items()))
        if old_kind in ("choice", "grid") or kind in ("choice", "grid"):
            out[k] = {"choice": list(dict.fromkeys(list(old) + list(args)))}
        else:
            out[k] = {old_kind: [min(old[0], args[0]), max(old[1], args[1])]}


def ranked_trials(trials: pd.DataFrame, metric: str, mode: str) -> tuple[pd.DataFrame, str]:
    """Finished trials, best first, and the trials.csv column they are ranked by."""
    col = metric if metric in ("val_accuracy", "val_loss") else ("val_loss" if mode == "min" else "val_accuracy")
    ok = trials[trials[col].notna()] if col in trials else trials.iloc[0:0]
    if "status" in ok:
        ok = ok[ok["status"] != "ERROR"]
    return ok.sort_values(col, ascending=(mode == "min"), kind="stable"), col


def experiment_plots(exp_dir: Path, top: int = 8) -> None:
    """plots/: learning_curves.png, parameters.png, importance.png, rungs.png from the results files."""
    exp_dir = Path(exp_dir)
    plots = exp_dir / "plots"
    plots.mkdir(exist_ok=True)
    trials = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    epochs = pd.read_csv(exp_dir / "epochs.csv", dtype={"trial_id": str})
    space = _space(exp_dir)
    metric, mode = space.get("metric", "val_accuracy"), space.get("mode", "max")
    if isinstance(metric, list):  # several objectives: the plots rank by the first
        metric, mode = metric[0], (mode[0] if isinstance(mode, list) else mode)
    ranked, col = ranked_trials(trials, metric, mode)
    searched = searched_params(space)
    name = space.get("name", exp_dir.name)
    plot_learning_curves(ranked, epochs, col, plots / "learning_curves.png", top=top, name=name)
    plot_parameters(ranked, searched, col, mode, plots / "parameters.png", name=name)
    imp = importance(ranked, searched, col, mode)
    plot_importance(imp, len(ranked), col, plots / "importance.png", name=name)
    plot_rungs(trials, space.get("scheduler") or {}, plots / "rungs.png", name=name)
    from tuner.report import search as search_plots  # parallel coordinates, contour, history, intermediate values, Pareto front

    search_plots.plot_search(trials, epochs, searched, metric, mode, plots, name=name, importance=imp,
                             max_epochs=(space.get("scheduler") or {}).get("max_epochs"))


def plot_learning_curves(ranked: pd.DataFrame, epochs: pd.DataFrame, col: str, path: Path, top: int = 8,
                         name: str = "") -> None:
    best = ranked.head(top)
    if len(epochs) and pd.to_numeric(epochs["epoch"], errors="coerce").max() <= 1:
        return _plot_one_shot(best, len(ranked), col, path, name)
    keys = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(best), 1)))
    for rank, (tid, score, color) in enumerate(zip(best["trial_id"], best[col], colors), 1):
        e = epochs[epochs["trial_id"] == tid].sort_values("epoch")
        for ax, key in zip(axes.flat, keys):
            ax.plot(e["epoch"], e[key], marker="o", ms=3, lw=2.2 if rank == 1 else 1.2, color=color,
                    label=f"#{rank} {tid}  {col} {score:.4f}")
    for ax, key in zip(axes.flat, keys):
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.set_ylabel(key.split("_")[1])
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(best):
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8, title=f"top {len(best)} trials")
    fig.suptitle(f"{name}: learning curves of the top {len(best)} of {len(ranked)} finished trials")
    fig.tight_layout(rect=(0, 0, 0.8 if len(best) else 1, 1))
    _save(fig, path)


def _plot_one_shot(best: pd.DataFrame, n: int, col: str, path: Path, name: str) -> None:
    """Non-iterative families (knn, features) evaluate once: no curve, the top trials' validation scores."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.8 + 0.42 * max(len(best), 2)))
    labels = [f"#{r} {t}" for r, t in enumerate(best["trial_id"], 1)][::-1]
    for ax, key in zip(axes, ("val_accuracy", "val_loss")):
        vals = best[key].to_numpy(dtype=float)[::-1]
        ax.barh(labels, vals, color="tab:blue")
        lo, hi = np.nanmin(vals) if len(vals) else 0, np.nanmax(vals) if len(vals) else 1
        pad = max((hi - lo) * 0.6, 1e-3)
        ax.set_xlim(max(lo - pad, 0), hi + pad)  # zoomed: the top trials differ in the third decimal
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.4f}", va="center", fontsize=8)
        ax.set_xlabel(key)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{name}: one evaluation a trial (no epochs); the top {len(best)} of {n} finished trials by {col}")
    fig.tight_layout()
    _save(fig, path)


def plot_parameters(ranked: pd.DataFrame, searched: dict, col: str, mode: str, path: Path,
                    name: str = "") -> dict[str, str]:
    """Each searched parameter against the metric; colour = epochs the trial reached, star = best trial.
    Returns each parameter's x scale ('log' for log distributions), which the tests check."""
    n = max(len(searched), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.8 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    ep = ranked["epochs"] if "epochs" in ranked else pd.Series(1, index=ranked.index)
    vmax = max(float(ep.max()) if len(ep) else 1.0, 1.0)
    sc = None
    scales: dict[str, str] = {}
    for ax, (k, dist) in zip(axes.flat, searched.items()):
        kind = next(iter(dist))
        vals = ranked[k] if k in ranked else pd.Series([np.nan] * len(ranked), index=ranked.index)
        # a conditional branch's parameter is empty in the trials that drew another option: not plotted there
        has = vals.notna()
        best_has = bool(len(has)) and bool(has.iloc[0])
        vals, y, ep_k = vals[has], ranked[col][has], ep[has]
        if kind in ("choice", "grid"):
            order = [str(v) for v in next(iter(dist.values()))]
            cats = [str(v) for v in vals]
            order += sorted({c for c in cats if c not in order})
            x = np.array([order.index(c) for c in cats], dtype=float)
            x += rng.uniform(-0.12, 0.12, len(x))  # jitter so equal choices do not hide each other
            ax.set_xticks(range(len(order)), [_short(o, 16) for o in order], rotation=20, ha="right", fontsize=8)
            ax.set_xlim(-0.5, len(order) - 0.5)
        else:
            x = pd.to_numeric(vals, errors="coerce").to_numpy(dtype=float)
            if kind in ("loguniform", "logint"):
                ax.set_xscale("log")
                # decades only: the minor labels (2x10^-4, 3x10^-4, ...) print over each other
                ax.xaxis.set_major_locator(LogLocator(base=10))
                ax.xaxis.set_minor_formatter(NullFormatter())
            if kind in ("int", "logint"):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                lo, hi = next(iter(dist.values()))[:2]
                if hi - lo <= 10:  # few values: jitter so trials with the same value do not hide each other
                    x = x + rng.uniform(-0.06, 0.06, len(x))
        sc = ax.scatter(x, y, c=ep_k if vmax > 1 else "tab:blue", cmap="viridis" if vmax > 1 else None,
                        vmin=0 if vmax > 1 else None, vmax=vmax if vmax > 1 else None, s=28, alpha=0.85,
                        edgecolors="none")
        if len(x) and best_has:
            ax.scatter(x[:1], y.iloc[:1], marker="*", s=220, c="red", edgecolors="black", lw=0.6, zorder=3,
                       label="best")
        ax.set_xlabel(f"{k}  ({kind}{', log axis' if kind in ('loguniform', 'logint') else ''})", fontsize=9)
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
        scales[k] = ax.get_xscale()
    if not searched:
        axes.flat[0].text(0.5, 0.5, "no searched parameters", ha="center", va="center")
    for ax in list(axes.flat)[len(searched):]:
        ax.axis("off")
    fig.suptitle(f"{name}: each searched parameter against {col} ({len(ranked)} finished trials, "
                 f"{'higher' if mode == 'max' else 'lower'} is better)")
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    if sc is not None and vmax > 1:  # one evaluation a trial: every point reached 1 epoch, no colour scale
        cax = fig.add_axes([0.935, 0.15, 0.012, 0.7])
        fig.colorbar(sc, cax=cax, label="epochs reached")
    _save(fig, path)
    return scales


def plot_importance(imp: dict[str, float], n_trials: int, col: str, path: Path, name: str = "") -> None:
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.45 * max(len(imp), 2)))
    if imp:
        names = list(imp)[::-1]  # most important on top
        vals = [imp[n] for n in names]
        ax.barh(names, vals, color="tab:blue")
        for i, v in enumerate(vals):
            ax.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=9)
        ax.set_xlim(0, max(max(vals) * 1.15, 0.1))
        ax.set_xlabel(f"importance for {col} (Optuna fANOVA; shares sum to 1)")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.text(0.5, 0.5, f"{n_trials} finished trials: too few (or nothing searched) to rank parameters",
                ha="center", va="center")
        ax.axis("off")
    ax.set_title(f"{name}: parameter importance over {n_trials} finished trials", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def rung_epochs(scheduler: dict) -> list[int]:
    """ASHA's milestones: grace_period * reduction_factor^k below max_epochs."""
    if scheduler.get("name") != "asha":
        return []
    grace, rf, top = scheduler.get("grace_period", 1), scheduler.get("reduction_factor", 3), scheduler.get("max_epochs", 1)
    out, r = [], float(grace)
    while r < top and rf > 1:
        out.append(int(round(r)))
        r *= rf
    return out


def plot_rungs(trials: pd.DataFrame, scheduler: dict, path: Path, name: str = "") -> None:
    """How far the trials got: trials still running at each epoch, with ASHA's rungs marked."""
    reached = pd.to_numeric(trials.get("epochs", pd.Series(dtype=float)), errors="coerce").fillna(0).astype(int)
    if len(reached) and reached.max() <= 1 and scheduler.get("max_epochs", 1) > 1:
        fig, ax = plt.subplots(figsize=(7, 2.5))
        ax.text(0.5, 0.5, f"{len(reached)} trials, each one evaluation: this family is not trained in epochs,\n"
                "so the scheduler had nothing to stop early", ha="center", va="center")
        ax.axis("off")
        ax.set_title(f"{name}: scheduler rungs", fontsize=10)
        _save(fig, path)
        return
    top = int(max(scheduler.get("max_epochs", 1), reached.max() if len(reached) else 1))
    ep = np.arange(1, top + 1)
    alive = [(reached >= e).sum() for e in ep]
    stopped = [(reached == e).sum() for e in ep]
    fig, ax = plt.subplots(figsize=(max(7, min(0.35 * top + 4, 14)), 4.2))
    ax.bar(ep, alive, color="tab:blue", alpha=0.75, label="trials that reached this epoch")
    some = [(e, s) for e, s in zip(ep, stopped) if s]
    ax.plot([e for e, _ in some], [s for _, s in some], "o", color="tab:red", ms=6,
            label="trials that stopped at this epoch")
    height = max(alive + [1])
    for i, r in enumerate(rung_epochs(scheduler)):
        ax.axvline(r + 0.5, color="0.3", ls="--", lw=1)
        ax.text(r + 0.55, height * 1.08, f"rung {i}: epoch {r}", fontsize=8, va="center")
    ax.set_ylim(0, height * 1.35)  # room for the rung labels and the legend above the bars
    ax.set_xlabel("epoch")
    ax.set_ylabel("trials")
    ax.set_xlim(0.4, top + 0.6)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    sched = scheduler.get("name", "fifo")
    full = int((reached >= scheduler.get("max_epochs", top)).sum())
    ax.set_title(f"{name}: {sched} scheduler, {len(reached)} trials, {full} ran all {scheduler.get('max_epochs', top)} "
                 f"epochs", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


# --------------------------------------------------------------------------- comparison
def _family(d: Path) -> str:
    for f in ("space.yaml", "ensemble.yaml"):
        if (d / f).is_file():
            return str(read_result(d / f).get("family", ""))
    return ""


def comparison_rows(results: Path, names: list[str] | None = None,
                    skip: Callable[[str], None] = warn) -> pd.DataFrame:
    """One row an experiment with a retrained model (best/metrics.json), best test accuracy first.
    A folder whose files cannot be read is left out and `skip` is told why, so one bad folder does not
    take the table away for all the others."""
    results = Path(results)
    rows = []
    dirs = [results / n for n in names] if names else sorted(p for p in results.iterdir() if p.is_dir())
    for d in dirs:
        m = d / "best" / "metrics.json"
        if not m.is_file():
            continue
        try:
            metrics = read_result(m)
            row = {"experiment": d.name, "family": _family(d), **{k: _number(metrics.get(k)) for k in METRIC_COLUMNS}}
        except CorruptResult as exc:
            skip(f"{exc}; {d.name} left out of the table")
            continue
        rows.append(row)
    df = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for c in METRIC_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    # ties on accuracy go to the lower test loss
    return df.sort_values(["accuracy", "loss"], ascending=[False, True], na_position="last",
                          kind="stable").reset_index(drop=True)


def _number(v: Any) -> float | None:
    """A metric as a float, or None for anything a hand-edited file may hold instead (text, lists, ...)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def rounded(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers for reading: rates to 4 places, times to 0.1 s, counts as integers."""
    out = df.copy().astype(object)
    for c in df.columns:
        if c in INT_COLUMNS:
            out[c] = [None if pd.isna(v) else int(v) for v in df[c]]
        elif c == "train_time_s":
            out[c] = [None if pd.isna(v) else round(float(v), 1) for v in df[c]]
        elif c in METRIC_COLUMNS:
            out[c] = [None if pd.isna(v) else round(float(v), 4) for v in df[c]]
    return out


def write_comparison(results: Path, names: list[str] | None = None, fmt: str | None = None) -> pd.DataFrame:
    """results/comparison.md and comparison.csv (always), and comparison.html/.tex when fmt asks for it."""
    results = Path(results)
    df = comparison_rows(results, names)
    if df.empty:  # nothing retrained: keep whatever table is there rather than write an empty one
        return df
    for f in {"md", "csv", fmt or "md"}:
        path = results / f"comparison.{f}"
        try:
            path.write_text(render(df, f) + "\n")
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # the CLI says "disk full" for every write in one place
                raise
            raise UserError(f"{path}: cannot write the comparison table ({exc.strerror}); "
                            f"make {results} writable") from None
    return df


def _cell(col: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if col == "train_time_s":
        return f"{float(v):.1f}"
    if col in INT_COLUMNS:
        return str(int(v))
    if col in METRIC_COLUMNS:
        return f"{float(v):.4f}"
    return str(v)


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    r = rounded(df)
    return pd.DataFrame({c: [_cell(c, v) for v in r[c]] for c in r.columns}, columns=list(r.columns))


def to_markdown(df: pd.DataFrame) -> str:
    shown = _cells(df)
    head = "| " + " | ".join(shown.columns) + " |"
    sep = "|" + "|".join("---:" if c in METRIC_COLUMNS else "---" for c in shown.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def render(df: pd.DataFrame, fmt: str) -> str:
    """The comparison table as md, csv, html or tex, numbers rounded for reading."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}; one of {FORMATS}")
    if fmt == "md":
        return to_markdown(df)
    if fmt == "csv":  # still numbers (no padding), so scripts can read it back
        return rounded(df).to_csv(index=False).rstrip()
    shown = _cells(df)
    if fmt == "html":
        return shown.to_html(index=False, border=0, classes="comparison")
    # tex: a booktabs tabular; underscores in names and headers are escaped for LaTeX
    return shown.to_latex(index=False, escape=True, column_format="ll" + "r" * len(METRIC_COLUMNS)).rstrip()
