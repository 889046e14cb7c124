"""The cells `hostd compare` measures (its plan: hostd.measure.compare_plan): each run's figures, and
measuring them all.

Three experiments, every policy in each, repeated and interleaved (repeat outermost, the policy
order rotated each repeat, so drift over the run hits every policy alike), each cell on every
backend in turn; then the fourth, beside a neighbour (beside_neighbour). A run other processes
disturbed (hostd.measure.disturbance) is measured again within a budget and the least disturbed
attempt kept; the io experiment's bare-metal reference (bare_metal) is measured once per repeat.
"""
from __future__ import annotations

import sys
from functools import partial
from typing import Callable, NamedTuple

import numpy as np

from hostd.measure import bare_metal, beside_neighbour
from hostd.measure.compare_plan import EXPERIMENTS, Plan, run_id
from hostd.measure.disturbance import MAX_ATTEMPTS, RETRY_BUDGET, disturbance, poll_preempted_frac
from hostd.measure.window import measure
from hostd.output import side_by_side
from hostd.output.figures import num
from hostd.output.progress import Progress
from hostd.output.report import check_failures
from hostd.plumbing.neighbour import NeighbourSpec
from hostd.plumbing.results import vcpu_samples
from hostd.plumbing.spec import VmSpec
from hostd.plumbing.vm import ChildDied

# Estimated start-up + teardown per cell, only for the progress bar's ETA.
CELL_OVERHEAD_S = 0.9


# --- one run's figures -------------------------------------------------------------------------------

def run_metrics(result: dict) -> dict:
    """The figures compare reports from one run's §8 result."""
    w = result["workload"]
    vcpus = result["vcpus"]
    if w["name"] == "io":
        exits = sum(v["stats"]["halt_exits"] for v in vcpus)
        ok = sum(v["stats"]["halt_successful_poll"] for v in vcpus)
        lat = vcpus[0]["latency_ns"]["all"]
        seconds = result["spec"]["duration_s"]
        return {
            "writes_per_s": w["ops_per_s"],
            "halt_exits": exits,
            "exits_per_s": exits / seconds if seconds else None,
            "halt_successful_poll": ok,
            "poll_success_pct": 100.0 * ok / exits if exits else None,
            "wake_p50_ns": lat["p50"],
            "wake_p99_ns": lat["p99"],
        }
    if w["name"] == "idle":
        return {
            "cpu_pct_per_vcpu": 100.0 * w["cpu_frac_per_vcpu"],
            "halts_per_s": w["halts_per_s"],
            "failed_polls_per_s": w["failed_polls_per_s"],
        }
    ns, cy = w["latency_ns"], w["latency_cycles"]
    exits = sum(v["stats"]["halt_exits"] for v in vcpus)
    ok = sum(v["stats"]["halt_successful_poll"] for v in vcpus)
    return {
        "p50_ns": ns["p50"], "p99_ns": ns["p99"], "max_ns": ns["max"],
        "p50_cycles": cy["p50"], "p99_cycles": cy["p99"], "max_cycles": cy["max"],
        "wakes": ns["count"], "poll_success_pct": 100.0 * ok / exits if exits else None,
    }


def _brief(m: dict) -> str:
    """One progress line's figures."""
    if "writes_per_s" in m:
        return f"{m['writes_per_s']:,.0f} writes/s"
    if "cpu_pct_per_vcpu" in m:
        return f"{m['cpu_pct_per_vcpu']:.2f}% of a core per vCPU, {m['halts_per_s']:.1f} halts/s"
    return f"p50 {num(m['p50_ns'])} ns"


# --- measuring ----------------------------------------------------------------------------------------

class Job(NamedTuple):
    """One run to measure: a cell of the seed's experiments or of beside_neighbour's."""
    rid: str
    experiment: str  # io, idle, timer, or beside_neighbour.EXPERIMENT
    workload: str
    policy: str
    repeat: int
    backend: str
    neighbour: NeighbourSpec | None
    label: str  # the progress bar's
    weight: float  # planned seconds, start-up included
    spec: Callable[[], VmSpec]  # a fresh VM spec per attempt
    metrics: Callable[[dict], dict]  # the figures of its §8 result
    brief: Callable[[dict], str]  # those figures in a progress line


def jobs(plan: Plan) -> list[Job]:
    """Every run of the plan in order: the seed's cells (plan.cells()), then beside_neighbour's."""
    out = [Job(run_id(e, p, r, b), e, e, p, r, b, None, f"{b} {e:<5} {p:<14} repeat {r}/{plan.repeats(e, p)}",
               plan.duration(e, b) + CELL_OVERHEAD_S, partial(plan.vm_spec, e, p, b), run_metrics, _brief)
           for r, e, p, b in plan.cells()]
    for c in beside_neighbour.cells(plan):
        out.append(Job(c.run_id(), beside_neighbour.EXPERIMENT, c.workload, c.policy, c.repeat, c.backend,
                       c.neighbour, f"{c.backend} {c.workload:<5} {c.policy:<14} beside: {c.case}",
                       plan.neighbour_duration + beside_neighbour.baseline_s(c) + CELL_OVERHEAD_S,
                       partial(beside_neighbour.vm_spec, plan, c), beside_neighbour.run_metrics,
                       beside_neighbour.brief))
    return out


def _measure_cell(plan: Plan, make_spec: Callable[[], VmSpec], what: str):
    """One run: (§8 result, wake-latency samples in ns, foreign load). Retries once if a child died."""
    for attempt in (1, 2):
        spec = make_spec()
        try:
            result, vm = measure(spec, plan.tsc_khz, progress=False)
            foreign = result["host_cpus"]["foreign_load"]
        except (ChildDied, TimeoutError) as exc:
            if attempt == 2:
                raise
            sys.stderr.write(f"hostd: {what}: {exc}; retrying the run once\n")
            continue
        samples = np.concatenate([vcpu_samples(vm, i)[0] for i in range(spec.vcpus)])
        return result, samples, foreign
    raise AssertionError("unreachable")


def measure_all(plan: Plan, progress: bool) -> tuple[list[dict], dict]:
    """Run every cell of the plan (jobs()); returns (runs, samples[(experiment, policy)] -> [arrays]),
    samples of the seed's experiments only.

    A run disturbed by other processes (see disturbance()) is run again, up to MAX_ATTEMPTS and
    within RETRY_BUDGET of the planned time; the least disturbed attempt is kept and the others are
    listed in the run's "discarded_attempts".
    """
    todo = jobs(plan)
    retry_budget = RETRY_BUDGET * sum(j.weight for j in todo)
    bare_w = plan.durations["io"] + CELL_OVERHEAD_S
    runs: list[dict] = []
    samples: dict[tuple[str, str], list] = {}
    with Progress([j.weight for j in todo] + [bare_w] * len(bare_metal.MODES) * plan.repeat, progress) as bar:
        for k, job in enumerate(todo, 1):
            rep, exp, pol, backend, weight = job.repeat, job.experiment, job.policy, job.backend, job.weight
            if (exp == "io" and rep <= plan.repeat
                    and not any(r["experiment"] == "bare-metal" and r["repeat"] == rep for r in runs)):
                runs += bare_metal.measure_repeat(rep, plan.durations["io"], plan.tsc_khz, bar, bare_w)
            ours = job.neighbour is not None
            attempts = []
            while True:
                n = len(attempts) + 1
                bar.start_cell(f"[{k}/{len(todo)}] {job.label}" + (f" (attempt {n}: machine busy)" if n > 1 else ""),
                               weight)
                result, lat, foreign = _measure_cell(plan, job.spec, f"{job.workload}/{pol}")
                why = disturbance(job.workload, pol, result, foreign, ours)
                score = foreign + (0.0 if ours else poll_preempted_frac(result))
                attempts.append((why is not None, score, foreign, why, result, lat))
                if why is None or n >= MAX_ATTEMPTS or retry_budget < weight:
                    break
                retry_budget -= weight
                bar.end_cell(weight, f"  [{k}/{len(todo)}] {job.rid}: {why}; measuring again", extra=True)
            _, _, foreign, why, result, lat = min(attempts, key=lambda a: (a[0], a[1]))
            metrics = job.metrics(result)
            runs.append({
                "id": job.rid, "experiment": exp, "workload": job.workload, "policy": pol, "repeat": rep, "order": k,
                "backend": backend, "neighbour": job.neighbour.to_dict() if ours else None, "metrics": metrics,
                "foreign_load": round(foreign, 4), "poll_preempted_frac": round(poll_preempted_frac(result), 4),
                "disturbed": why is not None, "disturbance": why,
                "discarded_attempts": [{"foreign_load": round(a[2], 4), "disturbance": a[3],
                                        "metrics": job.metrics(a[4])} for a in attempts if a[4] is not result],
                "check_failures": check_failures(result), "result": result,
            })
            if exp in EXPERIMENTS:  # the plots' samples: the seed's experiments
                key = exp if backend == plan.backends[0] else side_by_side.sample_key(exp)  # kvm beside emu
                samples.setdefault((key, pol), []).append(lat)
            note = f" ({why})" if why else ""
            bar.end_cell(weight, f"  [{k}/{len(todo)}] {job.rid}: {job.brief(metrics)}{note}")
    return runs, samples
