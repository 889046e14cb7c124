"""The fidelity table of `compare --backend both` as printed, written (fidelity.csv) and summed up
in the verdict: pure functions of its rows (hostd.analysis.fidelity.rows and neighbour_rows)."""
from __future__ import annotations

import csv
import io as _io

from hostd.output.console import Column, report_for
from hostd.output.figures import num
from hostd.plumbing.fidelity_bounds import CORES, HIGH, LOW, POINTS, TOLERANCES


def _measured(r: dict) -> bool:
    return (r["ratio"] if r.get("check", "ratio") == "ratio" else r.get("diff")) is not None


def summary_line(table: list[dict], profile: str) -> str:
    measured = [r for r in table if _measured(r)]
    within = sum(r["within"] for r in measured)
    missed = [r["key"] for r in measured if not r["within"]]
    s = f"Fidelity, emulator calibration {profile}: {within} of {len(measured)} figures within {LOW}-{HIGH}x of the kernel's"
    checks = {r.get("check", "ratio") for r in measured}
    if "points" in checks:
        s += f" (successful polls within ±{POINTS:g} points"
        s += f"; beside a neighbour, its CPU lost within ±{CORES:g} core)" if "cores" in checks else ")"
    return s + (f"; outside: {', '.join(missed)}." if missed else ".")


def to_csv(table: list[dict]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["figure", "key", "emulator", "kernel", "emu_over_kvm", "emu_minus_kvm", "check", "within", "why_not"])
    for r in table:
        diff = r.get("diff")
        w.writerow([r["figure"], r["key"], r["emu"], r["kvm"], None if r["ratio"] is None else round(r["ratio"], 3),
                    None if diff is None else round(diff, 4), _check_text(r.get("check", "ratio")), r["within"],
                    r["why"] or ""])
    return buf.getvalue()


def _check_text(check: str) -> str:
    return {"ratio": f"ratio {LOW}-{HIGH}", "points": f"+-{POINTS:g} points", "cores": f"+-{CORES:g} core"}[check]


def ratio_text(r: dict) -> str:
    """emu / kvm for a ratio row, emu - kvm for a difference row; "-" where unmeasured."""
    check = r.get("check", "ratio")
    if not _measured(r):
        return "-"
    if check == "ratio":
        return f"{r['ratio']:.2f}x"
    return f"{r['diff']:+.0f} points" if check == "points" else f"{r['diff']:+.3f} core"


def mark(r: dict) -> str:
    if not _measured(r):
        return "-"
    return "✓" if r["within"] else ("✗ explained" if r["why"] else "✗")


def print_table(table: list[dict], out) -> None:
    """Into `out`: a report or a rich Console (hostd.output.console.report_for)."""
    rows = []
    for r in table:
        digits = r.get("digits", 2 if r["key"].startswith("idle") else 0)
        rows.append([r["figure"], num(r["emu"], digits), num(r["kvm"], digits), ratio_text(r), mark(r), r["why"] or ""])
    report_for(out).table(f"Fidelity: the emulator against the kernel on this machine, same cells ({TOLERANCES})",
                          [Column("figure", "left")],
                          [[Column("emulator"), Column("kernel (kvm)"), Column("emu vs kvm"), Column("", "left"),
                            Column("why not", "left")]], rows)
