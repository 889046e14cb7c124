"""`hostd tune`: sweep the fixed halt-poll budget, draw the trade-off, recommend a setting.

For each of K budgets (0 and K-1 log-spaced in --range) one VM runs the workload with policy
`fixed` at that budget; per point: the workload figure, the poll success ratio
(halt_successful_poll / halt_exits) and the host CPU per vCPU. Then:

- the recommendation: the smallest budget whose figure reaches --target of the best figure. For
  a figure where higher is better (io writes/s) the share is figure / best, as the seed's "99% of
  idle=poll". For a latency (timer and idle wake latency, lower is better) it is the share of the
  reduction polling can buy: (figure at 0 - figure) / (figure at 0 - best); a point qualifies
  when it removes at least --target of the latency the best point removes. When no
  swept budget ended at least MIN_HIT_RATIO of the halts inside the poll, polling cannot have
  bought anything and the recommendation is 0 whatever the noise in the figures says. Its cost
  per idle vCPU comes from one more run, of the idle workload at that budget (for --workload
  idle, the sweep point itself).
- the offline optimum (hostd.experiments.optimum): from the halt durations recorded during the sweep, the
  fixed budget that minimises CPU spent polling + the block-path penalty per blocked halt, and how
  far the swept fixed budgets, upstream adaptive and guest-haltpoll, replayed through
  hostd.experiments.replay's engine on the same trace, are from it.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io as _io
import json
import math
import os
import signal
import sys
from dataclasses import dataclass

import numpy as np

from hostd.experiments import optimum as opt
from hostd.experiments.progress import Progress
from hostd.plumbing.errors import UsageError
from hostd.plumbing.orphans import remove_stale_segments
from hostd.plumbing.output import atomic_write, write_json
from hostd.plumbing.policy_options import tsc_khz_from_args
from hostd.experiments.replay import replay
from hostd.experiments.report import check_failures
from hostd.plumbing.results import vcpu_samples
from hostd.experiments.run import Terminated, on_sigterm, measure
from hostd.plumbing.spec import parse_float, parse_int, add_vm_options, parse_duration, vm_spec_from_args
from hostd.plumbing.vm import ChildDied
from vcpu.halt import PATH_BLOCK, PATH_POLL
from vcpu.policy import KVM_HALT_POLL_NS_DEFAULT, U32_MAX, PolicySpec

EXIT_CHECK_FAILED = 1
EXIT_SIGNAL = 130

DEFAULT_RANGE = "10us:2ms"
DEFAULT_POINTS = 7
DEFAULT_DURATION = "2"
DEFAULT_TARGET = 0.99
MAX_POINTS = 40
# Below this share of halts ending inside the poll at every swept budget, polling bought nothing.
MIN_HIT_RATIO = 0.01
# The offline replays use at most this many halts (an even subsample of the pooled trace).
MAX_TRACE = 100_000
RUN_OVERHEAD_S = 0.6  # start-up + teardown per VM, for the progress bar's ETA only
_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

COST_MODEL = (
    "Offline optimum: for a fixed budget B, a halt of h ns (HLT to interrupt) costs h if it ends "
    "inside the poll (0 < B, h <= B: CPU spent polling) and B + P if not (the budget polled for "
    "nothing, then the block path), where P, the block-path penalty, is measured during the "
    "sweep: median block-path wake latency minus median poll-path wake latency on this machine. "
    "The optimum is the B minimising the mean cost over every halt recorded in the sweep; it lies "
    "at 0 or at one of the recorded durations, so it is found exactly. Fixed, adaptive and "
    "guest-haltpoll are replayed on the same trace with hostd replay's engine and priced the same "
    "way (poll CPU + P per blocked halt).")


# --- plan -------------------------------------------------------------------------------------

@dataclass
class Plan:
    workload: str
    budgets: list[int]
    duration_s: float
    target: float
    figure: str  # "ops_per_s" | "p50" | "p99"
    tsc_khz: int
    args: argparse.Namespace  # the VM/workload options, for vm_spec_from_args

    @property
    def higher_is_better(self) -> bool:
        return self.figure == "ops_per_s"

    def figure_label(self) -> str:
        if self.workload == "io":
            return "O_DSYNC writes/s"
        what = "timer wake - deadline" if self.workload == "timer" else "tick wake latency"
        return f"{what} {self.figure} (ns)"

    def vm_spec(self, budget_ns: int, workload: str | None = None):
        args = self.args
        if workload is not None and workload != args.workload:
            args = copy.copy(args)
            args.workload = workload
        spec = vm_spec_from_args(args, PolicySpec(policy="fixed", host_policy="fixed", halt_poll_ns=budget_ns))
        spec.duration_s = self.duration_s
        spec.sample_capacity = int(min(4_000_000, max(65_536, self.duration_s * 200_000)))
        return spec


def parse_ns(option: str, text: str) -> int:
    """A duration in whole ns: 250000, 250us, 0.25ms, 1s."""
    t = text.strip().lower()
    unit = next((u for u in ("ns", "us", "ms", "s") if t.endswith(u)), "")
    number = t[: len(t) - len(unit)] if unit else t
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"{option}: expected a duration like 50000, 50us or 2ms, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{option}: expected a duration >= 0, got {text!r}")
    return int(round(value * _UNITS[unit or "ns"]))


def parse_range(text: str) -> tuple[int, int]:
    lo_text, sep, hi_text = text.partition(":")
    if not sep:
        raise UsageError(f"--range: expected LO:HI (e.g. 10us:2ms), got {text!r}")
    lo, hi = parse_ns("--range", lo_text), parse_ns("--range", hi_text)
    if lo < 1:
        raise UsageError(f"--range: LO must be at least 1 ns (0 is always swept), got {text!r}")
    if hi > U32_MAX:
        raise UsageError(f"--range: HI must be at most {U32_MAX} ns (halt_poll_ns is an unsigned int), got {text!r}")
    if lo >= hi:
        raise UsageError(f"--range: LO must be below HI, got {text!r}")
    return lo, hi


def _round3(x: float) -> int:
    """Round to 3 significant digits: budgets read as 21500, not 21544."""
    if x < 1000:
        return int(round(x))
    digits = int(math.floor(math.log10(x))) - 2
    return int(round(x / 10**digits) * 10**digits)


def sweep_budgets(lo: int, hi: int, points: int) -> list[int]:
    """0, then points-1 budgets log-spaced from lo to hi inclusive (ends exact, the rest rounded)."""
    k = points - 1
    inner = [_round3(lo * (hi / lo) ** (i / (k - 1))) for i in range(1, k - 1)]
    budgets = [0, lo, *inner, hi]
    if len(set(budgets)) != len(budgets) or budgets != sorted(budgets):
        raise UsageError(f"--points: {points} points do not fit in {lo}:{hi} ns as distinct budgets; "
                         f"use fewer points or a wider --range")
    return budgets


def plan_from_args(args: argparse.Namespace) -> Plan:
    points = parse_int("--points", args.points, 3, MAX_POINTS)
    lo, hi = parse_range(args.range)
    budgets = sweep_budgets(lo, hi, points)
    target = parse_float("--target", args.target, 0.0, 1.0)
    duration = parse_duration(args.duration)
    if args.figure is not None:
        if args.workload == "io":
            raise UsageError("--figure: io's figure is writes/s; --figure picks a latency percentile "
                             "for --workload timer or idle")
        if args.figure not in ("p50", "p99"):
            raise UsageError(f"--figure: expected p50 or p99, got {args.figure!r}")
    figure = "ops_per_s" if args.workload == "io" else (args.figure or "p50")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: {args.out!r} exists and is not a directory")
    plan = Plan(workload=args.workload, budgets=budgets, duration_s=duration, target=target, figure=figure,
                tsc_khz=tsc_khz_from_args(args), args=args)
    plan.vm_spec(0)  # validate every VM/workload option now, before anything starts
    return plan


# --- measuring --------------------------------------------------------------------------------

def _measure(spec, tsc_khz: int):
    """One run: (§8 result, latency, path, halt_ns pooled over the vCPUs). Retries once if a child died."""
    for attempt in (1, 2):
        try:
            result, vm = measure(spec, tsc_khz, progress=False)
        except (ChildDied, TimeoutError) as exc:
            if attempt == 2:
                raise
            sys.stderr.write(f"hostd: budget {spec.policy.halt_poll_ns} ns: {exc}; retrying the run once\n")
            continue
        parts = [vcpu_samples(vm, i) for i in range(spec.vcpus)]
        return (result, *(np.concatenate([p[k] for p in parts]) for k in range(3)))
    raise AssertionError("unreachable")


def point_of(plan: Plan, budget: int, result: dict, lat: np.ndarray) -> dict:
    """The figures of one sweep point, from its §8 result and pooled wake latencies."""
    vcpus = result["vcpus"]
    exits = sum(v["stats"]["halt_exits"] for v in vcpus)
    hits = sum(v["stats"]["halt_successful_poll"] for v in vcpus)
    w = result["workload"]
    p50, p99 = (None, None) if lat.size == 0 else (int(x) for x in np.percentile(lat, (50, 99)))
    point = {
        "budget_ns": budget,
        "figure": None,
        "share_of_best": None,
        "success_ratio": hits / exits if exits else None,
        "host_cpu_frac_per_vcpu": sum(v["host"]["cpu_frac"] for v in vcpus) / len(vcpus),
        "halt_exits": exits,
        "halt_successful_poll": hits,
        "halt_poll_invalid": sum(v["stats"]["halt_poll_invalid"] for v in vcpus),
        "halts_per_s": exits / result["spec"]["duration_s"] if result["spec"]["duration_s"] else None,
        "wake_p50_ns": p50,
        "wake_p99_ns": p99,
        "check_failures": check_failures(result),
        "pids": [v["pid"] for v in vcpus],
    }
    if w["name"] == "io":
        point["ops_per_s"] = w["ops_per_s"]
        point["figure"] = w["ops_per_s"]
    else:
        point["figure"] = p50 if plan.figure == "p50" else p99
    return point


def measure_sweep(plan: Plan, progress: bool) -> tuple[list[dict], dict]:
    """Run every point; returns (points, pooled samples {"latency", "path", "halt_ns"})."""
    weight = plan.duration_s + RUN_OVERHEAD_S
    n = len(plan.budgets)
    points, lats, paths, halts = [], [], [], []
    with Progress([weight] * (n + (plan.workload != "idle")), progress) as bar:
        for k, budget in enumerate(plan.budgets, 1):
            bar.start_cell(f"[{k}/{n}] {plan.workload} at halt_poll_ns {budget:,}", weight)
            result, lat, path, halt = _measure(plan.vm_spec(budget), plan.tsc_khz)
            p = point_of(plan, budget, result, lat)
            points.append(p)
            lats.append(lat)
            paths.append(path)
            halts.append(halt)
            bar.end_cell(weight, f"  [{k}/{n}] budget {budget:,} ns: {_fig(plan, p['figure'])}, "
                         f"success {_pct(p['success_ratio'])}, host CPU {_pct(p['host_cpu_frac_per_vcpu'], 2)}")
        rec = recommend(points, plan.target, plan.higher_is_better)
        if plan.workload == "idle":
            idle = {"cpu_frac_per_vcpu": next(p["host_cpu_frac_per_vcpu"] for p in points
                                              if p["budget_ns"] == rec["budget_ns"]),
                    "from": "the sweep point itself"}
        else:
            bar.start_cell(f"idle guest at halt_poll_ns {rec['budget_ns']:,}", weight)
            spec = plan.vm_spec(rec["budget_ns"], workload="idle")
            result = _measure(spec, plan.tsc_khz)[0]
            w = result["workload"]
            idle = {"cpu_frac_per_vcpu": w["cpu_frac_per_vcpu"], "halts_per_s": w["halts_per_s"],
                    "failed_polls_per_s": w["failed_polls_per_s"], "tick_hz": spec.tick_hz, "vcpus": spec.vcpus,
                    "duration_s": result["spec"]["duration_s"], "from": "an idle run at that budget",
                    "pids": [v["pid"] for v in result["vcpus"]],
                    "check_failures": check_failures(result)}
            bar.end_cell(weight, f"  idle at {rec['budget_ns']:,} ns: {_pct(w['cpu_frac_per_vcpu'], 2)} of a core "
                         f"per vCPU")
        rec["idle_cost"] = idle
    samples = {"latency": np.concatenate(lats), "path": np.concatenate(paths), "halt_ns": np.concatenate(halts)}
    return points, {"recommendation": rec, **samples}


# --- the recommendation (pure) ------------------------------------------------------------------

def recommend(points: list[dict], target: float, higher_is_better: bool) -> dict:
    """Fill each point's share_of_best; return the recommendation (see the module docstring).

    points: dicts with budget_ns (ascending, the first 0), figure (None = not measured) and
    success_ratio. Higher is better: share = figure / best. Lower is better (a latency): share =
    (figure at 0 - figure) / (figure at 0 - best), the part of the latency reduction polling can
    buy that this budget buys; a latency has no natural zero (the wake path costs something
    whatever the budget), so "99% of the best" read as best / figure would turn a 30 ns wobble on a
    200 ns poll-path latency into a miss."""
    figs = [p["figure"] for p in points if p["figure"] is not None]
    base = points[0]["figure"]
    if not figs or base is None:
        for p in points:
            p["share_of_best"] = None
        return _rec(points[0], None, None, None, True,
                    "budget 0's workload figure was not measured; nothing to compare with, budget 0")
    best = max(figs) if higher_is_better else min(figs)
    for p in points:
        f = p["figure"]
        if f is None:
            p["share_of_best"] = None
        elif higher_is_better:
            p["share_of_best"] = f / best if best > 0 else 1.0
        else:
            p["share_of_best"] = (base - f) / (base - best) if base > best else 1.0
    threshold = best * target if higher_is_better else base - target * (base - best)
    best_budget = next(p["budget_ns"] for p in points if p["figure"] == best)
    hit = max((p["success_ratio"] or 0.0 for p in points if p["budget_ns"] > 0), default=0.0)
    if hit < MIN_HIT_RATIO:
        reason = (f"polling buys nothing here: at no swept budget did {MIN_HIT_RATIO:.0%} of the halts end "
                  f"inside the poll (at most {hit:.1%}), so the figures differ by noise only; budget 0")
        return _rec(points[0], best, best_budget, threshold, True, reason)
    chosen = next(p for p in points if p["share_of_best"] is not None and p["share_of_best"] >= target - 1e-12)
    if chosen["budget_ns"] == 0:
        reason = (f"polling buys nothing here: budget 0 already reaches {chosen['share_of_best']:.1%} of the best "
                  f"figure (target {target:.0%})")
        return _rec(chosen, best, best_budget, threshold, True, reason)
    reason = (f"the smallest swept budget reaching {target:.0%} of the best figure "
              f"({chosen['share_of_best']:.1%}; best at {best_budget:,} ns)")
    return _rec(chosen, best, best_budget, threshold, False, reason)


def _rec(p: dict, best: float | None, best_budget: int | None, threshold: float | None, nothing: bool,
         reason: str) -> dict:
    return {"budget_ns": p["budget_ns"], "figure": p["figure"], "share_of_best": p["share_of_best"],
            "success_ratio": p["success_ratio"], "host_cpu_frac_per_vcpu": p["host_cpu_frac_per_vcpu"],
            "best_figure": best, "best_budget_ns": best_budget, "target_figure": threshold,
            "polling_buys_nothing": nothing, "reason": reason}


# --- the offline optimum ------------------------------------------------------------------------------

def _p50(x: np.ndarray) -> float | None:
    return float(np.percentile(x, 50)) if x.size else None


def offline(budgets: list[int], halts: np.ndarray, latency: np.ndarray, path: np.ndarray,
            extra_fixed: list[int] = ()) -> dict:
    """The optimum over the pooled trace and every policy's distance from it (hostd.experiments.replay engine)."""
    poll_p50, block_p50 = _p50(latency[path == PATH_POLL]), _p50(latency[path == PATH_BLOCK])
    penalty, how = opt.penalty_from_latencies(poll_p50, block_p50)
    trace = np.asarray(halts, dtype=np.int64)
    recorded = int(trace.size)
    if trace.size > MAX_TRACE:
        # An even subsample keeps the mix of durations; the stateful policies (adaptive,
        # guest-haltpoll) then see a thinned sequence, as they already see run boundaries.
        trace = trace[np.linspace(0, trace.size - 1, MAX_TRACE).astype(np.int64)]
    doc = {"penalty_ns": penalty, "penalty_from": how, "poll_p50_ns": poll_p50, "block_p50_ns": block_p50,
           "halts_recorded": recorded, "halts_used": int(trace.size)}
    if trace.size == 0:
        doc.update(budget_ns=None, cost_per_halt_ns=None, policies=[], note="no halt was recorded")
        return doc
    best = opt.optimal_budget(trace, penalty)
    doc.update(budget_ns=best.budget_ns, cost_per_halt_ns=best.cost_per_halt_ns,
               halt_p50_ns=float(np.percentile(trace, 50)), halt_p99_ns=float(np.percentile(trace, 99)))
    halts_list = trace.tolist()
    specs = [(f"fixed {b:,}", PolicySpec("fixed", "fixed", b)) for b in
             sorted(set(budgets) | set(extra_fixed) | {best.budget_ns})]
    specs += [(f"adaptive (max {KVM_HALT_POLL_NS_DEFAULT:,})",
               PolicySpec("adaptive", "adaptive", KVM_HALT_POLL_NS_DEFAULT)),
              ("guest-haltpoll (defaults)", PolicySpec("guest-haltpoll", "none", 0))]
    rows = []
    for name, spec in specs:
        s = replay(spec, halts_list).summary
        cost = opt.replay_cost(s, penalty) / s["halts"]
        rows.append({"policy": name, "spec": spec.to_dict(), "cost_per_halt_ns": cost,
                     "over_optimum_ns": cost - best.cost_per_halt_ns,
                     "over_optimum_ratio": cost / best.cost_per_halt_ns if best.cost_per_halt_ns else None,
                     "success_ratio": s["success_ratio"], "poll_cpu_per_halt_ns": s["poll_cpu_ns"] / s["halts"],
                     "blocks": s["blocks"], "is_optimum": spec.policy == "fixed" and spec.halt_poll_ns == best.budget_ns})
    doc["policies"] = rows
    return doc


# --- output -------------------------------------------------------------------------------------------

def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _fig(plan: Plan, x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f} writes/s" if plan.higher_is_better else f"{plan.figure} {x:,.0f} ns"


def budget_label(ns: int) -> str:
    if ns == 0:
        return "0 ns"
    if ns >= 1_000_000:
        return f"{ns / 1e6:g} ms"
    if ns >= 1000:
        return f"{ns / 1e3:g} us"
    return f"{ns} ns"


def points_csv(points: list[dict], rec_budget: int) -> str:
    cols = ("budget_ns", "figure", "share_of_best", "success_ratio", "host_cpu_frac_per_vcpu", "halt_exits",
            "halt_successful_poll", "halt_poll_invalid", "halts_per_s", "wake_p50_ns", "wake_p99_ns", "ops_per_s")
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow([*cols, "recommended"])
    for p in points:
        w.writerow([*("" if p.get(c) is None else p[c] for c in cols), int(p["budget_ns"] == rec_budget)])
    return buf.getvalue()


def plot(path: str, doc: dict) -> None:
    """Workload figure against host CPU per vCPU, one labelled point per budget."""
    from hostd.experiments.plots import _pyplot, _save

    plt = _pyplot()
    pts = [p for p in doc["points"] if p["figure"] is not None]
    rec = doc["recommendation"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    x = [100 * p["host_cpu_frac_per_vcpu"] for p in pts]
    y = [p["figure"] for p in pts]
    ax.plot(x, y, "-o", color="#1f77b4", ms=6, label="fixed budget (sweep)")
    for i, (p, xi, yi) in enumerate(zip(pts, x, y)):  # labels alternate above/below: neighbours often crowd
        ax.annotate(budget_label(p["budget_ns"]), (xi, yi), textcoords="offset points",
                    xytext=(6, 6) if i % 2 == 0 else (6, -13), fontsize=9)
    chosen = [(xi, yi) for p, xi, yi in zip(pts, x, y) if p["budget_ns"] == rec["budget_ns"]]
    if chosen:
        share = ("polling buys nothing" if rec["polling_buys_nothing"] else
                 "" if rec["share_of_best"] is None else f"{rec['share_of_best']:.1%} of best")
        share = f" ({share})" if share else ""
        ax.plot(*chosen[0], "*", ms=18, color="#ff7f0e", zorder=5,
                label=f"recommended: {budget_label(rec['budget_ns'])}{share}")
    if rec.get("target_figure") is not None:
        what = "of the best figure" if doc["higher_is_better"] else "of the latency reduction over budget 0"
        ax.axhline(rec["target_figure"], ls="--", color="#2ca02c", lw=1, label=f"target: {doc['target']:.0%} {what}")
    if not doc["higher_is_better"]:
        ax.set_yscale("log")
    ax.margins(x=0.1, y=0.12)  # room for the labels of the outermost points
    ax.set_xlabel("host CPU per vCPU (% of one core)")
    ax.set_ylabel(doc["figure_label"] + (" (log scale)" if not doc["higher_is_better"] else ""))
    ax.set_title(f"hostd tune --workload {doc['workload']}: figure vs host CPU, points labelled by halt_poll_ns")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _save(plt, fig, path)


def print_report(doc: dict, out) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, width=None if out.isatty() else 150)
    hib = doc["higher_is_better"]
    t = Table(title=f"hostd tune --workload {doc['workload']}: policy fixed, {doc['duration_s']:g} s per point, "
              f"{doc['vcpus']} vCPU(s)", title_justify="left")
    for col in ("halt_poll_ns", doc["figure_label"], "share of best", "poll success", "host CPU / vCPU",
                "halts/s", "wake p50 ns", "wake p99 ns"):
        t.add_column(col, justify="right")
    rec = doc["recommendation"]
    for p in doc["points"]:
        f = p["figure"]
        mark = " *" if p["budget_ns"] == rec["budget_ns"] else ""
        t.add_row(f"{p['budget_ns']:,}{mark}", "-" if f is None else f"{f:,.0f}", _pct(p["share_of_best"]),
                  _pct(p["success_ratio"]), _pct(p["host_cpu_frac_per_vcpu"], 2),
                  "-" if p["halts_per_s"] is None else f"{p['halts_per_s']:,.0f}",
                  "-" if p["wake_p50_ns"] is None else f"{p['wake_p50_ns']:,}",
                  "-" if p["wake_p99_ns"] is None else f"{p['wake_p99_ns']:,}")
    console.print(t)
    share = "figure / best" if hib else "(figure at 0 - figure) / (figure at 0 - best): lower is better"
    idle = rec["idle_cost"]
    console.print(Text("Recommendation: ", style="bold") + Text(
        f"halt_poll_ns = {rec['budget_ns']:,} ({budget_label(rec['budget_ns'])}); {rec['reason']}. "
        f"Share = {share}, target {doc['target']:.0%}. Poll success there {_pct(rec['success_ratio'])}. "
        f"Cost per idle vCPU at that budget: {_pct(idle['cpu_frac_per_vcpu'], 2)} of a core ({idle['from']}"
        + (f", tick {idle['tick_hz']:g} Hz" if "tick_hz" in idle else "") + ")."))
    o = doc["optimum"]
    if o.get("budget_ns") is None:
        console.print(f"Offline optimum: {o.get('note', 'not computed')}")
        return
    t = Table(title=f"Offline optimum over {o['halts_used']:,} recorded halts (halt p50 {o['halt_p50_ns']:,.0f} ns): "
              f"block-path penalty P = {o['penalty_ns']:,.0f} ns ({o['penalty_from']})", title_justify="left")
    for col in ("policy (replayed)", "cost / halt ns", "over optimum", "poll success", "poll CPU / halt ns"):
        t.add_column(col, justify="right" if col != "policy (replayed)" else "left")
    for r in o["policies"]:
        ratio = r["over_optimum_ratio"]
        t.add_row(r["policy"] + ("  <- optimum" if r["is_optimum"] else ""), f"{r['cost_per_halt_ns']:,.0f}",
                  f"+{r['over_optimum_ns']:,.0f} ns" + (f" ({ratio:.2f}x)" if ratio is not None else ""),
                  _pct(r["success_ratio"]), f"{r['poll_cpu_per_halt_ns']:,.0f}")
    console.print(t)
    console.print(Text("Offline optimum: ", style="bold") + Text(
        f"fixed halt_poll_ns = {o['budget_ns']:,} ({budget_label(o['budget_ns'])}) at {o['cost_per_halt_ns']:,.0f} ns "
        f"per halt (cost = poll CPU + P per blocked halt)."
        + (" A 1 ns budget only catches halts whose interrupt was already pending at HLT: in practice, do not "
           "poll." if o["budget_ns"] == 1 else "")))


# --- CLI ----------------------------------------------------------------------------------------------

DESCRIPTION = (
    "Run the workload with policy fixed at K budgets (0 and K-1 log-spaced in --range), recording per point "
    "the workload figure (io: writes/s; timer: wake - deadline latency; idle: tick wake latency), the poll "
    "success ratio (halt_successful_poll / halt_exits) and host CPU per vCPU. Recommends the smallest budget "
    "reaching --target of the best figure (io: figure / best; for a latency, lower is better, the share is of "
    "the reduction polling buys over budget 0: (figure at 0 - figure) / (figure at 0 - best)), with its cost "
    "per idle vCPU from an idle run at that budget; if no budget ended 1% of halts inside the poll, polling "
    "buys nothing and the answer is 0. " + COST_MODEL)
EXAMPLE = "example: hostd tune --workload timer --interval-us 200 --range 20us:1ms --points 6 --duration 1"


def register(sub: argparse._SubParsersAction) -> None:
    short = "sweep the fixed poll budget, draw the trade-off, recommend a setting"
    p = sub.add_parser("tune", help=short, description=DESCRIPTION, epilog=EXAMPLE)
    add_vm_options(p)
    g = p.add_argument_group("sweep")
    g.add_argument("--range", default=DEFAULT_RANGE, metavar="LO:HI",
                   help=f"smallest and largest non-zero budget, ns or with a unit (ns, us, ms, s); budget 0 is "
                   f"always swept too (default {DEFAULT_RANGE})")
    g.add_argument("--points", default=str(DEFAULT_POINTS), metavar="K",
                   help=f"number of budgets including 0, at least 3 (default {DEFAULT_POINTS})")
    g.add_argument("--duration", default=DEFAULT_DURATION, metavar="SECONDS",
                   help=f"seconds measured per point, and for the idle-cost run (default {DEFAULT_DURATION})")
    g.add_argument("--target", default=str(DEFAULT_TARGET), metavar="SHARE",
                   help=f"share of the best figure the recommendation must reach, in (0, 1] (default "
                   f"{DEFAULT_TARGET}: the seed's 99%% of idle=poll)")
    g.add_argument("--figure", metavar="{p50,p99}",
                   help="timer and idle: which wake-latency percentile is the figure (default p50)")
    g.add_argument("--tsc-khz", metavar="KHZ",
                   help="TSC rate for the latencies in cycles (default: read from the machine)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--out", metavar="DIR", help="write tune.json, points.csv, tradeoff.png and sweep.halts "
                   "(every recorded halt, ns per line, for hostd replay --halts) into DIR")
    p.set_defaults(func=main)


def build_document(plan: Plan, points: list[dict], extra: dict) -> dict:
    rec = extra["recommendation"]
    failures = [f"budget {p['budget_ns']}: {f}" for p in points for f in p["check_failures"]]
    failures += [f"idle run: {f}" for f in rec["idle_cost"].get("check_failures", [])]
    return {
        "command": "hostd tune",
        "workload": plan.workload,
        "vcpus": plan.vm_spec(0).vcpus,
        "duration_s": plan.duration_s,
        "target": plan.target,
        "figure": plan.figure,
        "figure_label": plan.figure_label(),
        "higher_is_better": plan.higher_is_better,
        "share_definition": ("figure / best" if plan.higher_is_better
                             else "(figure at budget 0 - figure) / (figure at budget 0 - best)"),
        "budgets_ns": plan.budgets,
        "tsc_khz": plan.tsc_khz,
        "points": points,
        "recommendation": rec,
        "optimum": offline(plan.budgets, extra["halt_ns"], extra["latency"], extra["path"],
                           extra_fixed=[rec["budget_ns"]]),
        "cost_model": COST_MODEL,
        "checks": {"ok": not failures, "failures": failures},
    }


def main(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    remove_stale_segments()
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        points, extra = measure_sweep(plan, progress=True)
    except (KeyboardInterrupt, Terminated):
        sys.stderr.write("hostd: tune interrupted; every process stopped and its segment removed\n")
        return EXIT_SIGNAL
    except (ChildDied, TimeoutError) as exc:  # twice at one point: _measure retries once
        sys.stderr.write(f"hostd: tune aborted: {exc}; the VM was stopped and cleaned up\n")
        return EXIT_CHECK_FAILED
    finally:
        signal.signal(signal.SIGTERM, old)
    doc = build_document(plan, points, extra)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        atomic_write(os.path.join(args.out, "points.csv"), points_csv(points, doc["recommendation"]["budget_ns"]))
        atomic_write(os.path.join(args.out, "sweep.halts"), "".join(f"{h}\n" for h in extra["halt_ns"].tolist()))
        plot(os.path.join(args.out, "tradeoff.png"), doc)
        doc["files"] = ["tune.json", "points.csv", "tradeoff.png", "sweep.halts"]
        write_json(os.path.join(args.out, "tune.json"), doc)
    if args.json:
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_report(doc, sys.stdout)
        if args.out:
            sys.stdout.write(f"results: {args.out}/ (tune.json, points.csv, tradeoff.png, sweep.halts)\n")
    for f in doc["checks"]["failures"]:
        sys.stderr.write(f"hostd: check failed: {f}\n")
    return 0 if doc["checks"]["ok"] else EXIT_CHECK_FAILED
