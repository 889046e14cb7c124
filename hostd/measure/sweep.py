"""`hostd tune`'s sweep: one VM per budget with policy fixed, the points' figures pooled over their
runs, and while the recommendation cannot decide, every point measured again for longer.

Per point: the workload figure, the poll success ratio (halt_successful_poll / halt_exits) and the
host CPU per vCPU. The figure and the success ratio carry 95% intervals (hostd.analysis.stats): a
latency percentile its distribution-free interval from order statistics, io's writes/s a
batch-means interval, the success ratio Wilson's. The recommendation's cost per idle vCPU comes
from one more run, of the idle workload at that budget (for --workload idle, the sweep point itself).
"""
from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass

import numpy as np

from hostd.analysis.recommend import recommend
from hostd.analysis.stats import Interval, batch_mean_ci, quantile_ci, wilson
from hostd.measure.window import measure
from hostd.output.progress import Progress
from hostd.output.report import check_failures
from hostd.output.tune_report import pct, point_line
from hostd.plumbing.results import rr_samples, vcpu_samples
from hostd.plumbing.spec import vm_spec_from_args
from hostd.plumbing.vm import ChildDied
from vcpu.policy import PolicySpec

MAX_ROUNDS = 3  # measuring longer: at most this many more runs per point
RUN_OVERHEAD_S = 0.6  # start-up + teardown per VM, for the progress bar's ETA only


@dataclass
class Plan:
    """What a sweep measures: the budgets, for how long, and the figure the recommendation judges."""
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

    def vm_spec(self, budget_ns: int, workload: str | None = None, duration_s: float | None = None):
        args = self.args
        if workload is not None and workload != args.workload:
            args = copy.copy(args)
            args.workload = workload
        spec = vm_spec_from_args(args, PolicySpec(policy="fixed", host_policy="fixed", halt_poll_ns=budget_ns))
        spec.duration_s = duration_s or self.duration_s
        spec.sample_capacity = int(min(4_000_000, max(65_536, spec.duration_s * 200_000)))
        return spec


def _measure(spec, tsc_khz: int):
    """One run: (§8 result, latency, path, halt_ns pooled over the vCPUs, rr's round trips or None).
    Retries once if a child died."""
    for attempt in (1, 2):
        try:
            result, vm = measure(spec, tsc_khz, progress=False)
        except (ChildDied, TimeoutError) as exc:
            if attempt == 2:
                raise
            sys.stderr.write(f"hostd: budget {spec.policy.halt_poll_ns} ns: {exc}; retrying the run once\n")
            continue
        parts = [vcpu_samples(vm, i) for i in range(spec.vcpus)]
        rtt = rr_samples(vm) if spec.workload == "rr" else None
        return (result, *(np.concatenate([p[k] for p in parts]) for k in range(3)), rtt)
    raise AssertionError("unreachable")


def _figure(plan: Plan, results: list[dict], lat: np.ndarray, halt: np.ndarray) -> Interval:
    """The workload figure of one point with its interval, over every run at that budget. lat: the
    figure's samples, each halt's wake latency (rr: each round trip)."""
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
    """The figures of one sweep point, pooled over its runs: [(§8 result, latency, path, halt_ns, rtt)].
    rr's figure is its round trip; the others' their wake latency (or io's writes/s)."""
    results = [r[0] for r in runs]
    lat = np.concatenate([r[1] for r in runs])
    samples = np.concatenate([r[4] for r in runs]) if plan.workload == "rr" else lat
    halt = np.concatenate([r[3] for r in runs])
    vcpus = [v for r in results for v in r["vcpus"]]
    seconds = sum(r["spec"]["duration_s"] for r in results)
    exits = sum(v["stats"]["halt_exits"] for v in vcpus)
    hits = sum(v["stats"]["halt_successful_poll"] for v in vcpus)
    cpu = sum(r["spec"]["duration_s"] * sum(v["host"]["cpu_frac"] for v in r["vcpus"]) / len(r["vcpus"])
              for r in results)
    figure = _figure(plan, results, samples, halt).to_dict()
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
                bar.end_cell(w, f"  [{k}/{n}] {point_line(p, plan.figure, plan.higher_is_better)}{why}")
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
            bar.end_cell(weight, f"  idle at {rec['budget_ns']:,} ns: {pct(w['cpu_frac_per_vcpu'], 2)} of a core "
                         f"per vCPU")
        rec["idle_cost"] = idle
    pooled = [r for b in plan.budgets for r in runs[b]]
    samples = {k: np.concatenate([r[i] for r in pooled]) for i, k in ((1, "latency"), (2, "path"), (3, "halt_ns"))}
    return points, {"recommendation": rec, "rounds": rounds, "measured_s_per_point": round(measured_s, 3), **samples}
