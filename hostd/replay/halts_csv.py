"""halts.csv of `hostd replay --trace --out`: one row per halt, written as the trace is replayed."""
from __future__ import annotations

import csv
import os
import tempfile

from hostd.trace.parse import Wakeup


class HaltsCsv:
    """halts.csv, one row per halt, streamed to a temp file and renamed when complete."""

    def __init__(self, out: str) -> None:
        self.path = os.path.join(out, "halts.csv")
        fd, self.tmp = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix="halts.csv")
        self.f = os.fdopen(fd, "w", newline="")
        self.w = csv.writer(self.f)

    def start(self, policies: list[str]) -> None:
        self.w.writerow(["pid", "halt", "line", "ts", "halt_ns", "waited", "valid", "kernel_budget_ns",
                         *(f"{p}_{c}" for p in policies for c in ("budget_ns", "polled_ok"))])

    def row(self, ev: Wakeup, index: int, k_budget: int | None, rows: list[dict]) -> None:
        cells = [ev.pid, index, ev.line, ev.ts, ev.ns, int(ev.waited), int(ev.valid),
                 "" if k_budget is None else k_budget]
        for r in rows:
            cells += ["" if r["budget_ns"] is None else r["budget_ns"], int(r["polled_ok"])]
        self.w.writerow(cells)

    def finish(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        os.unlink(self.tmp)
