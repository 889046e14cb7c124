"""`hostd compare --table dyn2015|guest2019`'s results: each cell summarised across repeats, the
verdicts against the quoted figures, and results.json's document.

guest2019's % of host is host latency / latency per repeat (as the quoted 93.8% = 31.33 / 33.40).
Quoted figures are constants shown only in columns labelled "quoted". Every other number comes
from a run stored whole in the document's runs; the verdicts are pure functions of the measured figures.
"""
from __future__ import annotations

from hostd.analysis.stats import summarize
from hostd.measure.table_cells import GUEST2019_POLL_NS, TablePlan, kvm_cells
from hostd.plumbing.formats import RESULTS_FORMAT_VERSION
from hostd.plumbing.published import NOHZ_TICK_HZ, QUOTED, ROWS, TABLES
from vcpu.policy import KVM_HALT_POLL_NS_DEFAULT

# Verdict tolerances: two figures differ "in direction" only beyond BAND (relative); a measured
# figure "reproduces" a quoted one within TOLERANCE of the quoted range.
BAND = {"dyn2015": 0.10, "guest2019": 0.01}
TOLERANCE = 0.25
PAIRS = {  # the claims a table makes, as (config, reference) orderings its quoted figures show
    "dyn2015": (("fixed", "none"), ("adaptive", "none"), ("adaptive", "fixed")),
    "guest2019": (("host-poll", "host"), ("guest-poll", "host"), ("guest-poll", "host-poll")),
}


def aggregate(runs: list[dict], backend: str = "emu") -> dict:
    """summary[table][row][config][metric] = stats.summarize(...) + run ids; guest2019 also gets
    pct_of_host per repeat, against that repeat's host run."""
    out: dict = {}
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["backend"] == backend:
            cells.setdefault((r["table"], r["row"], r["config"]), []).append(r)
    for (table, row, config), rs in cells.items():
        rs = sorted(rs, key=lambda r: r["repeat"])
        ms = {}
        for name in rs[0]["metrics"]:
            ms[name] = {**summarize([r["metrics"].get(name) for r in rs]), "runs": [r["id"] for r in rs]}
        if table == "guest2019":
            host = {r["repeat"]: r for r in cells.get((table, row, "host"), [])}
            pct, ids = [], []
            for r in rs:
                ref = host.get(r["repeat"])
                if ref and r["metrics"]["rtt_mean_us"] and ref["metrics"]["rtt_mean_us"]:
                    # The ratio first: x / x is exactly 1, where (100 * x) / x may miss 100 by an ulp.
                    pct.append(100.0 * (ref["metrics"]["rtt_mean_us"] / r["metrics"]["rtt_mean_us"]))
                    ids += [r["id"], ref["id"]]
            ms["pct_of_host"] = {**summarize(pct), "runs": sorted(set(ids))}
        out.setdefault(table, {}).setdefault(row, {})[config] = ms
    return out


def _direction(a: float, b: float, band: float) -> int:
    """+1 / -1 if a is above / below b by more than band (relative to b), else 0 (the same)."""
    if b == 0:
        return 0 if a == 0 else 1
    d = (a - b) / abs(b)
    return 0 if abs(d) <= band else (1 if d > 0 else -1)


WORDS = {1: "above", -1: "below", 0: "about equal to"}


def verdict(table: str, quoted: dict[str, list[float]], measured: dict[str, float | None]) -> dict:
    """reproduced: every claimed ordering holds and every figure is within TOLERANCE of its quoted
    range; in direction only: the orderings hold; not reproduced: an ordering fails. An ordering is
    a difference beyond the table's BAND; a quoted "about equal" holds within TOLERANCE."""
    band = BAND[table]
    if any(measured.get(c) is None for c in quoted):
        return {"verdict": "n/a", "why": "a figure was not measured"}
    mid = {c: (lo + hi) / 2 for c, (lo, hi) in quoted.items()}
    broken = []
    for a, b in PAIRS[table]:
        q, m = _direction(mid[a], mid[b], band), _direction(measured[a], measured[b], band)
        # "About equal" is a claim of no effect: it holds within TOLERANCE, as a magnitude does.
        if q == 0 and _direction(measured[a], measured[b], TOLERANCE) == 0:
            continue
        if q != m:
            broken.append(f"{a} {WORDS[m]} {b} ({measured[a]:.3g} vs {measured[b]:.3g}; quoted {WORDS[q]})")
    far = [f"{c} {measured[c]:.3g} vs quoted {lo:g}" + (f"-{hi:g}" if hi != lo else "")
           for c, (lo, hi) in quoted.items()
           if not lo * (1 - TOLERANCE) <= measured[c] <= hi * (1 + TOLERANCE)]
    if broken:
        return {"verdict": "not reproduced", "why": "; ".join(broken)}
    if far:
        return {"verdict": "in direction only", "why": "orderings hold; magnitudes differ: " + "; ".join(far)}
    return {"verdict": "reproduced", "why": f"orderings hold and every figure is within {TOLERANCE:.0%} of the quoted"}


# %c0 counts every task on the CPU; the vCPU process's own CPU share is the same cost without the
# neighbours a shared machine has. Judged too, labelled as the proxy it is.
PROXY = {"c0_pct": "vcpu_cpu_pct"}


def verdicts(summary: dict, disturbed: set[str] = frozenset()) -> dict:
    """verdict[table][row or row:proxy], from the measured medians."""
    out: dict = {}
    for table in TABLES:
        for row, quoted in QUOTED[table].items():
            if row == "source":
                continue
            data_row = "rr" if row == "pct_of_host" else row
            figure = "pct_of_host" if row == "pct_of_host" else next(r.figure for r in ROWS
                                                                    if r.table == table and r.key == row)
            cells = summary.get(table, {}).get(data_row)
            if cells is None:
                continue
            for fig, key in ((figure, row), (PROXY.get(figure), f"{row}:proxy")):
                if fig is None:
                    continue
                measured = {c: cells.get(c, {}).get(fig, {}).get("median") for c in quoted}
                v = {"figure": fig, **verdict(table, quoted, measured)}
                runs = {i for c in quoted for i in cells.get(c, {}).get(fig, {}).get("runs", [])}
                if fig == "c0_pct" and runs & disturbed:
                    v["why"] += " (other processes used the CPU during some runs: %c0 counts them)"
                out.setdefault(table, {})[key] = v
    return out


def build_document(plan: TablePlan, runs: list[dict]) -> dict:
    summary = aggregate(runs)
    kvm_summary = aggregate(runs, "kvm") if "kvm" in plan.backends else None
    c0_sources = sorted({r["c0_source"] for r in runs if r["row"].startswith("idle")})
    failures = [f"{r['id']}: {f}" for r in runs for f in r["check_failures"]]
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "command": "hostd compare --table " + ",".join(plan.tables),
        "config": {
            "tables": list(plan.tables), "quick": plan.quick, "repeat": plan.repeat, "durations_s": plan.durations,
            "backends": list(plan.backends), "calibration": plan.calibration, "always_poll_ns": plan.always_poll_ns,
            "adaptive_halt_poll_ns": KVM_HALT_POLL_NS_DEFAULT, "guest2019_poll_ns": GUEST2019_POLL_NS,
            "rr_service_ns": plan.rr_service_ns, "nohz_tick_hz": NOHZ_TICK_HZ,
            "c0_source": c0_sources, "verdict_band": BAND, "verdict_tolerance": TOLERANCE,
            "pct_of_host": "host rr latency / this rr latency, per repeat (as the quoted 93.8% = 31.33 / 33.40)",
            "rr_span": "guest clock right before sending the request -> guest clock once it runs again after "
                       "the answer's interrupt",
        },
        "quoted": {t: QUOTED[t] for t in plan.tables},
        "summary": summary,
        "kvm": {"summary": kvm_summary, "cells": kvm_cells(plan), "unavailable": plan.kvm_unavailable},
        "verdicts": verdicts(summary, {r["id"] for r in runs if r["disturbed"]}),
        "disturbed_runs": [r["id"] for r in runs if r["disturbed"]],
        "checks": {"ok": not failures, "failures": failures},
        "runs": runs,
    }
