"""tuner/rundir.py: the one owner of results/<name>/: its files are the ones the docs list, its readers turn a
corrupt file into one line, the running marker tells a live search from a dead one."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.rundir import CorruptResult, RunDir

ROOT = Path(__file__).resolve().parents[1]
FILE = re.compile(r"[\w.]+\.(?:pt|json|csv|png|yaml|npz|journal|lock)\b")


def _listed(doc: Path, heading: str) -> set[str]:
    """The files a doc's results block lists under `<name>/`: each entry at the block's first level, and the
    files named inside best/ (nested or on its continuation lines), as paths relative to the folder."""
    text = doc.read_text()
    block = text[text.index(heading):]
    block = block[block.index("```") + 3:]
    lines = block[:block.index("```")].splitlines()
    start = next(i for i, l in enumerate(lines) if l.rstrip().endswith("<name>/"))
    base = len(lines[start + 1]) - len(lines[start + 1].lstrip())
    out: set[str] = set()
    entry = None
    for line in lines[start + 1:]:
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent < base:
            break
        if indent == base:
            entry = line.split()[0].rstrip("/")
            out.add(entry)
            continue
        if entry == "best":  # best/'s own files; plots/ lists pictures the report draws, not RunDir's
            out |= {f"best/{f}" for f in FILE.findall(line)}
    return out


@pytest.mark.parametrize("doc, heading", [("docs/results.md", "# The results folder")])
def test_the_docs_list_exactly_the_files_of_a_results_folder(doc, heading):
    listed = _listed(ROOT / doc, heading)
    files = set(RunDir.files())
    assert listed - files == set(), f"{doc} lists files RunDir does not know"
    assert files - listed == set(), f"{doc} does not list RunDir's files"


def test_a_corrupt_results_file_is_one_line_naming_it_and_what_to_do(tmp_path):
    run = RunDir(tmp_path)
    run.best_yaml.write_text("config: [unclosed\n")
    with pytest.raises(CorruptResult) as err:
        run.read_best()
    assert str(err.value).startswith(f"{run.best_yaml}: cannot be read (") and "\n" not in str(err.value)
    assert "tuner search --resume" in str(err.value)
    run.trials.write_text("a,b\n1,2\n")
    with pytest.raises(CorruptResult, match="no trial_id column"):
        run.read_trials()


def test_a_written_best_yaml_reads_back_and_leaves_no_temporary_file(tmp_path):
    run = RunDir(tmp_path)
    run.write_best({"trial_id": "t1", "config": {"lr": 0.1}, "metrics": {"val_accuracy": 0.9}})
    assert run.read_best()["config"] == {"lr": 0.1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.yaml"]


def test_a_trial_id_that_looks_like_an_exponent_reads_back_as_the_same_text(tmp_path):
    # Ray's ids are 8 hex digits: 508172e8 is one, and a YAML 1.2 reader takes it for 5.08172e13
    run = RunDir(tmp_path)
    run.write_best({"trial_id": "508172e8", "config": {"lr": 1.0e-4, "name": "1e5"}, "metrics": {}})
    best = run.read_best()
    assert best["trial_id"] == "508172e8" and best["config"] == {"lr": 1.0e-4, "name": "1e5"}


def test_running_marker_of_a_live_process_counts_and_of_a_dead_one_does_not(tmp_path):
    run = RunDir(tmp_path)
    run.mark_running()
    assert run.running_search()["pid"] == os.getpid()
    assert run.running_note().startswith("search running (pid ")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = json.loads(run.running.read_text())
    run.running.write_text(json.dumps({**info, "pid": int(dead.stdout)}))
    assert run.running_search() is None and run.running_note() == ""
    run.clear_running()
    assert run.running_search() is None and not run.running.exists()
