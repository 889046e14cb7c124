"""`hostd compare --table dyn2015`'s plot: no two labels overlap (measured from their boxes as the
renderer lays them out), also where every value is small; the kernel's series is drawn where the
kernel was measured (--backend both), and its cells that could not run are named under their config.

tests/data/dyn2015_both.json is a real `compare --quick --table dyn2015 --backend both` document,
trimmed to what the plot reads."""
from __future__ import annotations

import itertools
import json
import os

import matplotlib.pyplot as plt
import pytest

from hostd.output import plots
from hostd.output.tables_out import CONFIG_LABELS, LABELS
from hostd.plumbing.published import QUOTED

DOC = os.path.join(os.path.dirname(__file__), "data", "dyn2015_both.json")
KERNEL = plots.KERNEL_FIGURE[-1]


def _doc() -> dict:
    with open(DOC) as f:
        return json.load(f)


def _stats(doc: dict):
    """Every (summary, row, config, metric stats) of both backends."""
    for summary in (doc["summary"], doc["kvm"]["summary"]):
        for row, configs in summary["dyn2015"].items():
            for config, ms in configs.items():
                for s in ms.values():
                    yield row, config, s


def _set(s: dict, v: float) -> None:
    s.update(median=v, min=0.9 * v, max=1.1 * v)


def at_quoted(doc: dict) -> dict:
    """Every figure on its quoted one: the points sit where the old plot wrote the quoted labels."""
    for row, config, s in _stats(doc):
        _set(s, QUOTED["dyn2015"][row][config][0])
    return doc


def tenths(doc: dict) -> dict:
    """%c0 of a few tenths of a percent, the quoted scale, with wide min-max: the old plot's legend
    covered the quoted 4.6-14 label here."""
    for k, (row, config, s) in enumerate(_stats(doc)):
        if row.startswith("idle"):
            v = 0.2 + 0.05 * (k % 4)
            s.update(median=v, min=0.7 * v, max=1.3 * v)
    return doc


def tiny(doc: dict) -> dict:
    """Every figure small: %c0 in thousandths of a percent, round trips of a few us."""
    for k, (row, config, s) in enumerate(_stats(doc)):
        _set(s, (1e-3 if row.startswith("idle") else 2.0) * (1 + k % 3))
    return doc


def _label_boxes(fig) -> list[tuple[str, object]]:
    """(text, window extent) of every label drawn: titles, axis labels, the tick labels in view, any
    text in the panels, and the legend (as its frame; its entries are checked among themselves)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, ax.xaxis.offsetText, ax.yaxis.offsetText, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if lo <= tick.get_loc() <= hi:
                    texts.append(tick.label1)
        out += [(t.get_text(), t.get_window_extent(r)) for t in texts if t.get_visible() and t.get_text().strip()]
    out += [("legend", leg.get_window_extent(r)) for leg in fig.legends]
    return out


def _overlaps(boxes) -> list[tuple[str, str]]:
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


@pytest.mark.parametrize("variant", [lambda d: d, at_quoted, tenths, tiny],
                         ids=["measured", "at-quoted", "tenths", "tiny"])
def test_dyn2015_labels_do_not_overlap(variant):
    fig = plots.table_figure(variant(_doc()), "dyn2015", CONFIG_LABELS, LABELS)
    try:
        boxes = _label_boxes(fig)
        assert len(boxes) > 20, boxes  # titles, ticks (with the quoted figures), legend: all found
        assert not _overlaps(boxes)
        r = fig.canvas.get_renderer()
        (legend,) = fig.legends
        assert not _overlaps([(t.get_text(), t.get_window_extent(r)) for t in legend.get_texts()])
        # Every label inside the figure: none cut at its edge.
        page = fig.bbox
        assert all(page.x0 <= b.x0 and b.x1 <= page.x1 and page.y0 <= b.y0 and b.y1 <= page.y1 for _, b in boxes)
    finally:
        plt.close(fig)


def test_dyn2015_draws_the_kernels_series_where_it_ran():
    doc = _doc()
    fig = plots.table_figure(doc, "dyn2015", CONFIG_LABELS, LABELS)
    try:
        rows = list(doc["summary"]["dyn2015"])  # the panels' order: published.ROWS's
        assert len(fig.axes) == len(rows) == 3
        for ax, row in zip(fig.axes, rows):
            cells = doc["kvm"]["cells"]["dyn2015"][row]
            measured = {c: doc["kvm"]["summary"]["dyn2015"].get(row, {}).get(c) for c, na in cells.items() if not na}
            drawn = [c for c in ax.containers if c.get_label() == KERNEL]
            assert len(drawn) == len(measured), row
            ys = sorted(c.lines[0].get_ydata()[0] for c in drawn)
            assert ys == sorted(ms["c0_pct"]["median"] for ms in measured.values())
            ticks = [t.get_text() for t in ax.get_xticklabels()]
            assert [("kernel: n/a" in t) for t in ticks] == [bool(na) for na in cells.values()], ticks
            assert all("quoted" in t for t in ticks)
        # This machine's kernel ran the idle rows' none and adaptive, never rr: the fixture shows both.
        assert any(c.get_label() == KERNEL for c in fig.axes[0].containers)
        assert not any(c.get_label() == KERNEL for c in fig.axes[2].containers)
        assert KERNEL in [t.get_text() for t in fig.legends[0].get_texts()]
    finally:
        plt.close(fig)


def test_without_the_kernel_no_kernel_series(tmp_path):
    doc = _doc()
    doc["kvm"] = {"summary": None, "cells": {}, "unavailable": None}
    fig = plots.table_figure(doc, "dyn2015", CONFIG_LABELS, LABELS)
    try:
        assert not any(c.get_label() == KERNEL for ax in fig.axes for c in ax.containers)
        assert not any("kernel" in t.get_text() for ax in fig.axes for t in ax.get_xticklabels())
        assert not _overlaps(_label_boxes(fig))
    finally:
        plt.close(fig)
    plots.table_plot(str(tmp_path / "dyn2015.png"), doc, "dyn2015", CONFIG_LABELS, LABELS)
    assert (tmp_path / "dyn2015.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_guest2019_config_names_do_not_overlap():
    """guest2019's configs are named by phrases ("host poll 300 us, no guest poll"): wrapped, not run together."""
    doc = {"summary": {}, "kvm": {"summary": None, "cells": {}}}
    fig = plots.table_figure(doc, "guest2019", CONFIG_LABELS, LABELS)
    try:
        assert not _overlaps(_label_boxes(fig))
    finally:
        plt.close(fig)
