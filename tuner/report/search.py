"""Plots of the search itself, in the manner of Optuna's visualisations, drawn from the results files alone.

    parallel_coordinates.png  every searched parameter and the metric, one line a trial
    contour.png               the metric over the two most important parameters
    history.png               best so far against trial number and against time
    intermediate.png          every trial's per-epoch metric; trials a scheduler stopped end in a cross
    pareto.png (+ pareto.csv) the non-dominated trials of a multi-objective search

Inputs are the DataFrames of trials.csv and epochs.csv, the searched parameters as space.yaml writes them
(`{name: Distribution}`, see `report.experiment.searched_params`) and the metric(s) and mode(s). A plot that has
nothing to show is not written: no contour with fewer than two searched parameters, no intermediate
values for families that evaluate once (knn, features).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.tri as mtri  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tuner.atomic import write_text  # noqa: E402
from tuner.metrics import best_index, pareto_front, ranked  # noqa: E402
from tuner.report.figures import save, short  # noqa: E402
from tuner.spaces.distributions import Distribution  # noqa: E402





def metric_column(trials: pd.DataFrame, metric: str, mode: str) -> str:
    """The trials.csv column a metric is read from: its own, else the validation score the mode points to
    (trials.csv keeps val_accuracy and val_loss of each trial's best epoch)."""
    if metric in trials.columns:
        return metric
    return "val_loss" if mode == "min" else "val_accuracy"


def _finite(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)


# --------------------------------------------------------------------------- one axis a parameter
@dataclass
class Axis:
    """Where each trial sits on one parameter's axis, in plot units (log10 for log distributions, the
    option's index for categorical ones; NaN where the trial has no value), and how to label it."""

    name: str
    pos: np.ndarray
    lo: float
    hi: float
    ticks: list[float]
    labels: list[str]
    categorical: bool
    log: bool

    @property
    def title(self) -> str:
        return self.name + (" (log)" if self.log else "")

    def unit(self, pos: np.ndarray) -> np.ndarray:
        """Positions scaled to 0..1 (a one-value axis sits in the middle)."""
        return (pos - self.lo) / (self.hi - self.lo) if self.hi > self.lo else np.full_like(pos, 0.5)


def _category(value, order: list[str]) -> str | None:
    """A trials.csv cell as one of a choice's options (written with str()); 32.0 read back from a column with
    gaps still matches the option 32."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    s = str(value)
    if s in order:
        return s
    try:
        f = float(value)
        return next((o for o in order if _is_number(o) and float(o) == f), s)
    except (TypeError, ValueError):
        return s


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def param_axis(name: str, dist: Distribution, values: pd.Series) -> Axis:
    if dist.is_categorical:
        order = [str(v) for v in dist.args]  # a choice's values, or a conditional choice's options
        cats = [_category(v, order) for v in values]
        order += sorted({c for c in cats if c is not None and c not in order})
        pos = np.array([np.nan if c is None else order.index(c) for c in cats], dtype=float)
        return Axis(name, pos, 0.0, float(len(order) - 1), list(range(len(order))), [short(o, 18) for o in order],
                    categorical=True, log=False)
    x = _finite(values)
    lo, hi = float(dist.low), float(dist.high)
    log = dist.log
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(x > 0, np.log10(x), np.nan)
        lo, hi = np.log10(lo), np.log10(hi)
        ticks = [float(t) for t in range(int(np.ceil(lo)), int(np.floor(hi)) + 1)]
        if len(ticks) < 2:  # less than two decades: label the ends too
            ticks = sorted(set(ticks) | {lo, hi})
        labels = [f"{10 ** t:.3g}" for t in ticks]
    else:
        ticks = [float(t) for t in MaxNLocator(5, integer=dist.is_int).tick_values(lo, hi) if lo <= t <= hi]
        labels = [f"{t:.4g}" for t in ticks]
    return Axis(name, x, lo, hi, ticks, labels, categorical=False, log=log)


def metric_axis(name: str, y: np.ndarray) -> Axis:
    ok = y[np.isfinite(y)]
    lo, hi = (float(ok.min()), float(ok.max())) if len(ok) else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * max(abs(lo) * 0.01, 1e-3), hi + 0.5 * max(abs(hi) * 0.01, 1e-3)
    ticks = [float(t) for t in MaxNLocator(5).tick_values(lo, hi) if lo <= t <= hi]
    return Axis(name, y, lo, hi, ticks, [f"{t:.4g}" for t in ticks], categorical=False, log=False)


def _cmap(mode: str):
    return "viridis" if mode == "max" else "viridis_r"  # the better trials are the bright ones either way


def _best_position(trials: pd.DataFrame, col: str, mode: str, best: str | None = None) -> int | None:
    """The row position of the best trial: `best` (best.yaml's trial id, which plot_search is given), else the
    first of `tuner.metrics.ranked`, the order best.yaml follows; None when no trial finished."""
    if best is None:
        order = ranked(trials, col, mode)
        best = str(order["trial_id"].iloc[0]) if len(order) else None
    if best is None:
        return None
    hits = np.flatnonzero(trials["trial_id"].astype(str).to_numpy() == best)
    return int(hits[0]) if len(hits) else None


def _better(mode: str) -> str:
    return "higher is better" if mode == "max" else "lower is better"


# --------------------------------------------------------------------------- parallel coordinates
def plot_parallel_coordinates(trials: pd.DataFrame, searched: dict, col: str, mode: str, path: Path,
                              name: str = "", best: str | None = None) -> Path:
    params = [k for k in searched if k in trials.columns]
    y = _finite(trials[col]) if col in trials else np.full(len(trials), np.nan)
    axes = [param_axis(k, searched[k], trials[k]) for k in params] + [metric_axis(col, y)]
    n = len(axes)
    fig, ax = plt.subplots(figsize=(max(12.0, 2.3 * n + 2), 7.0))
    xs = np.arange(n)
    rng = np.random.default_rng(0)
    cols = []
    for a in axes:
        u = a.unit(a.pos)
        if a.categorical and a.hi > a.lo:  # spread equal options a little so the lines stay countable
            u = u + rng.uniform(-0.02, 0.02, len(u))
        cols.append(u)
    lines = np.column_stack(cols) if cols else np.zeros((len(trials), 0))
    ok = np.isfinite(y)
    norm = plt.Normalize(*(axes[-1].lo, axes[-1].hi))
    cmap = plt.get_cmap(_cmap(mode))
    order = np.argsort(y[ok] if mode == "max" else -y[ok])  # the best drawn last, on top
    for i in np.flatnonzero(~ok):
        ax.plot(xs, lines[i], color="0.6", lw=1, ls="--", alpha=0.7)
    for i in np.flatnonzero(ok)[order]:
        ax.plot(xs, lines[i], color=cmap(norm(y[i])), lw=1.4, alpha=0.85)
    pos = _best_position(trials, col, mode, best)
    if pos is not None:
        ax.plot(xs, lines[pos], color="red", lw=3, label=f"best trial {trials['trial_id'].iloc[pos]}")
    for x, a in zip(xs, axes):
        ax.axvline(float(x), color="black", lw=1)
        for t, lab in zip(a.ticks, a.labels):
            ty = float(a.unit(np.array([t]))[0])
            ax.plot([x - 0.02, x], [ty, ty], color="black", lw=1)
            ax.text(x - 0.04, ty, lab, ha="right", va="center", fontsize=9,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})
    ax.set_xticks(xs, [a.title for a in axes], fontsize=11)
    ax.set_xlim(-0.6, n - 0.6)
    ax.set_ylim(-0.06, 1.06)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    handles = [Line2D([], [], color="red", lw=3, label="best trial")]
    if (~ok).any():
        handles.append(Line2D([], [], color="0.6", ls="--", label=f"failed or no {col} ({int((~ok).sum())})"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, -0.07), ncol=2, fontsize=10, frameon=False)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.025, pad=0.01, label=col)
    ax.set_title(f"{name}: parallel coordinates of {len(trials)} trials, coloured by {col} ({_better(mode)})")
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------------- contour
def contour_params(searched: dict, importance: dict[str, float] | None, trials: pd.DataFrame) -> list[str]:
    """The two most important searched parameters (importance order, then the space's order)."""
    present = [k for k in searched if k in trials.columns]
    ranked = [k for k in (importance or {}) if k in present]
    return (ranked + [k for k in present if k not in ranked])[:2]


def plot_contour(trials: pd.DataFrame, searched: dict, col: str, mode: str, path: Path, name: str = "",
                 importance: dict[str, float] | None = None, best: str | None = None) -> Path | None:
    """The metric interpolated (linearly, over a Delaunay triangulation of the trials) across the two most
    important parameters, the trials on top. None (no file) when fewer than two parameters were searched."""
    pair = contour_params(searched, importance, trials)
    if len(pair) < 2:
        return None
    ax_x, ax_y = (param_axis(k, searched[k], trials[k]) for k in pair)
    z = _finite(trials[col]) if col in trials else np.full(len(trials), np.nan)
    rng = np.random.default_rng(0)
    x, y = ax_x.pos.copy(), ax_y.pos.copy()
    # categorical options are points on a line; a little spread keeps the triangulation from degenerating
    if ax_x.categorical:
        x = x + rng.uniform(-0.15, 0.15, len(x))
    if ax_y.categorical:
        y = y + rng.uniform(-0.15, 0.15, len(y))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    fig, ax = plt.subplots(figsize=(11, 8))
    cmap = _cmap(mode)
    filled = None
    if ok.sum() >= 4:
        try:
            tri = mtri.Triangulation(x[ok], y[ok])
            filled = ax.tricontourf(tri, z[ok], levels=14, cmap=cmap, alpha=0.85)
        except (ValueError, RuntimeError):  # collinear or repeated points: the scatter alone says it
            filled = None
    sc = ax.scatter(x[ok], y[ok], c=z[ok], cmap=cmap, s=45, edgecolors="black", linewidths=0.6, zorder=3)
    pos = _best_position(trials, col, mode, best)
    if pos is not None and ok[pos]:  # (a trial that did not draw one of the two parameters is not on it)
        ax.scatter([x[pos]], [y[pos]], marker="*", s=380, c="red", edgecolors="black", lw=0.8, zorder=4,
                   label=f"best: {col} {z[pos]:.4g}")
        ax.legend(loc="best", fontsize=10)
    fig.colorbar(filled if filled is not None else sc, ax=ax, label=col)
    for a, setter, lim in ((ax_x, ax.set_xticks, ax.set_xlim), (ax_y, ax.set_yticks, ax.set_ylim)):
        setter(a.ticks, a.labels)
        pad = 0.5 if a.categorical else 0.03 * max(a.hi - a.lo, 1e-9)
        lim(a.lo - pad, a.hi + pad)
    ax.set_xlabel(ax_x.title)
    ax.set_ylabel(ax_y.title)
    why = "the two most important parameters" if importance else "the first two searched parameters"
    note = "" if filled is not None else " (too few distinct trials to interpolate: trials only)"
    ax.set_title(f"{name}: {col} over {why}, {int(ok.sum())} finished trials{note}")
    ax.grid(alpha=0.25)
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------------- history
def trial_end_times(trials: pd.DataFrame, epochs: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Each trial's end in seconds since the search began, and the axis label that says how it was found.

    With a `timestamp` column in epochs.csv (Ray reports one per epoch) that is wall time. Without one, the
    trials' own times (trials.csv time_s) are added up in trial order: the wall time when trials run one
    at a time, an upper bound when they run side by side.
    """
    if "timestamp" in epochs.columns and epochs["timestamp"].notna().any():
        ts = pd.to_numeric(epochs["timestamp"], errors="coerce")
        took = pd.to_numeric(epochs.get("time_s", 0), errors="coerce").fillna(0)
        start = float((ts - took).min())
        end = ts.groupby(epochs["trial_id"].astype(str)).max()
        t = np.array([end.get(str(tid), np.nan) - start for tid in trials["trial_id"]], dtype=float)
        return t, "wall time since the search began (s)"
    took = _finite(trials["time_s"]) if "time_s" in trials else np.zeros(len(trials))
    return np.cumsum(np.nan_to_num(took)), "trial time, summed in trial order (s)"


def best_so_far(y: np.ndarray, mode: str) -> np.ndarray:
    """Running best of y (NaN, a failed trial, never counts); NaN until the first finished trial."""
    out = np.full(len(y), np.nan)
    best = np.nan
    for i, v in enumerate(y):
        if np.isfinite(v) and (np.isnan(best) or (v > best if mode == "max" else v < best)):
            best = v
        out[i] = best
    return out


def plot_history(trials: pd.DataFrame, epochs: pd.DataFrame, col: str, mode: str, path: Path,
                 name: str = "") -> Path:
    y = _finite(trials[col]) if col in trials else np.full(len(trials), np.nan)
    n = np.arange(1, len(trials) + 1)
    t, t_label = trial_end_times(trials, epochs)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), sharey=True)
    ok = np.isfinite(y)
    lo = float(np.nanmin(y)) if ok.any() else 0.0
    hi = float(np.nanmax(y)) if ok.any() else 1.0
    floor = lo - 0.05 * max(hi - lo, 1e-3)
    for ax, x, label in ((axes[0], n.astype(float), "trial number"), (axes[1], t, t_label)):
        order = np.argsort(np.nan_to_num(x, nan=np.inf), kind="stable")
        xs, ys = x[order], y[order]
        ax.scatter(xs[np.isfinite(ys)], ys[np.isfinite(ys)], s=36, color="tab:blue", alpha=0.8,
                   label=f"trial's {col}")
        run = best_so_far(ys, mode)
        ax.step(xs, run, where="post", color="tab:red", lw=2.2, label="best so far")
        bad = ~np.isfinite(ys) & np.isfinite(xs)
        if bad.any():
            ax.plot(xs[bad], np.full(bad.sum(), floor), "x", color="black", ms=8, mew=1.5,
                    label=f"failed trial ({int(bad.sum())})")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=10, loc="best")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel(f"{col} ({_better(mode)})")
    axes[0].set_title("against trial number")
    axes[1].set_title("against time")
    fig.suptitle(f"{name}: optimisation history, {int(ok.sum())} of {len(trials)} trials finished")
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------------- intermediate values
def plot_intermediate(trials: pd.DataFrame, epochs: pd.DataFrame, col: str, mode: str, path: Path,
                      name: str = "", max_epochs: int | None = None, best: str | None = None) -> Path | None:
    """Every trial's per-epoch metric. A trial that ended before max_epochs (stopped by the scheduler or by
    early stopping) ends in an orange cross, a failed one is dashed. None (no file) when the family
    evaluates once (knn, features): there are no intermediate values."""
    if epochs.empty or col not in epochs:
        return None
    ep = pd.to_numeric(epochs["epoch"], errors="coerce")
    if not (ep.max() > 1):
        return None
    top = int(max(max_epochs or 0, ep.max()))
    status = dict(zip(trials["trial_id"].astype(str), trials.get("status", pd.Series(["TERMINATED"] * len(trials)))))
    pos = _best_position(trials, metric_column(trials, col, mode), mode, best)
    best_id = str(trials["trial_id"].iloc[pos]) if pos is not None else None
    fig, ax = plt.subplots(figsize=(13, 7))
    counts = {"full": 0, "stopped": 0, "failed": 0}
    groups = epochs.assign(epoch=ep).groupby(epochs["trial_id"].astype(str), sort=False)
    for tid, e in groups:
        e = e.sort_values("epoch")
        x, v = e["epoch"].to_numpy(dtype=float), _finite(e[col])
        if status.get(tid) == "ERROR":
            counts["failed"] += 1
            ax.plot(x, v, color="tab:gray", ls="--", lw=1, alpha=0.8)
        elif x.max() < top:
            counts["stopped"] += 1
            ax.plot(x, v, color="tab:orange", lw=1.2, alpha=0.75)
            ax.plot(x[-1:], v[-1:], "x", color="tab:orange", ms=9, mew=2)
        else:
            counts["full"] += 1
            ax.plot(x, v, color="tab:blue", lw=1.4, alpha=0.8)
    if best_id in groups.groups:
        e = groups.get_group(best_id).sort_values("epoch")
        ax.plot(e["epoch"], _finite(e[col]), color="red", lw=3, marker="o", ms=4, zorder=5)
    handles = [Line2D([], [], color="tab:blue", lw=1.4, label=f"ran all {top} epochs ({counts['full']})"),
               Line2D([], [], color="tab:orange", marker="x", mew=2, label=f"stopped early ({counts['stopped']})")]
    if counts["failed"]:
        handles.append(Line2D([], [], color="tab:gray", ls="--", label=f"failed ({counts['failed']})"))
    if best_id in groups.groups:
        handles.append(Line2D([], [], color="red", lw=3, label=f"best trial {best_id}"))
    ax.legend(handles=handles, fontsize=10, loc="lower right" if mode == "max" else "upper right")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{col} ({_better(mode)})")
    ax.set_xlim(0.8, top + 0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_title(f"{name}: intermediate values of {len(groups)} trials (the scheduler sees these)")
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------------- Pareto front
def write_pareto(trials: pd.DataFrame, objectives: list[str], modes: list[str], exp_dir: Path,
                 name: str = "") -> pd.DataFrame:
    """exp_dir/pareto.csv (the front's rows of trials.csv, as `tuner.metrics.pareto_front` finds them) and
    exp_dir/plots/pareto.png."""
    exp_dir = Path(exp_dir)
    (exp_dir / "plots").mkdir(parents=True, exist_ok=True)
    front = pareto_front(trials, objectives, modes)
    write_text(exp_dir / "pareto.csv", front.to_csv(index=False))
    plot_pareto(trials, front, objectives, modes, exp_dir / "plots" / "pareto.png", name=name)
    return front


def plot_pareto(trials: pd.DataFrame, front: pd.DataFrame, objectives: list[str], modes: list[str], path: Path,
                name: str = "") -> Path:
    """Every pair of objectives: all finished trials, the front highlighted and joined in order."""
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    cols = min(len(pairs), 3)
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(11.0, 6.5 * cols), 7.0 * rows), squeeze=False)
    on_front = trials["trial_id"].astype(str).isin(front["trial_id"].astype(str))
    infeasible = ~trials["feasible"].astype(str).str.lower().isin(("true", "1", "1.0")) if "feasible" in trials \
        else pd.Series(False, index=trials.index)
    for ax, (i, j) in zip(axes.flat, pairs):
        a, b = objectives[i], objectives[j]
        x, y = _finite(trials[a]), _finite(trials[b])
        rest = ~on_front.to_numpy() & ~infeasible.to_numpy()
        ax.scatter(x[rest], y[rest], s=40, color="tab:blue", alpha=0.6, label="dominated trials")
        if infeasible.any():
            ax.scatter(x[infeasible], y[infeasible], s=40, marker="x", color="0.5", label="infeasible (constraints)")
        fx, fy = _finite(front[a]), _finite(front[b])
        order = np.argsort(fx, kind="stable")
        if len(pairs) == 1:  # with two objectives the front is a staircase through the corners it dominates
            ax.step(fx[order], fy[order], where="post" if modes[i] == "min" else "pre",
                    color="red", lw=1.5, alpha=0.7)
        ax.scatter(fx, fy, s=110, color="red", edgecolors="black", zorder=3, label=f"Pareto front ({len(front)})")
        if len(front) <= 12:
            for tid, px, py in zip(front["trial_id"].astype(str), fx, fy):
                ax.annotate(tid, (px, py), textcoords="offset points", xytext=(6, 6), fontsize=9)
        ax.set_xlabel(f"{a} ({_better(modes[i])})")
        ax.set_ylabel(f"{b} ({_better(modes[j])})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=10)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.suptitle(f"{name}: Pareto front of {len(front)} of {len(trials)} trials over {', '.join(objectives)}")
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------------- all of them
def plot_search(trials: pd.DataFrame, epochs: pd.DataFrame, searched: dict, metric, mode, plots: Path,
                name: str = "", importance: dict[str, float] | None = None,
                max_epochs: int | None = None, best: str | None = None) -> dict[str, Path]:
    """Every plot above into `plots/` (pareto.csv beside it, in the experiment folder, when `metric` is a list).
    Returns the files written; the single-objective plots follow the first objective, and mark `best` (a
    trial id; by default best.yaml's choice, `tuner.metrics.best_index`) as the best trial."""
    plots = Path(plots)
    plots.mkdir(parents=True, exist_ok=True)
    metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric]
    modes = list(mode) if isinstance(mode, (list, tuple)) else [mode] * len(metrics)
    col, first_mode = metric_column(trials, metrics[0], modes[0]), modes[0]
    if best is None:
        i = best_index(trials, metrics, modes, col)
        best = None if i is None else str(trials.at[i, "trial_id"])
    if importance is None:
        from tuner.report.importance import importance as fanova

        importance = fanova(trials[trials["status"] != "ERROR"] if "status" in trials else trials, searched, col,
                            first_mode)
    out = {"parallel_coordinates": plot_parallel_coordinates(trials, searched, col, first_mode,
                                                             plots / "parallel_coordinates.png", name, best),
           "contour": plot_contour(trials, searched, col, first_mode, plots / "contour.png", name, importance, best),
           "history": plot_history(trials, epochs, col, first_mode, plots / "history.png", name),
           "intermediate": plot_intermediate(trials, epochs, col if col in epochs else
                                             metric_column(epochs, metrics[0], first_mode), first_mode,
                                             plots / "intermediate.png", name, max_epochs, best)}
    if len(metrics) > 1:
        write_pareto(trials, metrics, modes, plots.parent, name)
        out["pareto"] = plots / "pareto.png"
    return {k: p for k, p in out.items() if p is not None}
