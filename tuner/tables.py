"""What the results tables hold: a trial's trials.csv row and epochs, best.yaml's entry, pareto.csv's rows.

Beside tuner/rundir.py rather than in it: rundir owns where the files are and how they are read and written
(no search knowledge); this module knows what a trial's row is (an Experiment's metrics, constraints and
parameters). Written as trials report (tuner/search/live.py, the Ray callback) and again at the end, by one
function, so the live files and the final ones agree.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tuner.metrics import best_index
from tuner.rundir import RunDir, replace

EPOCH_COLUMNS = ["trial_id", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time_s"]


MEASURED = ["num_params", "latency_ms", "latency_ms_b64", "train_time_s"]  # once per trial, not per epoch


def trial_row(exp, trial_id: str, config: dict, df: pd.DataFrame | None, error) -> tuple[dict, pd.DataFrame | None]:
    """A trial's trials.csv row (plus the private `_metric`, `_config` used to pick the best) and its epochs.

    A trial's objectives are read at its best epoch by the first metric. A trial outside `constraints` is
    marked infeasible and is never the best; a conditional branch's parameters a trial did not draw stay empty.
    """
    from tuner.metrics import feasible

    primary, mode = exp.metrics[0], exp.modes[0]
    extra = [m for m in exp.metrics + list(exp.constraints) if m not in ("val_accuracy", "val_loss") + tuple(MEASURED)]
    searched, constants = exp.param_names, exp.constants
    row: dict[str, object] = {"trial_id": trial_id, "status": "ERROR" if error else "TERMINATED",
           "error": one_line(error) if error else ""}
    for k in searched + [k for k in constants if k not in searched]:
        v = config.get(k, constants.get(k))
        row[k] = v if not isinstance(v, (list, dict)) else yaml.safe_dump(v, default_flow_style=True).strip()
    if df is None or not len(df) or primary not in df:
        row.update(epochs=0, val_accuracy=np.nan, val_loss=np.nan, best_epoch=np.nan, time_s=np.nan)
        row.update({m: np.nan for m in MEASURED + extra})
        if exp.constraints:
            row["feasible"] = False
        return row, None
    df = df.copy()
    df["trial_id"] = trial_id
    if "epoch" not in df:
        df["epoch"] = df["training_iteration"]
    df["time_s"] = df.get("time_this_iter_s", np.nan)
    for col in EPOCH_COLUMNS:
        if col not in df:
            df[col] = np.nan
    # the trial's score is its best epoch's metric (what its checkpoint at that epoch would give)
    i = df[primary].idxmax() if mode == "max" else df[primary].idxmin()
    row.update(epochs=int(df["epoch"].max()), val_accuracy=float(df.loc[i, "val_accuracy"]),
               val_loss=float(df.loc[i, "val_loss"]), best_epoch=int(df.loc[i, "epoch"]),
               time_s=float(df["time_total_s"].max()) if "time_total_s" in df else np.nan)
    for m in MEASURED + extra:
        row[m] = float(df.loc[i, m]) if m in df and pd.notna(df.loc[i, m]) else np.nan
    if exp.constraints:
        row["feasible"] = feasible(row, exp.constraints)
    # a failed trial is never the best: its retrain would fail the same way; nor is an infeasible one
    if not error and row.get("feasible", True) and pd.notna(df.loc[i, primary]):
        row["_metric"] = float(df.loc[i, primary])
        row["_config"] = config
    return row, df[EPOCH_COLUMNS]


def write_tables(exp, rows: list[tuple[dict, pd.DataFrame | None]], exp_dir: Path,
                 running: Sequence[pd.DataFrame] = ()) -> dict | None:
    """trials.csv, epochs.csv, best.yaml (and pareto.csv for several objectives) from finished trials'
    `trial_row`s and the epochs so far of `running` ones; returns best.yaml's content, None while no trial
    has finished with the metric."""
    from tuner.metrics import pareto_front

    run = RunDir(exp_dir)
    table = pd.DataFrame([r for r, _ in rows])
    for k in exp.param_names:
        # an int a trial did not draw (a conditional branch) is empty: keep the others 3, not 3.0
        drawn = [r[k] for r, _ in rows if r.get(k) is not None and not (isinstance(r[k], float) and math.isnan(r[k]))]
        if k in table and drawn and len(drawn) < len(rows) and all(isinstance(v, (int, np.integer))
                                                                    and not isinstance(v, bool) for v in drawn):
            table[k] = table[k].astype("Int64")
    if "best_epoch" in table:  # a failed trial has none: the others stay 3, not 3.0
        table["best_epoch"] = table["best_epoch"].astype("Int64")
    public = table.drop(columns=[c for c in table.columns if c.startswith("_")])
    epochs = [e for _, e in rows if e is not None] + list(running)
    # epochs.csv before trials.csv: a reader between the two writes (`tuner list`, a notebook, the live
    # view) must not find a finished trial whose epochs are not there yet
    replace(run.epochs, (pd.concat(epochs, ignore_index=True) if epochs
                         else pd.DataFrame(columns=EPOCH_COLUMNS)).to_csv(index=False))
    if rows:
        replace(run.trials, public.to_csv(index=False))
    ok = table[table["_metric"].notna()] if "_metric" in table else table.iloc[0:0]
    if exp.multi:
        # the non-dominated feasible trials; the retrain takes the one best on the first objective
        ok = pareto_front(ok, exp.metrics, exp.modes)
        replace(run.pareto, public.loc[ok.index].to_csv(index=False))
    if ok.empty:
        return None
    best_row = ok.loc[best_index(ok, exp.metrics, exp.modes, col="_metric")]  # as the plots mark it
    best = best_entry(exp, best_row, {k: _plain(v) for k, v in best_row["_config"].items()})
    run.write_best(best)
    return best


def best_entry(exp, row, config: dict) -> dict:
    """best.yaml's content for one trials.csv row and its config."""
    metrics = {"epoch": int(row["best_epoch"]), "val_accuracy": float(row["val_accuracy"]),
               "val_loss": float(row["val_loss"])}
    for m in exp.metrics + MEASURED:
        if m in row and pd.notna(row[m]):
            metrics[m] = _plain(float(row[m]))
    return {"experiment": exp.name, "family": exp.family, "trial_id": str(row["trial_id"]),
            "metric": exp.metric, "mode": exp.mode, "config": config, "metrics": metrics,
            "epochs_run": int(row["epochs"])}


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def csv_value(v):
    """A trials.csv cell back as the value the trial had: a list from its YAML flow text ("[256, 128]"), a
    numpy scalar as Python's, a whole float as an int (pandas reads an int column with a gap as floats)."""
    if isinstance(v, str) and v.startswith("["):
        return yaml.safe_load(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v) if abs(v) < 2**53 else v
    return v


def row_config(exp, row) -> dict:
    """A trials.csv row's config: every searched parameter it drew and every constant, as the trial had them."""
    names = exp.param_names + [k for k in exp.constants if k not in exp.param_names]
    return {k: csv_value(row[k]) for k in names if k in row and not pd.isna(row[k])}


def one_line(error) -> str:
    text = str(error).strip().splitlines()
    # Ray wraps the trial's exception in its own traceback: keep the line that says what went wrong
    line = next((l.strip() for l in reversed(text) if l.strip() and not l.startswith((" ", "Traceback"))),
                text[-1].strip() if text else repr(error))
    # "tuner.errors.TrialFailed: why" -> "why"; "torch.OutOfMemoryError: ..." -> "OutOfMemoryError: ..."
    kind, sep, why = line.partition(": ")
    if sep and " " not in kind:
        kind = kind.rsplit(".", 1)[-1]
        line = why if kind == "TrialFailed" else f"{kind}: {why}"
    return line[:500]


def read_epochs(run: RunDir) -> pd.DataFrame:
    """epochs.csv, or an empty table with its columns when there is none yet."""
    if not run.epochs.is_file():
        return pd.DataFrame(columns=EPOCH_COLUMNS)
    return pd.read_csv(run.epochs, dtype={"trial_id": str})
