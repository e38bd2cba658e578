"""report.html and comparison.html opened as a user opens them: in a real (headless) Chromium, driven over the
DevTools protocol. The page loads with no request outside its folder, every image decodes, the tables sort on
a click, and a screenshot is not blank. Skips, saying why, where Chromium is not installed (.ci/run installs it).
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tuner.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine "
                                    "(apt-get install -y chromium; .ci/run installs it)")
# every image and table of the page, what the click-to-sort did, as the page's own script sees them
PAGE_STATE = """(() => {
  const imgs = [...document.images].map(i => ({src: i.src.slice(0, 30), complete: i.complete, w: i.naturalWidth}));
  const tables = [...document.querySelectorAll("table.sortable")];
  return {title: document.title, imgs, tables: tables.length,
          h2: [...document.querySelectorAll("h2")].map(h => h.textContent),
          links: [...document.links].map(a => a.getAttribute("href"))};
})()"""


class Page:
    """One Chromium page over the DevTools protocol (aiohttp, which Ray already brings, as the websocket)."""

    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]
            self.events.append(msg)

    async def wait_for(self, event: str) -> dict:
        while True:
            found = next((e for e in self.events if e.get("method") == event), None)
            if found:
                return found
            self.events.append(json.loads((await self.ws.receive()).data))

    async def evaluate(self, expression: str):
        out = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return out["result"].get("value")


def open_in_chromium(page_file: Path, tmp_path: Path, actions=None) -> dict:
    """Open `page_file` in headless Chromium; return the requests it made, the page state, a screenshot, and
    what `actions(page)` (a coroutine) returned."""
    import aiohttp

    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-extensions",
                             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                             f"--user-data-dir={profile}", "--window-size=1280,1600", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def run() -> dict:
        port_file = profile / "DevToolsActivePort"
        for _ in range(600):
            if port_file.is_file() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
                target = next(t for t in await r.json() if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Network.enable")
                await page.call("Page.enable")
                page.events.clear()
                await page.call("Page.navigate", url=page_file.resolve().as_uri())
                await page.wait_for("Page.loadEventFired")
                state = await page.evaluate(PAGE_STATE)
                acted = await actions(page) if actions else None
                shot = await page.call("Page.captureScreenshot", format="png")
                requests = [e["params"]["request"]["url"] for e in page.events
                            if e.get("method") == "Network.requestWillBeSent"]
                return {"requests": requests, "state": state, "acted": acted,
                        "screenshot": base64.b64decode(shot["data"])}

    try:
        return asyncio.run(asyncio.wait_for(run(), timeout=180))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def assert_whole_page(seen: dict, folder: Path, min_images: int) -> None:
    inside = folder.resolve().as_uri()
    outside = [u for u in seen["requests"] if not (u.startswith(inside) or u.startswith("data:"))]
    assert not outside, f"requests outside {folder}: {outside}"
    imgs = seen["state"]["imgs"]
    assert len(imgs) >= min_images, imgs
    assert all(i["src"].startswith("data:image/png;base64,") for i in imgs), imgs
    assert all(i["complete"] and i["w"] > 0 for i in imgs), [i for i in imgs if not i["w"]]
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(seen["screenshot"])).convert("L"))
    assert shot.shape[1] >= 800 and shot.std() > 10, "the screenshot is blank"
    assert len(np.unique(shot)) > 20, "the screenshot is (nearly) one colour"


SORT_BY_VAL_ACCURACY = """(async () => {
  const table = document.querySelector("table.sortable");
  const col = [...table.tHead.rows[0].cells].findIndex(c => c.textContent === "val_accuracy");
  const values = () => [...table.tBodies[0].rows].map(r => Number(r.cells[col].textContent));
  table.tHead.rows[0].cells[col].click();
  const up = values();
  table.tHead.rows[0].cells[col].click();
  return {up, down: values()};
})()"""


@pytest.mark.slow
def test_a_search_writes_a_self_contained_report(finished_search):
    d = finished_search / "digits_cnn"
    text = (d / "report.html").read_text()
    for section in ("Summary", "Trials", "Pareto front", "Plots", "Test set", "per-class precision"):
        assert section in text, section
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text), "a link that would leave the folder"
    assert text.count('src="data:image/png;base64,') == len(list((d / "plots").glob("*.png"))) + 2
    best = yaml.safe_load((d / "best.yaml").read_text())
    metrics = json.loads((d / "best" / "metrics.json").read_text())
    assert best["trial_id"] in text and f"accuracy {metrics['accuracy']:.4g}" in text
    assert str((d / "best" / "model.pt").resolve()) in text


@pytest.mark.slow
@needs_chromium
def test_the_report_opens_in_chromium_with_no_request_outside_its_folder(finished_search, tmp_path):
    d = finished_search / "digits_cnn"
    seen = open_in_chromium(d / "report.html", tmp_path, lambda page: page.evaluate(SORT_BY_VAL_ACCURACY))
    (tmp_path / "report.png").write_bytes(seen["screenshot"])
    assert_whole_page(seen, d, min_images=len(list((d / "plots").glob("*.png"))) + 2)
    assert seen["state"]["title"] == "tuner: digits_cnn"
    assert seen["state"]["h2"] == ["Summary", "Trials", "Pareto front", "Plots", "Test set"]
    assert seen["state"]["tables"] >= 3  # trials, the Pareto front, the per-class report
    up, down = seen["acted"]["up"], seen["acted"]["down"]
    assert up == sorted(up) and down == sorted(up, reverse=True) and len(up) == 2  # --smoke: 2 trials


@pytest.mark.slow
@needs_chromium
def test_compare_html_is_a_page_that_links_each_report(finished_copy, tmp_path, capsys):
    assert main(["compare", "--results", str(finished_copy), "--format", "html"]) == 0
    printed = capsys.readouterr().out
    page_file = finished_copy / "comparison.html"
    assert printed.strip() == page_file.read_text().strip() and printed.startswith("<!DOCTYPE html>")
    seen = open_in_chromium(page_file, tmp_path)
    assert_whole_page(seen, finished_copy, min_images=0)
    assert seen["state"]["links"] == ["digits_cnn/report.html"]


@pytest.mark.slow
def test_tuner_report_rewrites_the_page_and_best_prints_the_test_metrics(finished_copy, capsys):
    d = finished_copy / "digits_cnn"
    (d / "report.html").unlink()
    assert main(["report", "--results", str(finished_copy), "--experiment", "digits_cnn"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {d / 'report.html'}"
    assert (d / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["best", "--results", str(finished_copy), "--experiment", "digits_cnn"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((d / "best" / "metrics.json").read_text())
    line = next(l for l in out.splitlines() if l.startswith("test metrics: "))
    assert f"accuracy {metrics['accuracy']:.4g}" in line and f"f1_macro {metrics['f1_macro']:.4g}" in line
    assert main(["report", "--results", str(finished_copy), "--experiment", "nope"]) == 2


def test_the_comparison_printed_to_a_terminal_fits_120_columns_and_the_file_keeps_every_one(tmp_path):
    import pandas as pd

    from tuner.commands import _terminal_table
    from tuner.report.compare import COMPARISON_COLUMNS, METRIC_COLUMNS, to_markdown

    rows = [{"experiment": f"flowers104_pretrained_{i}", "family": "transfer",
             **{m: 0.912345 for m in METRIC_COLUMNS}, "num_params": 23_512_345, "train_time_s": 1234.5}
            for i in range(3)]
    df = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    assert max(map(len, to_markdown(df).splitlines())) > 200  # the full table, as in comparison.md
    shown = _terminal_table(df, tmp_path).splitlines()
    assert max(map(len, shown)) <= 120, max(shown, key=len)
    head = shown[0]
    for col in ("experiment", "family", "accuracy", "loss", "f1_macro", "num_params"):
        assert f" {col} " in head, head
    more = len(COMPARISON_COLUMNS) - head.count('|') + 1
    assert shown[-1] == f"({more} more columns in {tmp_path / 'comparison.md'})"


@pytest.mark.slow
def test_the_optuna_study_names_its_objectives_for_the_dashboard(finished_search):
    # the same search, through the Optuna searcher: optuna-dashboard labels each value by its metric
    import optuna

    from tuner.search.study import storage

    study = optuna.load_study(study_name="digits_cnn", storage=storage(finished_search / "digits_cnn"))
    assert study.metric_names == ["val_accuracy", "num_params"]
