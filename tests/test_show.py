"""`hostd show DIR`: a saved folder printed again as its run printed it (tests/data/show/: documents
and the printed text of real runs, no results folder), as markdown, and refusals in one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from hostd.output import compare_tables, trace_report, tune_report
from hostd.output.console import TextReport

DATA = Path(__file__).parent / "data" / "show"
ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("compare_both", "compare_quick", "tables_all", "tune", "replay")


def show(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "hostd", "show", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)


def as_run_printed(text: str) -> str:
    """A run's stdout without the lines naming its files ("results: ...", not the documents')."""
    lines = [line for line in text.splitlines() if not line.startswith("results: ")]
    return "\n".join(lines).rstrip("\n") + "\n"


@pytest.mark.parametrize("folder", ("compare_quick", "tables_all"))
def test_show_prints_the_folder_as_its_run_printed_it(folder):
    """printed.txt is the run's own stdout (`hostd compare --quick [--table all] --out DIR > printed.txt`)."""
    r = show(str(DATA / folder), "--width", "100")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") + "\n" == as_run_printed((DATA / folder / "printed.txt").read_text())


def test_show_prints_each_document_as_its_printer_does():
    for folder, name, printer in (("compare_both", "results.json", compare_tables.print_tables),
                                  ("tune", "tune.json", tune_report.print_report)):
        buf = StringIO()
        printer(json.loads((DATA / folder / name).read_text()), TextReport(buf, 80))
        r = show(str(DATA / folder), "--width", "80")
        assert r.returncode == 0 and r.stdout == buf.getvalue(), r.stderr
    doc = json.loads((DATA / "replay" / "replay.json").read_text())
    r = show(str(DATA / "replay"), "--width", "80")
    assert r.stdout == "\n".join(trace_report.format_report(doc, 80)) + "\n"


def test_show_is_as_wide_as_asked_and_cuts_nothing():
    r = show(str(DATA / "compare_both"), "--width", "80")
    assert r.returncode == 0 and "…" not in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "Verdict:" in r.stdout and "  - " in r.stdout


@pytest.mark.parametrize("folder", FOLDERS)
def test_markdown_has_github_tables_and_the_verdict(folder):
    r = show(str(DATA / folder), "--format", "markdown")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("|") and set(line) <= set("|:-")]
    assert rules and all(lines[i - 1].startswith("| ") for i in rules)  # a header above each rule
    assert all(line.count("|") - line.count("\\|") == lines[i].count("|") for i in rules
               for line in lines[i + 1:i + 2])  # rows as wide as their header
    assert "┃" not in r.stdout and "│" not in r.stdout
    if folder.startswith(("compare", "tables")):
        assert "**Verdict:**" in r.stdout and "\n- " in r.stdout


def one_line_refusal(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2 and not r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


def test_refuses_a_folder_without_documents(tmp_path):
    one_line_refusal(show(str(tmp_path)), str(tmp_path), "results.json")
    one_line_refusal(show(str(tmp_path / "missing")), "not a folder")


@pytest.mark.parametrize("version", (None, 2, "1"))
def test_refuses_a_document_of_another_format_version(tmp_path, version):
    doc = json.loads((DATA / "tune" / "tune.json").read_text())
    if version is None:
        del doc["format_version"]
    else:
        doc["format_version"] = version
    (tmp_path / "tune.json").write_text(json.dumps(doc))
    words = ("no format_version",) if version is None else (f"format_version {version!r}",)
    one_line_refusal(show(str(tmp_path)), str(tmp_path / "tune.json"), *words)


def test_refuses_a_table_all_folder_with_an_old_document(tmp_path):
    shutil.copytree(DATA / "tables_all", tmp_path / "all")
    (tmp_path / "all" / "dyn2015" / "results.json").write_text("{}")
    one_line_refusal(show(str(tmp_path / "all")), "dyn2015", "no format_version")


def test_refuses_a_bad_width():
    one_line_refusal(show(str(DATA / "tune"), "--width", "x"), "--width")
