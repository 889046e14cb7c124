"""The printed tables of compare's fourth experiment, beside a neighbour: one per workload, rows per
(case, policy), the kernel's columns beside the emulator's with --backend both."""
from __future__ import annotations

from typing import Callable

from hostd.output.console import Column, report_for
from hostd.plumbing.neighbour_cases import WORKLOADS
from hostd.plumbing.spec import DEFAULT_INTERVAL_US

# Per workload: (metric, digits, unit, header) of the emulator's columns; the kernel's repeat them
# (--backend both: its emu / kvm ratios are in the fidelity table).
COLUMNS = {
    "timer": (("poll_success_pct", 0, "%", "successful\npolls"), ("wake_p50_ns", 0, "", "p50 ns\nTSC cycles"),
              ("vcpu_cpu_cores", 3, "", "vCPU\ncores"), ("neighbour_cpu_lost_cores", 3, "", "neighbour\nlost")),
    "io": (("poll_success_pct", 0, "%", "successful\npolls"), ("wake_p50_ns", 0, "", "wake p50\nns"),
           ("writes_per_s", 0, "", "writes/s"), ("vcpu_cpu_cores", 3, "", "vCPU\ncores"),
           ("neighbour_cpu_lost_cores", 3, "", "neighbour\nlost")),
}
TITLES = {"timer": f"timer, wake - deadline ({DEFAULT_INTERVAL_US} us deadlines)",
          "io": "io, O_DSYNC writes (wake p50: interrupt injected -> guest resumes)"}


def heading(doc: dict) -> str:
    nb = doc["neighbour"]["config"]
    cfg = doc["config"]
    runs = "one run" if nb["repeat"] == 1 else f"the median of {nb['repeat']} runs"
    if nb["adaptive_repeat"] != nb["repeat"]:
        runs += f" (adaptive: the median of {nb['adaptive_repeat']})"
    return (f"Beside a neighbour: a process of ours pinned to the vCPU's CPU spinning its duty of every period "
            f"(1 vCPU; {runs} of {nb['duration_s']:g} s per cell; the seed's experiments above keep their "
            f"own). adaptive capped at {nb['cap_ns']['timer']:,} ns (timer, {nb['interval_us']} us deadlines) "
            f"and {nb['cap_ns']['io']:,} ns = the seed's 2,000,000 cycles at {cfg['tsc_khz']:,} kHz (io); "
            "guest-haltpoll's guest poll capped alike, emulator only. successful polls: idle periods a poll ended; "
            "neighbour lost: its CPU alone just before the vCPUs ran, minus beside them (cores); vCPU: the vCPU's CPU "
            "(cores); alone: no neighbour"
            + ("; kvm: the same cell on real KVM VMs, the kernel's own halt polling." if doc["neighbour"].get("kvm")
               else "."))


def print_tables(doc: dict, out, fmt: Callable, disturbed: set[str]) -> None:
    """The experiment's tables, one per workload, rows per (case, policy), into `out` (a report or a
    rich Console: hostd.output.console.report_for); `fmt` formats a cell (hostd.output.figures.cell)."""
    nb = doc.get("neighbour")
    if not nb or not nb["summary"]:
        return
    report = report_for(out)
    s, kvm = nb["summary"], (nb.get("kvm") or {}).get("summary")
    spread = nb["config"]["repeat"] > 1
    report.print(heading(doc))
    labels = {c["key"]: c["label"] for c in nb["config"]["cases"]}
    for wl in WORKLOADS:
        groups = [[Column(header) for _, _, _, header in COLUMNS[wl]]]
        if kvm is not None:
            groups.append([Column(f"kvm\n{header}") for _, _, _, header in COLUMNS[wl]])
        rows, ends = [], set()
        for case, wls in s.items():
            pols = wls.get(wl, {})
            for i, (pol, m) in enumerate(pols.items()):
                ids = {rid for v in m.values() for rid in v.get("runs", [])}
                row = [labels.get(case, case) if i == 0 else "", pol + (" *" if ids & disturbed else "")]
                row += _cells(wl, m, fmt, spread)
                if kvm is not None:
                    k = kvm.get(case, {}).get(wl, {}).get(pol)
                    row += _cells(wl, k, fmt, spread) if k else ["-"] * len(COLUMNS[wl])
                rows.append(row)
            ends.add(len(rows) - 1)
        report.table(f"Beside a neighbour: {TITLES[wl]}", [Column("neighbour", "left"), Column("policy", "left")],
                     groups, rows, frozenset(ends))


def _cells(wl: str, m: dict, fmt: Callable, spread: bool) -> list[str]:
    out = []
    for metric, digits, unit, _ in COLUMNS[wl]:
        text = fmt(m.get(metric), digits, unit, spread=spread)
        if wl == "timer" and metric == "wake_p50_ns":
            text += "\n" + fmt(m.get("wake_p50_cycles"), 0, "", spread=spread)
        out.append(text)
    return out
