"""The comparison of experiments: results/comparison.md and .csv (and .html/.tex), one row an experiment with a
retrained model, from each folder's best/metrics.json."""
from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from tuner.atomic import write_text
from tuner.errors import UserError
from tuner.rundir import CorruptResult, RunDir, read_result, warn

METRIC_COLUMNS = ["accuracy", "loss", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
                  "recall_weighted", "f1_weighted", "balanced_accuracy", "auc_ovr", "tpr", "tnr", "fpr", "fnr",
                  "num_test", "num_params", "train_time_s"]
COMPARISON_COLUMNS = ["experiment", "family"] + METRIC_COLUMNS
FORMATS = ("md", "csv", "html", "tex")
INT_COLUMNS = ("num_test", "num_params")

def _family(d: Path) -> str:
    for f in (RunDir(d).space, RunDir(d).ensemble):
        if f.is_file():
            return str(read_result(f).get("family", ""))
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
        m = RunDir(d).metrics
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
            write_text(path, render(df, f, results) + "\n")
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


# the columns a narrow table keeps first, most telling first; the rest follow in table order while they fit
NARROW_FIRST = ["experiment", "family", "accuracy", "loss", "f1_macro", "balanced_accuracy", "num_params",
                "train_time_s", "precision_macro", "recall_macro", "auc_ovr"]
TERMINAL_WIDTH = 120


def narrow_columns(df: pd.DataFrame, width: int = TERMINAL_WIDTH) -> list[str]:
    """The columns of the markdown table that fit `width` characters, taken in NARROW_FIRST's order (table
    order kept); the files hold every column, this is for a terminal."""
    shown = _cells(df)
    order = [c for c in NARROW_FIRST if c in shown] + [c for c in shown.columns if c not in NARROW_FIRST]
    keep: list[str] = []
    for c in order:
        trial = [k for k in shown.columns if k in keep or k == c]
        if max(map(len, to_markdown(df[trial]).splitlines())) > width and len(keep) >= 2:
            continue  # a wider column may not fit where a narrower one after it does
        keep = trial
    return keep


def to_markdown(df: pd.DataFrame, width: int | None = None) -> str:
    """The comparison as a markdown table; with `width`, only the columns that fit (see narrow_columns)."""
    if width is not None:
        df = df[narrow_columns(df, width)]
    shown = _cells(df)
    head = "| " + " | ".join(shown.columns) + " |"
    sep = "|" + "|".join("---:" if c in METRIC_COLUMNS else "---" for c in shown.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def render(df: pd.DataFrame, fmt: str, results: Path | None = None) -> str:
    """The comparison table as md, csv, html (a page; its experiments link to their report.html in `results`)
    or tex, numbers rounded for reading."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}; one of {FORMATS}")
    if fmt == "md":
        return to_markdown(df)
    if fmt == "csv":  # still numbers (no padding), so scripts can read it back
        return rounded(df).to_csv(index=False).rstrip()
    shown = _cells(df)
    if fmt == "html":
        from tuner.report.webpage import comparison_page

        return comparison_page(shown, results).rstrip()
    # tex: a booktabs tabular; underscores in names and headers are escaped for LaTeX
    return shown.to_latex(index=False, escape=True, column_format="ll" + "r" * len(METRIC_COLUMNS)).rstrip()
