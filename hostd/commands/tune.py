"""`hostd tune`: sweep the fixed halt-poll budget, draw the trade-off, recommend a setting.

For each of K budgets (0 and K-1 log-spaced in --range) one VM runs the workload with policy
`fixed` at that budget (hostd.measure.sweep); the recommendation is a decision with a test on the
points' 95% intervals (hostd.analysis.recommend: TEST), measured longer while the data cannot
decide; the offline optimum over the halts recorded in the sweep prices every policy against the
best fixed budget (hostd.analysis.offline_optimum: COST_MODEL). The report, points.csv and the
plot come from the document (hostd.output.tune_report, hostd.output.plots).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys

from hostd.analysis.offline_optimum import COST_MODEL, offline
from hostd.analysis.recommend import TEST
from hostd.measure.sweep import Plan, measure_sweep
from hostd.measure.window import Terminated, on_sigterm
from hostd.output.plots import tune_tradeoff
from hostd.output.tune_report import figure_label, points_csv, print_report
from hostd.plumbing.errors import EXIT_CHECK_FAILED, EXIT_SIGNAL, UsageError
from hostd.plumbing.formats import RESULTS_FORMAT_VERSION
from hostd.plumbing.orphans import remove_stale_segments
from hostd.plumbing.output import atomic_write, check_out_dir, print_show_again, write_json
from hostd.plumbing.policy_options import tsc_khz_from_args
from hostd.plumbing.spec import add_vm_options, parse_duration, parse_float, parse_int
from hostd.plumbing.units import parse_ns
from hostd.plumbing.vm import ChildDied
from vcpu.policy import U32_MAX

DEFAULT_RANGE = "10us:2ms"
DEFAULT_POINTS = 7
DEFAULT_DURATION = "2"
DEFAULT_TARGET = 0.99
DEFAULT_MAX_FACTOR = 5  # --max-duration defaults to this many times --duration
MAX_POINTS = 40


# --- plan -------------------------------------------------------------------------------------

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
    if args.out:
        check_out_dir(args.out, "--out")
    plan = Plan(workload=args.workload, budgets=budgets, duration_s=duration, max_duration_s=max_duration,
                target=target, figure=figure,
                tsc_khz=tsc_khz_from_args(args), args=args)
    plan.vm_spec(0)  # validate every VM/workload option now, before anything starts
    return plan


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
        "format_version": RESULTS_FORMAT_VERSION,
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
        "figure_label": figure_label(plan.workload, plan.figure),
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
    except (ChildDied, TimeoutError) as exc:  # twice at one point: the sweep retries a run once
        sys.stderr.write(f"hostd: tune aborted: {exc}; the VM was stopped and cleaned up\n")
        return EXIT_CHECK_FAILED
    finally:
        signal.signal(signal.SIGTERM, old)
    doc = build_document(plan, points, extra)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        atomic_write(os.path.join(args.out, "points.csv"), points_csv(points, doc["recommendation"]["budget_ns"]))
        atomic_write(os.path.join(args.out, "sweep.halts"), "".join(f"{h}\n" for h in extra["halt_ns"].tolist()))
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
    if args.out:
        print_show_again(args.out)
    return 0 if doc["checks"]["ok"] else EXIT_CHECK_FAILED
