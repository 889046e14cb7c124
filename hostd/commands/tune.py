"""`hostd tune`: sweep the fixed halt-poll budget, draw the trade-off, recommend a setting.

For each of K budgets (0 and K-1 log-spaced in --range) one VM runs the workload with policy
`fixed` at that budget; per point: the workload figure, the poll success ratio
(halt_successful_poll / halt_exits) and the host CPU per vCPU. The figure and the success ratio
carry 95% intervals (hostd.analysis.stats): a latency percentile its distribution-free interval
from order statistics, io's writes/s a batch-means interval, the success ratio Wilson's.

- the recommendation is a decision with a test (TEST below): a budget counts only if its poll
  success is distinguishably above MIN_HIT_RATIO; polling's gain is real only where a counting
  budget's interval and budget 0's do not overlap; the answer is the smallest such budget whose
  interval reaches within --target of the best one's (not distinguishably worse). No budget
  counting: polling buys nothing, 0. No distinguishable gain while a gain worth having is still
  possible: the data cannot decide, so every point is measured longer (up to --max-duration per
  point) and, if that is still not enough, tune says "not enough halts" and stays at 0. The
  recommendation's cost per idle vCPU comes from one more run, of the idle workload at that budget
  (for --workload idle, the sweep point itself).
- the offline optimum (hostd.analysis.optimum): from the halt durations recorded during the sweep, the
  fixed budget that minimises CPU spent polling + the block-path penalty per blocked halt, and how
  far the swept fixed budgets, upstream adaptive and guest-haltpoll, replayed through
  hostd.commands.replay's engine on the same trace, are from it.
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

from hostd.analysis import optimum as opt
from hostd.analysis import stats
from hostd.output.progress import Progress
from hostd.analysis.stats import (Interval, batch_mean_ci, compact, interval, min_n_for_quantile, quantile_ci, scaled_n, si, wilson)
from hostd.plumbing import calibration, neighbour
from hostd.plumbing.errors import UsageError
from hostd.plumbing.orphans import remove_stale_segments
from hostd.plumbing.output import atomic_write, write_json
from hostd.plumbing.policy_options import tsc_khz_from_args
from hostd.commands.replay import replay
from hostd.output.report import check_failures
from hostd.plumbing.results import vcpu_samples
from hostd.measure.window import Terminated, measure, on_sigterm
from hostd.plumbing.spec import parse_float, parse_int, add_vm_options, parse_duration, vm_spec_from_args
from hostd.plumbing.units import parse_ns
from hostd.plumbing.vm import ChildDied
from vcpu.abi import PATH_BLOCK, PATH_POLL
from vcpu.policy import KVM_HALT_POLL_NS_DEFAULT, U32_MAX, PolicySpec

EXIT_CHECK_FAILED = 1
EXIT_SIGNAL = 130

DEFAULT_RANGE = "10us:2ms"
DEFAULT_POINTS = 7
DEFAULT_DURATION = "2"
DEFAULT_TARGET = 0.99
DEFAULT_MAX_FACTOR = 5  # --max-duration defaults to this many times --duration
MAX_ROUNDS = 3  # measuring longer: at most this many more runs per point
MAX_POINTS = 40
# A budget whose poll success is not distinguishably above this share of the halts catches
# nothing worth its CPU; when no budget does better, polling bought nothing.
MIN_HIT_RATIO = 0.01
# The smallest gain worth polling for, as a share of budget 0's figure (when --target asks for less).
MIN_GAIN = 0.01
# The offline replays use at most this many halts (an even subsample of the pooled trace).
MAX_TRACE = 100_000
RUN_OVERHEAD_S = 0.6  # start-up + teardown per VM, for the progress bar's ETA only

COST_MODEL = (
    "Offline optimum: for a fixed budget B, a halt of h ns (HLT to interrupt) costs h if it ends "
    "inside the poll (0 < B, h <= B: CPU spent polling) and B + P if not (the budget polled for "
    "nothing, then the block path), where P, the block-path penalty, is measured during the "
    "sweep: median block-path wake latency minus median poll-path wake latency on this machine. "
    "The optimum is the B minimising the mean cost over every halt recorded in the sweep; it lies "
    "at 0 or at one of the recorded durations, so it is found exactly. Fixed, adaptive and "
    "guest-haltpoll are replayed on the same trace with hostd replay's engine and priced the same "
    "way (poll CPU + P per blocked halt).")

TEST = (
    "Each point's figure and poll success carry 95% intervals (a latency percentile: distribution-free, "
    "from order statistics with binomial ranks; writes/s: batch means; poll success: Wilson). A budget "
    f"counts only if its poll success is distinguishably above {MIN_HIT_RATIO:.0%} (the interval's low end "
    "above it); with none counting, polling buys nothing and the answer is 0. Polling's gain at a counting "
    "budget is distinguishable when its figure's interval and budget 0's do not overlap (a conservative "
    "test). The recommendation is the smallest budget with a distinguishable gain whose interval reaches "
    "within --target of the interval of the best such budget, i.e. is not distinguishably worse than the "
    "best. No distinguishable gain, and none worth having (over (1 - target) of budget 0's figure, at least "
    f"{MIN_GAIN:.0%}) still possible: 0. Otherwise the data cannot decide: the points are measured longer, "
    "up to --max-duration, and then, if still undecided, the answer stays 0 with 'not enough halts'.")


# --- plan -------------------------------------------------------------------------------------

@dataclass
class Plan:
    workload: str
    budgets: list[int]
    duration_s: float
    max_duration_s: float  # per point, when the data cannot decide and the points are measured longer
    target: float
    figure: str  # "ops_per_s" | "p50" | "p99"
    tsc_khz: int
    args: argparse.Namespace  # the VM/workload options, for vm_spec_from_args

    @property
    def higher_is_better(self) -> bool:
        return self.figure == "ops_per_s"

    @property
    def quantile(self) -> float | None:
        return {"p50": 0.5, "p99": 0.99}.get(self.figure)

    def figure_label(self) -> str:
        if self.workload == "io":
            return "O_DSYNC writes/s"
        what = "timer wake - deadline" if self.workload == "timer" else "tick wake latency"
        return f"{what} {self.figure} (ns)"

    def vm_spec(self, budget_ns: int, workload: str | None = None, duration_s: float | None = None):
        args = self.args
        if workload is not None and workload != args.workload:
            args = copy.copy(args)
            args.workload = workload
        spec = vm_spec_from_args(args, PolicySpec(policy="fixed", host_policy="fixed", halt_poll_ns=budget_ns))
        spec.duration_s = duration_s or self.duration_s
        spec.sample_capacity = int(min(4_000_000, max(65_536, spec.duration_s * 200_000)))
        return spec


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
    if args.max_duration is None:
        max_duration = DEFAULT_MAX_FACTOR * duration
    else:
        max_duration = parse_float("--max-duration", args.max_duration, 0.0, 7 * 24 * 3600.0)
        if max_duration < duration:
            raise UsageError(f"--max-duration: {max_duration:g} s is below --duration ({duration:g} s); "
                             "set it equal to --duration to never measure longer")
    if args.figure is not None:
        if args.workload == "io":
            raise UsageError("--figure: io's figure is writes/s; --figure picks a latency percentile "
                             "for --workload timer or idle")
        if args.figure not in ("p50", "p99"):
            raise UsageError(f"--figure: expected p50 or p99, got {args.figure!r}")
    figure = "ops_per_s" if args.workload == "io" else (args.figure or "p50")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: {args.out!r} exists and is not a directory")
    plan = Plan(workload=args.workload, budgets=budgets, duration_s=duration, max_duration_s=max_duration,
                target=target, figure=figure,
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


def _figure(plan: Plan, results: list[dict], lat: np.ndarray, halt: np.ndarray) -> Interval:
    """The workload figure of one point with its interval, over every run at that budget."""
    if plan.quantile is not None:
        return quantile_ci(lat, plan.quantile)
    # io: writes/s = writes / seconds. Its interval: the batch-means interval of the time a write
    # spent halted (HLT to wake, in time order), the rest of a write's cycle (the guest's own work)
    # taken at its measured mean.
    writes = sum(r["workload"]["writes"] for r in results)
    seconds = sum(r["spec"]["duration_s"] for r in results)
    if not writes or not seconds:
        return Interval(None, None, None, writes)
    value = writes / seconds
    halted = batch_mean_ci(halt + lat) if lat.size else Interval(None, None, None, 0)
    if halted.value is None:
        return Interval(value, None, None, writes)
    guest = 1e9 / value - halted.value
    rate = lambda ns: None if ns is None or guest + ns <= 0 else 1e9 / (guest + ns)  # noqa: E731
    return Interval(value, rate(halted.ci_high), rate(halted.ci_low), writes)


def point_of(plan: Plan, budget: int, runs: list[tuple]) -> dict:
    """The figures of one sweep point, pooled over its runs: [(§8 result, latency, path, halt_ns)]."""
    results = [r[0] for r in runs]
    lat = np.concatenate([r[1] for r in runs])
    halt = np.concatenate([r[3] for r in runs])
    vcpus = [v for r in results for v in r["vcpus"]]
    seconds = sum(r["spec"]["duration_s"] for r in results)
    exits = sum(v["stats"]["halt_exits"] for v in vcpus)
    hits = sum(v["stats"]["halt_successful_poll"] for v in vcpus)
    cpu = sum(r["spec"]["duration_s"] * sum(v["host"]["cpu_frac"] for v in r["vcpus"]) / len(r["vcpus"])
              for r in results)
    figure = _figure(plan, results, lat, halt).to_dict()
    point = {
        "budget_ns": budget,
        "figure": figure,
        "share_of_best": None,
        "success_ratio": wilson(hits, exits).to_dict(),
        "host_cpu_frac_per_vcpu": cpu / seconds if seconds else None,
        "halt_exits": exits,
        "halt_successful_poll": hits,
        "halt_poll_invalid": sum(v["stats"]["halt_poll_invalid"] for v in vcpus),
        "halts_per_s": exits / seconds if seconds else None,
        "wake_p50_ns": quantile_ci(lat, 0.5).to_dict(),
        "wake_p99_ns": quantile_ci(lat, 0.99).to_dict(),
        "duration_s": round(seconds, 3),
        "runs": len(results),
        "check_failures": [f for r in results for f in check_failures(r)],
        "pids": [v["pid"] for v in vcpus],
        # --neighbour: the CPU it got beside the VM, and what the VM's polling cost it (cores, over its CPUs)
        "neighbour_cpu_cores": _neighbour_mean(results, "cpu_cores"),
        "neighbour_cpu_lost_cores": _neighbour_mean(results, "cpu_lost_cores"),
    }
    if plan.workload == "io":
        point["ops_per_s"] = figure
    return point


def _neighbour_mean(results: list[dict], key: str) -> float | None:
    """A neighbour figure over a point's runs, weighted by their length; None without --neighbour."""
    runs = [(r["spec"]["duration_s"], r["neighbour"][key]) for r in results if r.get("neighbour")]
    seconds = sum(s for s, _ in runs)
    return round(sum(s * x for s, x in runs) / seconds, 4) if runs and seconds else None


def _point_line(plan: Plan, p: dict) -> str:
    lost = p["neighbour_cpu_lost_cores"]
    return (f"budget {p['budget_ns']:,} ns: {_fig(plan, p['figure'])}, success {_pct_ci(p['success_ratio'])}, "
            f"host CPU {_pct(p['host_cpu_frac_per_vcpu'], 2)}"
            + ("" if lost is None else f", neighbour lost {lost:.3f} cores"))


def _more_seconds(plan: Plan, points: list[dict], rec: dict, measured_s: float) -> float:
    """How much longer to measure every point so that it holds about rec["halts_needed"] halts."""
    room = plan.max_duration_s - measured_s
    rate = min(p["figure"]["n"] for p in points) / measured_s
    want = (rec["halts_needed"] - rec["halts_per_point"]) / rate if rate > 0 and rec["halts_needed"] else room
    return min(room, max(plan.duration_s, want))


def measure_sweep(plan: Plan, progress: bool) -> tuple[list[dict], dict]:
    """Run every point; while the data cannot decide, run every point again for longer (up to
    --max-duration per point, pooling the runs). Returns (points, extra: the recommendation, the
    rounds measured longer and the pooled samples {"latency", "path", "halt_ns"})."""
    weight = plan.duration_s + RUN_OVERHEAD_S
    n = len(plan.budgets)
    runs: dict[int, list[tuple]] = {b: [] for b in plan.budgets}
    rounds: list[dict] = []
    measured_s, seconds, why = 0.0, plan.duration_s, ""
    with Progress([weight] * (n + (plan.workload != "idle")), progress) as bar:
        while True:
            for k, budget in enumerate(plan.budgets, 1):
                w = seconds + RUN_OVERHEAD_S
                bar.start_cell(f"[{k}/{n}] {plan.workload} at halt_poll_ns {budget:,}{why}", w)
                runs[budget].append(_measure(plan.vm_spec(budget, duration_s=seconds), plan.tsc_khz))
                p = point_of(plan, budget, runs[budget])
                bar.end_cell(w, f"  [{k}/{n}] {_point_line(plan, p)}{why}")
            measured_s += seconds
            points = [point_of(plan, b, runs[b]) for b in plan.budgets]
            rec = recommend(points, plan.target, plan.higher_is_better, plan.quantile)
            if rec["decided"] or len(rounds) >= MAX_ROUNDS or measured_s >= plan.max_duration_s - 1e-9:
                break
            seconds = _more_seconds(plan, points, rec, measured_s)
            rounds.append({"seconds_per_point": round(seconds, 3), "halts_per_point": rec["halts_per_point"],
                           "halts_needed": rec["halts_needed"]})
            # The bar grows by the round and its label says why the sweep goes on.
            bar.total += n * (seconds + RUN_OVERHEAD_S)
            why = (f" (+{seconds:.3g} s: not enough halts, {rec['halts_per_point']:,} per point, "
                   f"about {rec['halts_needed']:,} needed)")
        if not rec["decided"]:
            rec["reason"] += (f" after {measured_s:g} s per point (--max-duration {plan.max_duration_s:g} s; "
                              f"raise it to measure longer)")
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
    pooled = [r for b in plan.budgets for r in runs[b]]
    samples = {k: np.concatenate([r[i] for r in pooled]) for i, k in ((1, "latency"), (2, "path"), (3, "halt_ns"))}
    return points, {"recommendation": rec, "rounds": rounds, "measured_s_per_point": round(measured_s, 3), **samples}


# --- the recommendation (pure) ------------------------------------------------------------------

def _share(p: dict, base: float, best: float, higher_is_better: bool) -> float | None:
    """Point estimate of how much of the best this point gets. Higher is better: figure / best.
    Lower is better (a latency): (figure at 0 - figure) / (figure at 0 - best), the part of the
    reduction polling can buy that this budget buys; a latency has no natural zero (the wake path
    costs something whatever the budget), so best / figure would turn a 30 ns wobble on a 200 ns
    poll-path latency into a miss."""
    f = p["figure"]["value"]
    if f is None:
        return None
    if higher_is_better:
        return f / best if best > 0 else 1.0
    return (base - f) / (base - best) if base > best else 1.0


def _cost(iv: Interval, higher_is_better: bool) -> tuple[float, float, float]:
    """(value, low, high) oriented so that lower is better, unbounded ends as infinities."""
    if higher_is_better:
        return -iv.value, -iv.hi, -iv.lo
    return iv.value, iv.lo, iv.hi


def _halts_needed(n: int, zero: tuple, others: list[tuple], margin: float, quantile: float | None) -> int:
    """About how many samples per point would let the test decide, from how intervals narrow (as
    1/sqrt(n)): enough for a gain to clear both intervals, or for the largest gain the intervals
    allow to fall below the margin, whichever comes first. zero/others: _cost triples."""
    v0, lo0, hi0 = zero
    gaining, flat = [], []
    for v, lo, hi in others:
        width, gain = (hi0 - lo0 + hi - lo) / 2, v0 - v
        wanted = max(gain, margin - gain)
        if not math.isfinite(width):  # unbounded: a bounded interval first, and one narrower than min-max
            need = 4 * max(n, min_n_for_quantile(quantile) if quantile else stats.BATCHES)
        else:
            need = scaled_n(n, width, wanted) if width > 0 and wanted > 0 else n + 1
        (gaining if gain > 0 else flat).append(need)
    # One budget whose gain clears the intervals decides; ruling a gain out takes every budget.
    return min(gaining) if gaining else max(flat, default=n + 1)


def recommend(points: list[dict], target: float, higher_is_better: bool, quantile: float | None = 0.5) -> dict:
    """Fill each point's share_of_best; return the decision (see TEST and the module docstring).

    points: dicts with budget_ns (ascending, the first 0), figure and success_ratio as
    {"value", "ci_low", "ci_high", "n"} (value None: not measured). quantile: the percentile the
    figure is (None: a mean), for the estimate of the halts needed."""
    figs = {p["budget_ns"]: interval(p["figure"]) for p in points}
    zero = points[0]
    base = figs[0].value if figs[0] is not None else None
    measured = [p for p in points if p["figure"]["value"] is not None]
    per_point = min((p["figure"]["n"] for p in points), default=0)
    if base is None or not measured:
        for p in points:
            p["share_of_best"] = None
        return _rec(zero, None, "no figure", True, "budget 0's workload figure was not measured; nothing to "
                    "compare with, budget 0", per_point)
    best_value = (max if higher_is_better else min)(p["figure"]["value"] for p in measured)
    for p in points:
        p["share_of_best"] = _share(p, base, best_value, higher_is_better)
    counting = [p for p in measured[1:] if interval(p["success_ratio"]).lo > MIN_HIT_RATIO]
    if not counting:
        top = max((interval(p["success_ratio"]).hi for p in points[1:]), default=0.0)
        return _rec(zero, None, "polling buys nothing", True,
                    f"at no swept budget was the poll success distinguishably above {MIN_HIT_RATIO:.0%} (every "
                    f"interval reaches down to it; the highest upper end is {top:.1%}), so the figures differ by "
                    "noise only", per_point)
    v0, lo0, hi0 = _cost(figs[0], higher_is_better)
    cost = {p["budget_ns"]: _cost(figs[p["budget_ns"]], higher_is_better) for p in counting}
    gaining = [p for p in counting if cost[p["budget_ns"]][2] < lo0]
    scale = abs(v0) or 1.0
    margin = max(1 - target, MIN_GAIN) * scale
    if not gaining:
        largest = max(hi0 - cost[p["budget_ns"]][1] for p in counting)
        if largest < margin:
            return _rec(zero, None, "no gain worth polling for", True,
                        f"no budget's figure is distinguishably better than budget 0's, and the largest gain the "
                        f"intervals allow is under {margin / scale:.0%} of budget 0's figure", per_point)
        needed = _halts_needed(per_point, (v0, lo0, hi0), list(cost.values()), margin, quantile)
        room = f"of up to {largest / scale:.0%}" if math.isfinite(largest) else "of any size"
        rec = _rec(zero, None, "not enough data", False,
                   f"not enough halts ({per_point:,} per point; about {_about(needed):,} needed): no budget's "
                   f"figure is distinguishably better than budget 0's, yet a gain {room} is still possible; "
                   "budget 0 until the data says otherwise", per_point)
        rec["halts_needed"] = _about(needed)
        return rec
    best = min(gaining, key=lambda p: cost[p["budget_ns"]][0])
    vb, _, hib = cost[best["budget_ns"]]
    # Within --target of the best: the old share rule's tolerance, around the best's interval.
    slack = (1 - target) * (abs(vb) if higher_is_better else v0 - vb)
    cost[0] = (v0, lo0, hi0)
    chosen = next(p for p in [zero, *gaining] if cost[p["budget_ns"]][1] <= hib + slack)
    if chosen is zero:  # a distinguishable gain, but one the --target calls too small to poll for
        return _rec(zero, best, "no gain worth polling for", True,
                    f"budget 0's figure is within the {target:.0%} target of the best budget's "
                    f"({best['budget_ns']:,} ns), whose gain is distinguishable but small", per_point)
    same = " (the best itself)" if chosen is best else f" than the best, {best['budget_ns']:,} ns"
    rec = _rec(chosen, best, "poll", False,
               f"the smallest budget whose gain over budget 0 is distinguishable (intervals apart) and whose "
               f"figure is not distinguishably worse{same}, within the {target:.0%} target", per_point, decided=True)
    rec["target_figure"] = -(hib + slack) if higher_is_better else hib + slack  # a qualifying interval reaches it
    return rec


def _about(n: int) -> int:
    """Two significant digits: an estimate, not a count."""
    digits = max(0, len(str(n)) - 2)
    return int(math.ceil(n / 10**digits) * 10**digits)


def _rec(p: dict, best: dict | None, verdict: str, nothing: bool, reason: str, per_point: int,
         decided: bool | None = None) -> dict:
    return {"budget_ns": p["budget_ns"], "verdict": verdict, "decided": nothing if decided is None else decided,
            "polling_buys_nothing": nothing, "figure": p["figure"], "share_of_best": p["share_of_best"],
            "success_ratio": p["success_ratio"], "host_cpu_frac_per_vcpu": p["host_cpu_frac_per_vcpu"],
            "best_figure": None if best is None else best["figure"],
            "best_budget_ns": None if best is None else best["budget_ns"],
            "target_figure": None, "halts_per_point": per_point, "halts_needed": None, "test": TEST,
            "reason": reason}


# --- the offline optimum ------------------------------------------------------------------------------

def _p50(x: np.ndarray) -> float | None:
    return float(np.percentile(x, 50)) if x.size else None


def offline(budgets: list[int], halts: np.ndarray, latency: np.ndarray, path: np.ndarray,
            extra_fixed: list[int] = ()) -> dict:
    """The optimum over the pooled trace and every policy's distance from it (hostd.commands.replay engine)."""
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


def _pct_ci(iv: dict) -> str:
    return compact(iv, lambda x: f"{100 * x:.1f}", "%")


def _fig(plan: Plan, iv: dict) -> str:
    if plan.higher_is_better:
        return compact(iv, lambda x: f"{x:,.0f}", " writes/s")
    return f"{plan.figure} " + compact(iv, si, " ns")


def budget_label(ns: int) -> str:
    if ns == 0:
        return "0 ns"
    if ns >= 1_000_000:
        return f"{ns / 1e6:g} ms"
    if ns >= 1000:
        return f"{ns / 1e3:g} us"
    return f"{ns} ns"


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


def verdict_label(rec: dict) -> str:
    """What the recommendation is, in a few words (the plot's legend, the report's headline)."""
    if rec["verdict"] == "poll":
        share = rec["share_of_best"]
        return "" if share is None else f"{share:.1%} of best"
    if rec["verdict"] == "not enough data":
        return f"not enough data: {rec['halts_per_point']:,} halts per point, about {rec['halts_needed']:,} needed"
    return rec["verdict"]


def print_report(doc: dict, out) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, width=None if out.isatty() else 150)
    hib = doc["higher_is_better"]
    secs = doc["measured_s_per_point"]
    more = f" ({doc['duration_s']:g} s, then measured longer: not enough halts)" if doc["rounds"] else ""
    t = Table(title=f"hostd tune --workload {doc['workload']}: policy fixed, {secs:g} s per point{more}, "
              f"{doc['vcpus']} vCPU(s); figures: value [95% interval], ? = unbounded", title_justify="left")
    wakes = [k for k in ("wake_p50_ns", "wake_p99_ns") if hib or k != f"wake_{doc['figure']}_ns"]
    nb = doc.get("neighbour")
    for col in ("halt_poll_ns", doc["figure_label"], "share of best", "poll success", "host CPU / vCPU",
                *(("neighbour lost",) if nb else ()), "halts (/s)", *(f"wake {k[5:8]} ns" for k in wakes)):
        t.add_column(col, justify="right")
    rec = doc["recommendation"]
    number = (lambda x: f"{x:,.0f}") if hib else si
    for p in doc["points"]:
        mark = " *" if p["budget_ns"] == rec["budget_ns"] else ""
        rate = "-" if p["halts_per_s"] is None else f"{p['halts_per_s']:,.{1 if p['halts_per_s'] < 10 else 0}f}"
        lost = p.get("neighbour_cpu_lost_cores")
        cells = (f"{p['budget_ns']:,}{mark}", compact(p["figure"], number), _pct(p["share_of_best"]),
                 _pct_ci(p["success_ratio"]), _pct(p["host_cpu_frac_per_vcpu"], 2),
                 *((("-" if lost is None else f"{lost:.3f} cores"),) if nb else ()), f"{p['halt_exits']:,} ({rate})",
                 *(compact(p[k], si) for k in wakes))
        t.add_row(*(Text(c) for c in cells))  # Text: brackets are data here, not rich markup
    console.print(t)
    if nb:
        console.print(f"neighbour: {neighbour.label(nb['duty'], nb['period_ns'])} on each vCPU's CPU; "
                      "'neighbour lost' is the CPU it got alone (before the vCPUs ran) less what it got beside "
                      "them, in cores")
    if doc["backend"] == "emu":
        console.print(f"emulator calibration: {calibration.name_of(doc['calibration'])}")
    idle = rec["idle_cost"]
    label = verdict_label(rec)
    console.print(Text("Recommendation: ", style="bold") + Text(
        f"halt_poll_ns = {rec['budget_ns']:,} ({budget_label(rec['budget_ns'])}){': ' + label if label else ''}; "
        f"{rec['reason']}. Poll success there {_pct_ci(rec['success_ratio'])}. "
        f"Cost per idle vCPU at that budget: {_pct(idle['cpu_frac_per_vcpu'], 2)} of a core ({idle['from']}"
        + (f", tick {idle['tick_hz']:g} Hz" if "tick_hz" in idle else "") + ")."))
    console.print(Text("The test: ", style="bold") + Text(doc["recommendation"]["test"]))
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
    "success ratio (halt_successful_poll / halt_exits) and host CPU per vCPU, each with a 95% interval, and "
    "recommends a budget with its cost per idle vCPU from an idle run at that budget. " + TEST + " " + COST_MODEL)
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
    g.add_argument("--max-duration", metavar="SECONDS",
                   help=f"when the data cannot decide, every point is measured longer, up to this many seconds "
                   f"in all (default {DEFAULT_MAX_FACTOR} x --duration; equal to --duration: never longer)")
    g.add_argument("--target", default=str(DEFAULT_TARGET), metavar="SHARE",
                   help=f"share of the best figure the recommendation must reach (io: figure / best; a latency: "
                   f"the share of the reduction over budget 0 that the best buys), in (0, 1] (default "
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
    spec0 = plan.vm_spec(0)
    failures = [f"budget {p['budget_ns']}: {f}" for p in points for f in p["check_failures"]]
    failures += [f"idle run: {f}" for f in rec["idle_cost"].get("check_failures", [])]
    return {
        "command": "hostd tune",
        "backend": spec0.backend,  # kvm: "fixed" is the kernel's adaptive polling capped at each budget
        "calibration": spec0.calibration,
        "workload": plan.workload,
        "vcpus": spec0.vcpus,
        "duration_s": plan.duration_s,
        "max_duration_s": plan.max_duration_s,
        "measured_s_per_point": extra["measured_s_per_point"],
        "rounds": extra["rounds"],
        "target": plan.target,
        "figure": plan.figure,
        "figure_label": plan.figure_label(),
        "higher_is_better": plan.higher_is_better,
        "share_definition": ("figure / best" if plan.higher_is_better
                             else "(figure at budget 0 - figure) / (figure at budget 0 - best)"),
        "budgets_ns": plan.budgets,
        "neighbour": None if spec0.neighbour is None else spec0.neighbour.to_dict(),
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
        from hostd.output.plots import tune_tradeoff
        tune_tradeoff(os.path.join(args.out, "tradeoff.png"), doc)
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
