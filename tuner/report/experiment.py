"""plots/ of a results folder: learning curves, parameters, importance, rungs, then the Optuna-style search
plots (tuner/report/search.py). Reads only files, so it works on any finished experiment.

Plots are matplotlib (Agg) PNGs meant to be read by a person: a title that says what is shown, axes that
name the metric, the best trial marked, and no numbers drawn where there are too many to read.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from tuner.report.figures import save as _save, short as _short  # noqa: E402
from tuner.metrics import best_index, ranked as ranked_rows  # noqa: E402
from tuner.report.importance import importance  # noqa: E402
from tuner.report.search import metric_column  # noqa: E402
from tuner.rundir import RunDir  # noqa: E402
from tuner.search.schedulers import SCHEDULERS  # noqa: E402  (its flags; no Ray)
from tuner.spaces import Experiment, SchedulerConfig  # noqa: E402
from tuner.spaces.distributions import Conditional, Distribution  # noqa: E402


def searched_params(exp: Experiment) -> dict[str, Distribution]:
    """The parameters that were searched (`Experiment.searched`: in space: and not pinned by fixed:), each
    as one distribution for the plots' axes."""
    out: dict[str, Distribution] = {}
    _flatten(exp.searched, out)
    return out


def _flatten(space: dict, out: dict) -> None:
    """A conditional choice becomes a choice of its options, and each branch's parameters join the list; a
    name in several branches gets the union of their ranges (for the axes)."""
    for k, new in space.items():
        if isinstance(new, Conditional):
            out.setdefault(k, new.as_choice())
            for _, sub in new.options:
                _flatten(sub, out)
            continue
        if not isinstance(new, Distribution):
            continue  # a constant in a branch
        old = out.get(k)
        if old is None:
            out[k] = new
        elif old.is_categorical or new.is_categorical:
            out[k] = Distribution("choice", tuple(dict.fromkeys(old.args + new.args)))
        else:
            out[k] = Distribution(old.kind, (min(old.low, new.low), max(old.high, new.high)))


def ranked_trials(trials: pd.DataFrame, metric, mode) -> tuple[pd.DataFrame, str]:
    """Finished trials, best first, and the trials.csv column they are ranked by (the first objective's).
    The first is best.yaml's trial (`tuner.metrics.best_index`: feasible, on the Pareto front when `metric` is
    a list of objectives), the rest follow in `tuner.metrics.ranked`'s order."""
    metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric]
    modes = list(mode) if isinstance(mode, (list, tuple)) else [mode] * len(metrics)
    col = metric_column(trials, metrics[0], modes[0])
    order = ranked_rows(trials, col, modes[0])
    best = best_index(trials, metrics, modes, col)
    if best is not None:
        order = pd.concat([order.loc[[best]], order.drop(index=best)])
    return order, col


def experiment_plots(exp_dir: Path, top: int = 8) -> None:
    """plots/: learning_curves.png, parameters.png, importance.png, rungs.png from the results files."""
    run = RunDir(exp_dir)
    plots = run.plots
    plots.mkdir(exist_ok=True)
    trials = pd.read_csv(run.trials, dtype={"trial_id": str})
    epochs = pd.read_csv(run.epochs, dtype={"trial_id": str})
    exp = run.experiment()
    metrics, modes = exp.metrics, exp.modes
    mode = modes[0]  # several objectives: the plots follow the first
    ranked, col = ranked_trials(trials, metrics, modes)
    searched = searched_params(exp)
    name = exp.name
    plot_learning_curves(ranked, epochs, col, plots / "learning_curves.png", top=top, name=name)
    plot_parameters(ranked, searched, col, mode, plots / "parameters.png", name=name)
    imp = importance(ranked, searched, col, mode)
    plot_importance(imp, len(ranked), col, plots / "importance.png", name=name)
    plot_rungs(trials, exp.scheduler, plots / "rungs.png", name=name)
    # parallel coordinates, contour, history, intermediate values, Pareto front
    from tuner.report import search as search_plots

    search_plots.plot_search(trials, epochs, searched, metrics, modes, plots, name=name, importance=imp,
                             max_epochs=exp.scheduler.max_epochs,
                             best=str(ranked["trial_id"].iloc[0]) if len(ranked) else None)


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
        vals = ranked[k] if k in ranked else pd.Series([np.nan] * len(ranked), index=ranked.index)
        # a conditional branch's parameter is empty in the trials that drew another option: not plotted there
        has = vals.notna()
        best_has = bool(len(has)) and bool(has.iloc[0])
        vals, y, ep_k = vals[has], ranked[col][has], ep[has]
        x = _parameter_axis(ax, dist, vals, rng)
        sc = ax.scatter(x, y, c=ep_k if vmax > 1 else "tab:blue", cmap="viridis" if vmax > 1 else None,
                        vmin=0 if vmax > 1 else None, vmax=vmax if vmax > 1 else None, s=28, alpha=0.85,
                        edgecolors="none")
        if len(x) and best_has:
            ax.scatter(x[:1], y.iloc[:1], marker="*", s=220, c="red", edgecolors="black", lw=0.6, zorder=3,
                       label="best")
        ax.set_xlabel(f"{k}  ({dist.kind}{', log axis' if dist.log else ''})", fontsize=9)
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
        cax = fig.add_axes((0.935, 0.15, 0.012, 0.7))
        fig.colorbar(sc, cax=cax, label="epochs reached")
    _save(fig, path)
    return scales


def _parameter_axis(ax, dist, vals: pd.Series, rng: np.random.Generator) -> np.ndarray:
    """Set up `ax`'s x axis for a parameter searched with `dist` (a parsed `Distribution`); returns where the
    trials' values `vals` go on it (categories by index; jittered where values repeat)."""
    if dist.is_categorical:
        order = [str(v) for v in dist.args]
        cats = [str(v) for v in vals]
        order += sorted({c for c in cats if c not in order})
        x = np.array([order.index(c) for c in cats], dtype=float)
        x += rng.uniform(-0.12, 0.12, len(x))  # jitter so equal choices do not hide each other
        ax.set_xticks(range(len(order)), [_short(o, 16) for o in order], rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(order) - 0.5)
        return x
    x = pd.to_numeric(vals, errors="coerce").to_numpy(dtype=float)
    if dist.log:
        ax.set_xscale("log")
        # decades only: the minor labels (2x10^-4, 3x10^-4, ...) print over each other
        ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if dist.is_int:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if dist.high - dist.low <= 10:  # few values: jitter so equal values do not hide each other
            x = x + rng.uniform(-0.06, 0.06, len(x))
    return x


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


def rung_epochs(scheduler: SchedulerConfig) -> list[int]:
    """The milestones of a scheduler that stops trials at rungs (ASHA's flag `rungs`): grace_period *
    reduction_factor^k below max_epochs."""
    entry = SCHEDULERS.get(scheduler.name)
    if entry is None or not entry.rungs:
        return []
    rf, top = scheduler.reduction_factor, scheduler.max_epochs
    out: list[int] = []
    r = float(scheduler.grace_period)
    while r < top and rf > 1:
        out.append(int(round(r)))
        r *= rf
    return out


def plot_rungs(trials: pd.DataFrame, scheduler: SchedulerConfig, path: Path, name: str = "") -> None:
    """How far the trials got: trials still running at each epoch, with ASHA's rungs marked."""
    reached = pd.to_numeric(trials.get("epochs", pd.Series(dtype=float)), errors="coerce").fillna(0).astype(int)
    if len(reached) and reached.max() <= 1 and scheduler.max_epochs > 1:
        fig, ax = plt.subplots(figsize=(7, 2.5))
        ax.text(0.5, 0.5, f"{len(reached)} trials, each one evaluation: this family is not trained in epochs,\n"
                "so the scheduler had nothing to stop early", ha="center", va="center")
        ax.axis("off")
        ax.set_title(f"{name}: scheduler rungs", fontsize=10)
        _save(fig, path)
        return
    top = int(max(scheduler.max_epochs, reached.max() if len(reached) else 1))
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
    for axis in (ax.xaxis, ax.yaxis):  # matplotlib's default (AutoLocator), whole numbers only
        axis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    full = int((reached >= scheduler.max_epochs).sum())
    ax.set_title(f"{name}: {scheduler.name} scheduler, {len(reached)} trials, {full} ran all {scheduler.max_epochs} "
                 f"epochs", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
