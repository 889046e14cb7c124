"""Every table of compare, compare --table, tune and replay shows every cell whole at 80 and 100
columns: rendered from saved documents (tests/data/show/, from real runs), each cell's every word
must appear unbroken in the output, no "…" anywhere, no line wider than the width."""
from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from hostd.output import compare_tables, console, tables_out, trace_report, tune_report
from hostd.output.console import TextReport
from hostd.output.replay_text import format_rows

DATA = Path(__file__).parent / "data" / "show"
WIDTHS = (80, 100)
RICH_DOCS = [
    ("compare_both/results.json", compare_tables.print_tables),
    ("compare_quick/results.json", compare_tables.print_tables),
    ("tables_all/seed/results.json", compare_tables.print_tables),
    ("tables_all/dyn2015/results.json", tables_out.print_doc),
    ("tables_all/guest2019/results.json", tables_out.print_doc),
    ("tune/tune.json", tune_report.print_report),
]


def doc(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def cut_words(text: str, cells: list[str]) -> list[str]:
    """The words of `cells` that do not appear whole in `text` (a cut or folded cell leaves some)."""
    return [w for c in cells for w in c.split() if w not in text]


def check(text: str, cells: list[str], width: int) -> None:
    assert "…" not in text
    assert not cut_words(text, cells), cut_words(text, cells)
    assert max(cell_len(line) for line in text.splitlines()) <= width


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name,printer", RICH_DOCS, ids=[n for n, _ in RICH_DOCS])
def test_every_cell_is_whole(name, printer, width, monkeypatch):
    cells: list[str] = []
    table = TextReport.table

    def recording(self, title, key, groups, rows, section_ends=frozenset()):
        cells.extend([title, *(c.header for c in key + [c for g in groups for c in g])])
        cells.extend(console.plain(x) for r in rows for x in r)
        table(self, title, key, groups, rows, section_ends)

    monkeypatch.setattr(TextReport, "table", recording)
    buf = StringIO()
    printer(doc(name), TextReport(buf, width))
    assert len(cells) > 20  # the tables were printed, through the report
    check(buf.getvalue(), cells, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_replay_report_splits_its_table(width):
    d = doc("replay/replay.json")
    text = "\n".join(trace_report.format_report(d, width))
    for block in (b for b in trace_report._blocks(d) if isinstance(b, list)):
        cells = [str(v) for r in block for v in (*r, *r.values())]
        assert not cut_words(text, cells)
        assert max(map(len, format_rows(block, numbered=False, left=1, width=width - 2))) <= width - 2


def test_the_check_catches_a_cut_cell():
    """The old layout (rich's ellipsis at a fixed 80 columns) fails the check."""
    buf = StringIO()
    t = Table()
    for h in ("policy", "writes/s (min-max)", "kernel (kvm) writes/s", "emu / kvm", "% of idle-poll (min-max)"):
        t.add_column(h, no_wrap=True)
    row = ["guest-haltpoll", "3,260 (3,276-3,512)", "3,197 (3,100-3,300)", "0.88x", "99% (97-101%)"]
    t.add_row(*row)
    Console(file=buf, width=60).print(t)
    with pytest.raises(AssertionError):
        check(buf.getvalue(), row, 60)


def test_a_table_too_wide_is_split_with_its_key_column_repeated():
    buf = StringIO()
    key = [console.Column("policy", "left")]
    groups = [[console.Column(f"emulator figure {i}") for i in range(5)],
              [console.Column(f"kernel figure {i}") for i in range(5)]]
    rows = [["guest-haltpoll", *(f"{i},234 (1,100-1,{i}99)" for i in range(10))]]
    buf = StringIO()
    TextReport(buf, 80).table("t", key, groups, rows)
    text = buf.getvalue()
    assert text.count("guest-haltpoll") >= 2 and "kernel figure 4" in text
    check(text, [c for r in rows for c in r], 80)
