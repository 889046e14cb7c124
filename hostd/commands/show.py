"""`hostd show DIR`: a results folder printed again as its run printed it, from its documents alone.

compare's results.json, the three folders of `compare --table all` (seed, dyn2015, guest2019),
tune's tune.json and `replay --out`'s replay.json; as text at a width, or as GitHub markdown for
an issue or a mailing-list post. A document of another format version is refused, not guessed at.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from hostd.output import compare_tables, tables_out, trace_report, tune_report
from hostd.output.console import DEFAULT_WIDTH, TextReport, width_for
from hostd.output.markdown import MarkdownReport
from hostd.plumbing.errors import UsageError
from hostd.plumbing.formats import RESULTS_FORMAT_VERSION
from hostd.plumbing.published import TABLES
from hostd.plumbing.spec import parse_int

DOCUMENTS = ("results.json", "tune.json", "replay.json")
SUB_FOLDERS = ("seed",) + TABLES  # compare --table all: a folder per table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show", help="print a results folder again, as its run printed it (or as markdown)",
        description="Print a results folder again from its documents alone, as the run printed it (its "
        "progress lines excepted): compare's results.json, compare --table all's folders, tune's tune.json, "
        "replay --out's replay.json.",
        epilog="example: hostd show results/20260101T000000Z --format markdown")
    p.add_argument("dir", metavar="DIR", help="a folder written by compare, tune or replay --out")
    p.add_argument("--width", metavar="N", help=f"columns to print at (default: the terminal's, else "
                   f"$COLUMNS or {DEFAULT_WIDTH})")
    p.add_argument("--format", default="text", choices=("text", "markdown"),
                   help="text: as the run printed it (default); markdown: GitHub tables and the verdict")
    p.set_defaults(func=main)


def load(path: str) -> dict:
    """A document of this format version, or a one-line refusal naming the file and its version."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    version = doc.get("format_version") if isinstance(doc, dict) else None
    if version != RESULTS_FORMAT_VERSION:
        what = "no format_version" if version is None else f"format_version {version!r}"
        raise UsageError(f"{path}: {what}; this hostd shows format_version {RESULTS_FORMAT_VERSION} only")
    return doc


def documents(folder: str) -> list[tuple[str, dict]]:
    """The folder's documents, in the order their run printed them."""
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: not a folder")
    paths = [os.path.join(folder, name) for name in DOCUMENTS if os.path.isfile(os.path.join(folder, name))]
    if not paths:
        paths = [p for sub in SUB_FOLDERS if os.path.isfile(p := os.path.join(folder, sub, "results.json"))]
    if not paths:
        raise UsageError(f"{folder}: no {', '.join(DOCUMENTS[:-1])} or {DOCUMENTS[-1]} here, nor a compare "
                         f"--table all run's folders ({', '.join(SUB_FOLDERS)})")
    return [(p, load(p)) for p in paths]


def show(path: str, doc: dict, report, width: int, markdown: bool) -> None:
    name = os.path.basename(path)
    if name == "tune.json":
        tune_report.print_report(doc, report)
    elif name == "replay.json":
        if markdown:
            trace_report.print_report(doc, report)
        else:
            sys.stdout.write("\n".join(trace_report.format_report(doc, width)) + "\n")
    elif doc.get("command", "").startswith("hostd compare --table"):
        tables_out.print_doc(doc, report)
    else:
        compare_tables.print_tables(doc, report)


def main(args: argparse.Namespace) -> int:
    width = width_for(sys.stdout, args.width and parse_int("--width", args.width, 40, 1000))
    docs = documents(args.dir)
    markdown = args.format == "markdown"
    report = MarkdownReport(sys.stdout) if markdown else TextReport(sys.stdout, width)
    for k, (path, doc) in enumerate(docs):
        if k:
            sys.stdout.write("\n")
        show(path, doc, report, width, markdown)
    sys.stdout.flush()
    return 0
