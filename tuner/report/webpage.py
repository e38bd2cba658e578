"""results/<name>/report.html, and the comparison as a page: one file that opens in a browser and ties the
results folder together (summary, trials, every plot, the Pareto front, the test report).

Self-contained: every image is inlined as a data: URI, the style and the few lines of script (click a
column header to sort a table) are in the page, and its Content-Security-Policy forbids anything else, so
opening it makes no request at all and the file can be mailed or archived on its own. Written from the
results files alone, so `tuner report` refreshes it at any time (after a retrain, an export, a --resume).
"""
from __future__ import annotations

import base64
import html
import math
import time
from pathlib import Path

import pandas as pd

from tuner.rundir import RunDir, read_trials, replace
from tuner.spaces import Experiment

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#1b1f24}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eaeef2}
th{background:#f6f8fa;text-align:left;position:sticky;top:0}td.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer}table.sortable th[data-order=asc]::after{content:" \\25B2"}
table.sortable th[data-order=desc]::after{content:" \\25BC"}tr.best td{background:#dafbe1}
.scroll{max-height:480px;overflow:auto;display:inline-block;max-width:100%}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #eaeef2}figcaption{color:#57606a}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{color:#57606a}dd{margin:0}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px}.muted{color:#57606a}
"""
# click a header: sort by that column, numbers as numbers, empty cells last; click again: the other way
SORT_JS = """
for (const th of document.querySelectorAll("table.sortable th")) th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0], i = th.cellIndex;
  const asc = th.dataset.order !== "asc";
  for (const h of table.tHead.rows[0].cells) delete h.dataset.order;
  th.dataset.order = asc ? "asc" : "desc";
  const key = r => {
    const t = r.cells[i].textContent.trim(), n = Number(t);
    return t === "" ? null : isNaN(n) ? t : n;
  };
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return asc ? c : -c;
  });
  for (const r of rows) body.appendChild(r);
});
"""
# the plots/ files in reading order; any other PNG there follows in name order
PLOT_ORDER = ("history", "learning_curves", "intermediate", "parameters", "parallel_coordinates", "importance",
              "contour", "rungs", "pareto")
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro", "loss",
                   "auc_ovr", "num_test", "num_params", "train_time_s")


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def number(v) -> str:
    """A cell: 4 significant digits for floats, integers as they are, empty for NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(v)


def image(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def numeric(v) -> bool:
    """A number, or text of one (the comparison's cells come formatted): right-aligned."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(str(v))
        return str(v).strip() != ""
    except ValueError:
        return False


def table(df: pd.DataFrame, css: str = "sortable", best_row: int | None = None) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for i, row in enumerate(df.itertuples(index=False)):
        cells = "".join(f'<td class="n">{esc(number(v))}</td>' if numeric(v) else f"<td>{esc(number(v))}</td>"
                        for v in row)
        rows.append(f'<tr{" class=best" if i == best_row else ""}>{cells}</tr>')
    return (f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>{body}"
            f"<script>{SORT_JS}</script></body></html>\n")


def facts(pairs: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


# --------------------------------------------------------------------------- one experiment
def summary(run: RunDir) -> str:
    """Best trial (validation), the test metrics of its retrained model, where the bundle is."""
    out = []
    if run.best_yaml.is_file():
        best = run.read_best()
        metrics = ", ".join(f"{k} {number(v)}" for k, v in best["metrics"].items())
        config = ", ".join(f"{k}: {number(v)}" for k, v in best["config"].items())
        out += [("best trial", f"<code>{esc(best.get('trial_id'))}</code> ({esc(metrics)})"),
                ("its config", esc(config))]
    else:
        out.append(("best trial", "no trial has finished yet"))
    if run.metrics.is_file():
        m = run.read_metrics()
        test = ", ".join(f"{k} {number(m[k])}" for k in SUMMARY_METRICS if k in m)
        out.append(("test metrics", f"<b>{esc(test)}</b>"))
    else:
        out.append(("test metrics", "not retrained yet (<code>tuner best --export</code> retrains and tests it)"))
    for label, path in (("retrained model", run.model), ("exported bundle", run.export)):
        if path.exists():
            out.append((label, f"<code>{esc(path.resolve())}</code> &mdash; "
                               f"<code>tuner.load({esc(repr(str(path)))})</code>"))
    return facts(out)


def plots(run: RunDir) -> str:
    files = sorted(run.plots.glob("*.png")) if run.plots.is_dir() else []
    rank = {n: i for i, n in enumerate(PLOT_ORDER)}
    files.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    return "".join(image(p, p.stem.replace("_", " ")) for p in files) or '<p class="muted">no plots yet</p>'


def test_report(run: RunDir) -> str:
    parts = []
    if run.confusion_png.is_file():
        parts.append(image(run.confusion_png, "confusion matrix on the test set (rows: true class)"))
    if run.curves.is_file():
        parts.append(image(run.curves, "the retrain's learning curves"))
    if run.classification_report.is_file():
        rep = pd.read_csv(run.classification_report, index_col=0)
        rep.index.name = "class"
        parts.append("<h3>per-class precision, recall and F1</h3>" + table(rep.reset_index()))
    return "".join(parts) or '<p class="muted">no retrained model yet</p>'


def objectives(exp: Experiment) -> str:
    """`val_accuracy (max)`, or `val_accuracy (max), num_params (min)` for several objectives."""
    return ", ".join(f"{m} ({d})" for m, d in zip(exp.metrics, exp.modes))


def experiment_page(exp_dir: Path) -> str:
    run = RunDir(exp_dir)
    exp = run.experiment()
    trials = run.read_trials() if run.trials.is_file() else pd.DataFrame()
    best_id = run.read_best().get("trial_id") if run.best_yaml.is_file() else None
    best_row = next((i for i, t in enumerate(trials.get("trial_id", [])) if t == best_id), None)
    head = facts([("family", esc(exp.family)), ("data set", esc(exp.dataset.name)),
                  ("objective", esc(objectives(exp))),
                  ("trials", esc(len(trials))), ("folder", f"<code>{esc(Path(exp_dir).resolve())}</code>"),
                  ("written", esc(time.strftime("%Y-%m-%d %H:%M:%S")))])
    note = run.running_note()  # a report written while the search runs says so
    body = [f"<h1>{esc(exp.name)}</h1>", head, f"<p><b>{esc(note)}</b></p>" if note else "",
            "<h2>Summary</h2>", summary(run),
            "<h2>Trials</h2><p class=muted>click a column to sort; the best trial is green</p>",
            table(trials, best_row=best_row) if len(trials) else "<p>none yet</p>"]
    if run.pareto.is_file():
        body += ["<h2>Pareto front</h2>", table(read_trials(run.pareto))]
    body += ["<h2>Plots</h2>", plots(run), "<h2>Test set</h2>", test_report(run)]
    return page(f"tuner: {exp.name}", "".join(body))


def write_report(exp_dir: Path) -> Path:
    """results/<name>/report.html from the folder's files; returns its path."""
    path = Path(exp_dir) / "report.html"
    replace(path, experiment_page(exp_dir))
    return path


# --------------------------------------------------------------------------- the comparison
def comparison_page(shown: pd.DataFrame, results: Path | None = None) -> str:
    """The comparison table (cells already formatted) as a sortable page; each experiment with a report.html
    links to it (a relative link inside the results folder)."""
    shown = shown.copy()
    body = table(shown)
    if results is not None:
        for name in shown.get("experiment", []):
            if (Path(results) / str(name) / "report.html").is_file():
                cell = f"<td>{esc(name)}</td>"
                body = body.replace(cell, f'<td><a href="{esc(name)}/report.html">{esc(name)}</a></td>', 1)
    return page("tuner: comparison", "<h1>Comparison</h1><p class=muted>one row an experiment's retrained best "
                "model on its test set, best accuracy first; click a column to sort</p>" + body)
