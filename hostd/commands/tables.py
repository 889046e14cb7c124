"""`hostd compare --table dyn2015|guest2019`: two more published halt-polling tables, measured here.

- dyn2015: Wanpeng Li's dynamic halt-polling (2015): %c0 of an idle vCPU's CPU and the rr round
  trip under no-poll, always-poll and dynamic-poll;
- guest2019: cpuidle-haltpoll's ping-pong: host, host polling and guest polling, and % of host.

Plan (hostd.measure.table_cells) -> measure -> summarise and judge (hostd.analysis.tables_summary)
-> print and write (hostd.output.tables_out); the quoted figures are hostd/plumbing/published.py's.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import replace

from hostd.analysis.tables_summary import build_document
from hostd.measure.table_cells import DEFAULT_ALWAYS_POLL_US, TablePlan, measure_tables
from hostd.measure.window import Terminated, on_sigterm
from hostd.output import tables_out
from hostd.plumbing.errors import UsageError
from hostd.plumbing.orphans import remove_stale_segments
from hostd.plumbing.published import TABLES
from hostd.plumbing.spec import parse_int


def run_tables(plan: TablePlan, out: str, progress: bool = True) -> dict:
    """Measure, write CSVs, plots and results.json under out, and return the document."""
    runs = measure_tables(plan, progress)
    doc = build_document(plan, runs)
    tables_out.write(out, doc)
    return doc


def parse_tables(text: str) -> tuple[str, ...]:
    if text == "all":
        return ("seed",) + TABLES
    if text not in ("seed",) + TABLES:
        raise UsageError(f"--table: unknown table {text!r} (choose from seed, {', '.join(TABLES)}, all)")
    return (text,)


def plan_from_compare(args, plan, which: list[str]) -> TablePlan | None:
    """The tables' plan from `hostd compare`'s options and plan (None if no table but the seed's)."""
    if args.always_poll_us is not None and "dyn2015" not in which:
        raise UsageError("--always-poll-us: only with --table dyn2015 or all")
    if not which:
        return None
    if args.json and args.table == "all":
        raise UsageError("--json: one table at a time (--table all writes a results.json per table)")
    always = DEFAULT_ALWAYS_POLL_US if args.always_poll_us is None else parse_int(
        "--always-poll-us", args.always_poll_us, 1, 4_000_000)
    return TablePlan(tuple(which), plan.quick, plan.repeat, plan.tsc_khz, always_poll_ns=always * 1000,
                     backends=plan.backends, kvm_unavailable=plan.kvm_unavailable, calibration=plan.calibration)


def main(args, plan: TablePlan, out: str, nested: bool) -> int:
    """Each table measured in turn; its folder is out (out/<table> after the seed's, with --table all)."""
    remove_stale_segments()
    old = signal.signal(signal.SIGTERM, on_sigterm)
    rc = 0
    try:
        for table in plan.tables:
            one = replace(plan, tables=(table,))
            folder = os.path.join(out, table) if nested or len(plan.tables) > 1 else out
            doc = run_tables(one, folder)
            if args.json:
                json.dump(doc, sys.stdout)
                sys.stdout.write("\n")
            else:
                tables_out.print_doc(doc, sys.stdout)
                sys.stdout.write(f"\nresults: {os.path.join(folder, 'results.json')} (+ CSV and PNG plot)\n")
            for f in doc["checks"]["failures"]:
                sys.stderr.write(f"hostd: check failed: {f}\n")
            rc = rc if doc["checks"]["ok"] else 1
    except (KeyboardInterrupt, Terminated):
        sys.stderr.write("hostd: compare interrupted; every process stopped and its segment removed\n")
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    return rc
