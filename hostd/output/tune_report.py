"""`hostd tune`'s output, from its document: the report printed, points.csv, the labels the plot
shares, and the sweep's progress line per point."""
from __future__ import annotations

import csv
import io as _io

from hostd.output.console import Column, report_for
from hostd.output.intervals import compact, si
from hostd.plumbing import calibration, neighbour


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def pct_ci(iv: dict) -> str:
    return compact(iv, lambda x: f"{100 * x:.1f}", "%")


def _fig(iv: dict, figure: str, higher_is_better: bool) -> str:
    if higher_is_better:
        return compact(iv, lambda x: f"{x:,.0f}", " writes/s")
    return f"{figure} " + compact(iv, si, " ns")


def point_line(p: dict, figure: str, higher_is_better: bool) -> str:
    """One sweep point in a line, for the progress output."""
    lost = p["neighbour_cpu_lost_cores"]
    return (f"budget {p['budget_ns']:,} ns: {_fig(p['figure'], figure, higher_is_better)}, "
            f"success {pct_ci(p['success_ratio'])}, host CPU {pct(p['host_cpu_frac_per_vcpu'], 2)}"
            + ("" if lost is None else f", neighbour lost {lost:.3f} cores"))


def budget_label(ns: int) -> str:
    if ns == 0:
        return "0 ns"
    if ns >= 1_000_000:
        return f"{ns / 1e6:g} ms"
    if ns >= 1000:
        return f"{ns / 1e3:g} us"
    return f"{ns} ns"


def verdict_label(rec: dict) -> str:
    """What the recommendation is, in a few words (the plot's legend, the report's headline)."""
    if rec["verdict"] == "poll":
        share = rec["share_of_best"]
        return "" if share is None else f"{share:.1%} of best"
    if rec["verdict"] == "not enough data":
        return f"not enough data: {rec['halts_per_point']:,} halts per point, about {rec['halts_needed']:,} needed"
    return rec["verdict"]


INTERVAL_COLUMNS = ("figure", "success_ratio", "wake_p50_ns", "wake_p99_ns", "ops_per_s")
PLAIN_COLUMNS = ("budget_ns", "share_of_best", "host_cpu_frac_per_vcpu", "halt_exits", "halt_successful_poll",
                 "halt_poll_invalid", "halts_per_s", "duration_s", "runs")
NEIGHBOUR_COLUMNS = ("neighbour_cpu_cores", "neighbour_cpu_lost_cores")  # with --neighbour only


def points_csv(points: list[dict], rec_budget: int) -> str:
    """One row per point; a figure with an interval becomes four columns: X, X_ci_low, X_ci_high, X_n."""
    ivs = [c for c in INTERVAL_COLUMNS if any(c in p for p in points)]
    plain = [*PLAIN_COLUMNS, *(c for c in NEIGHBOUR_COLUMNS if any(p.get(c) is not None for p in points))]
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow([*plain, *(f"{c}{s}" for c in ivs for s in ("", "_ci_low", "_ci_high", "_n")), "recommended"])
    for p in points:
        cells = [p.get(c) for c in plain]
        for c in ivs:
            iv = p.get(c) or {}
            cells += [iv.get(k) for k in ("value", "ci_low", "ci_high", "n")]
        w.writerow([*("" if v is None else v for v in cells), int(p["budget_ns"] == rec_budget)])
    return buf.getvalue()


def figure_label(workload: str, figure: str) -> str:
    """What tune's figure is, in the words of its workload."""
    if workload == "io":
        return "O_DSYNC writes/s"
    what = {"timer": "timer wake - deadline", "rr": "rr round trip"}.get(workload, "tick wake latency")
    return f"{what} {figure} (ns)"


def print_report(doc: dict, out, width: int | None = None) -> None:
    """Into `out`: a report (hostd.output.console, hostd.output.markdown) or a stream, at `width`."""
    from rich.text import Text  # lazy: rich costs start-up time every hostd command would pay; only printing needs it

    report = report_for(out, width)
    hib = doc["higher_is_better"]
    secs = doc["measured_s_per_point"]
    more = f" ({doc['duration_s']:g} s, then measured longer: not enough halts)" if doc["rounds"] else ""
    wakes = [k for k in ("wake_p50_ns", "wake_p99_ns") if hib or k != f"wake_{doc['figure']}_ns"]
    nb = doc.get("neighbour")
    cols = [Column(c) for c in (doc["figure_label"], "share of best", "poll success", "host CPU / vCPU",
                                *(("neighbour lost",) if nb else ()), "halts (/s)", *(f"wake {k[5:8]} ns" for k in wakes))]
    rec = doc["recommendation"]
    number = (lambda x: f"{x:,.0f}") if hib else si
    rows = []
    for p in doc["points"]:
        mark = " *" if p["budget_ns"] == rec["budget_ns"] else ""
        rate = "-" if p["halts_per_s"] is None else f"{p['halts_per_s']:,.{1 if p['halts_per_s'] < 10 else 0}f}"
        lost = p.get("neighbour_cpu_lost_cores")
        cells = (f"{p['budget_ns']:,}{mark}", compact(p["figure"], number), pct(p["share_of_best"]),
                 pct_ci(p["success_ratio"]), pct(p["host_cpu_frac_per_vcpu"], 2),
                 *((("-" if lost is None else f"{lost:.3f} cores"),) if nb else ()), f"{p['halt_exits']:,} ({rate})",
                 *(compact(p[k], si) for k in wakes))
        rows.append([Text(c) for c in cells])  # Text: brackets are data here, not rich markup
    report.table(f"hostd tune --workload {doc['workload']}: policy fixed, {secs:g} s per point{more}, "
                  f"{doc['vcpus']} vCPU(s); figures: value [95% interval], ? = unbounded",
                  [Column("halt_poll_ns")], [cols], rows)
    if nb:
        report.print(f"neighbour: {neighbour.label(nb['duty'], nb['period_ns'])} on each vCPU's CPU; "
                      "'neighbour lost' is the CPU it got alone (before the vCPUs ran) less what it got beside "
                      "them, in cores")
    if doc["backend"] == "emu":
        report.print(f"emulator calibration: {calibration.name_of(doc['calibration'])}")
    idle = rec["idle_cost"]
    label = verdict_label(rec)
    report.print(Text("Recommendation: ", style="bold") + Text(
        f"halt_poll_ns = {rec['budget_ns']:,} ({budget_label(rec['budget_ns'])}){': ' + label if label else ''}; "
        f"{rec['reason']}. Poll success there {pct_ci(rec['success_ratio'])}. "
        f"Cost per idle vCPU at that budget: {pct(idle['cpu_frac_per_vcpu'], 2)} of a core ({idle['from']}"
        + (f", tick {idle['tick_hz']:g} Hz" if "tick_hz" in idle else "") + ")."))
    report.print(Text("The test: ", style="bold") + Text(doc["recommendation"]["test"]))
    o = doc["optimum"]
    if o.get("budget_ns") is None:
        report.print(f"Offline optimum: {o.get('note', 'not computed')}")
        return
    rows = []
    for r in o["policies"]:
        ratio = r["over_optimum_ratio"]
        rows.append([r["policy"] + ("  <- optimum" if r["is_optimum"] else ""), f"{r['cost_per_halt_ns']:,.0f}",
                     f"+{r['over_optimum_ns']:,.0f} ns" + (f" ({ratio:.2f}x)" if ratio is not None else ""),
                     pct(r["success_ratio"]), f"{r['poll_cpu_per_halt_ns']:,.0f}"])
    report.table(f"Offline optimum over {o['halts_used']:,} recorded halts (halt p50 {o['halt_p50_ns']:,.0f} ns): "
                  f"block-path penalty P = {o['penalty_ns']:,.0f} ns ({o['penalty_from']})",
                  [Column("policy (replayed)", "left")],
                  [[Column(c) for c in ("cost / halt ns", "over optimum", "poll success", "poll CPU / halt ns")]], rows)
    report.print(Text("Offline optimum: ", style="bold") + Text(
        f"fixed halt_poll_ns = {o['budget_ns']:,} ({budget_label(o['budget_ns'])}) at {o['cost_per_halt_ns']:,.0f} ns "
        f"per halt (cost = poll CPU + P per blocked halt)."
        + (" A 1 ns budget only catches halts whose interrupt was already pending at HLT: in practice, do not "
           "poll." if o["budget_ns"] == 1 else "")))
