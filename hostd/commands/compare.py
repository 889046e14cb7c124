"""`hostd compare`: the 2015 halt_poll patch's experiment, measured here, beside the seed's figures.

Three experiments, every policy in each, repeated and interleaved (repeat outermost, the policy
order rotated each repeat, so drift over the run hits every policy alike):

- io:    1 vCPU, real O_DSYNC writes; writes/s per policy and as % of idle-poll (per repeat,
         against the idle-poll run of the same repeat), halt_successful_poll / halt_exits;
- idle:  a 4-vCPU idle guest; host CPU per idle vCPU (% of one core), halts/s, failed polls/s;
- timer: 1 vCPU, TSC-deadline test; wake - deadline p50/p99/max in ns and TSC cycles;

and a fourth, beside a neighbour (beside_neighbour.py): timer and io with a process of ours spinning
a duty cycle on the vCPU's CPU, what polling buys against what it costs that neighbour.

Each table cell is the median of the repeats with the min-max beside it. Every measured number
comes from a run stored whole (the DESIGN §8 result) in results.json; the only constants shown
are the seed's quoted figures, labelled as the seed's. The aggregation and the verdict are pure
functions of those results, unit-tested without processes.
"""
from __future__ import annotations

import argparse
import csv
import io as _io
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, NamedTuple
from datetime import datetime, timezone

from hostd.measure import bare_metal, beside_neighbour
from hostd.analysis import fidelity
from hostd.output import side_by_side
from hostd.plumbing import calibration
from hostd.plumbing.backend import check as check_backend
from hostd.plumbing.errors import UsageError
from hostd.plumbing.neighbour import NeighbourSpec, add_neighbour_option, parse_neighbour
from hostd.plumbing.orphans import remove_stale_segments
from hostd.plumbing.output import atomic_write, write_json
from hostd.plumbing.policy_options import cycles_to_ns, tsc_khz_from_args
from hostd.measure.window import Terminated, measure, on_sigterm
from hostd.output.progress import Progress
from hostd.analysis.stats import interval, summarize
from hostd.plumbing.spec import DEFAULT_INTERVAL_US, DEFAULT_TICK_HZ, VmSpec, parse_float, parse_int, place
from vcpu.policy import KVM_HALT_POLL_NS_DEFAULT, POLICIES, SEED_HALT_POLL_CYCLES, U32_MAX, PolicySpec

EXIT_CHECK_FAILED = 1
EXIT_SIGNAL = 130

EXPERIMENTS = ("io", "idle", "timer")
EXPERIMENT_POLICIES = {
    "io": POLICIES,  # none, fixed, adaptive, guest-haltpoll, idle-poll
    "idle": POLICIES,
    "timer": ("none", "fixed", "adaptive"),
}
IDLE_VCPUS = 4
DEFAULT_REPEAT = 3
# Seconds measured per cell. Defaults: 13 cells x 3 repeats, ~2 min on 2 cores with start-up.
# Quick: one repeat, ~30 s. Idle cells are long enough for several ticks of every vCPU at the
# default 2.5 Hz tick (5+ halts per vCPU per idle cell).
DURATIONS = {
    False: {"io": 2.0, "idle": 3.0, "timer": 1.5},
    True: {"io": 1.5, "idle": 2.0, "timer": 1.0},
}
# Estimated start-up + teardown per cell, only for the progress bar's ETA.
CELL_OVERHEAD_S = 0.9
# Other processes (other users, tests) using this many cores' worth of the VM's CPUs during the
# window, or preempting this share of the polls, make a run "disturbed": a polling or idle=poll
# vCPU then loses its CPU for whole time slices while a blocked one is woken ahead of it, and a
# spinning vCPU pushes neighbours onto the device's CPU; the comparison would measure them.
DISTURBED = 0.3
PREEMPTED_POLLS = 0.25
MAX_ATTEMPTS = 3
RETRY_BUDGET = 0.25  # re-measuring may add at most this fraction of the planned time

# The seed's own figures (DESIGN §7): constants, shown only in "seed" columns and labelled so.
SEED = {
    "source": "Bonzini 2015, 'kvm: x86: add halt_poll module parameter' (figures quoted, not measured here)",
    "io": {
        "none": "KVM ~30% of bare metal (~50% with cache=directsync)",
        "fixed": "60-65% of bare metal, 99% of idle=poll",
        "idle-poll": "100% (the reference)",
    },
    "io_fixed_pct_of_idle_poll": 99.0,
    "idle": {
        "fixed": "1.5-2.5% of a core; ~10 halts/s, nearly all failed polls",
    },
    "idle_fixed_cpu_pct_range": [1.5, 2.5],
    "idle_halts_per_s_4vcpu": 10,
    "timer": {
        "none": "20,000-120,000 cycles",
        "fixed": "8,000-10,000 cycles",
    },
    "timer_cycles_with_poll": [8000, 10000],
    "timer_cycles_without_poll": [20000, 120000],
}


# --- plan -------------------------------------------------------------------------------------

@dataclass
class Plan:
    quick: bool
    repeat: int
    tick_hz: float
    tsc_khz: int
    out: str
    durations: dict[str, float] = field(default_factory=dict)
    backends: tuple[str, ...] = ("emu",)  # the first is the tables' own; a second (kvm) is shown beside it
    kvm_unavailable: str | None = None  # why --backend both shows the emulator alone
    # Beside the emulator, kvm cells run --quick's durations: `./run.sh` (both) stays within ~4 min on
    # 2 cores. The kernel's rates and percentiles need no longer: its wakes are as many per second.
    side_durations: dict[str, float] = field(default_factory=lambda: dict(DURATIONS[True]))
    calibration: dict | None = None  # the profile the emulator's cells apply (Profile.to_dict()), or None
    # The fourth experiment (beside_neighbour): its neighbours, runs per cell and seconds per run.
    neighbours: tuple[NeighbourSpec, ...] = beside_neighbour.DEFAULT_NEIGHBOURS
    neighbour_repeat: int = beside_neighbour.REPEAT
    neighbour_adaptive_repeat: int = beside_neighbour.REPEAT
    neighbour_duration: float = beside_neighbour.DURATION_S[False]

    def duration(self, experiment: str, backend: str) -> float:
        return self.side_durations[experiment] if backend != self.backends[0] else self.durations[experiment]

    @property
    def fixed_ns(self) -> int:
        return cycles_to_ns(SEED_HALT_POLL_CYCLES, self.tsc_khz)

    def policy_spec(self, policy: str) -> PolicySpec:
        if policy == "fixed":
            return PolicySpec(policy="fixed", host_policy="fixed", halt_poll_ns=self.fixed_ns)
        if policy == "adaptive":
            return PolicySpec(policy="adaptive", host_policy="adaptive", halt_poll_ns=KVM_HALT_POLL_NS_DEFAULT)
        # none; guest-haltpoll (the haltpoll driver turns host polling off); idle-poll (never halts)
        return PolicySpec(policy=policy, host_policy="none", halt_poll_ns=0)

    def vm_spec(self, experiment: str, policy: str, backend: str = "emu", *, policy_spec: PolicySpec | None = None,
                duration: float | None = None, neighbour: NeighbourSpec | None = None) -> VmSpec:
        """The VM of a cell: the experiment is its workload; the other experiment (beside_neighbour)
        gives its own policy spec, duration and neighbour."""
        vcpus = IDLE_VCPUS if experiment == "idle" else 1
        vcpu_cpus, device_cpu, overcommit = place(vcpus, None, None, False)
        duration = self.duration(experiment, backend) if duration is None else duration
        spec = VmSpec(vm="vm0", vcpus=vcpus, workload=experiment, policy=policy_spec or self.policy_spec(policy),
                      vcpu_cpus=vcpu_cpus, device_cpu=device_cpu, overcommit=overcommit,
                      tick_hz=self.tick_hz, duration_s=duration, backend=backend,
                      calibration=self.calibration if backend == "emu" else None, neighbour=neighbour)
        spec.sample_capacity = int(min(4_000_000, max(65_536, duration * 200_000)))
        return spec

    def schedule(self) -> list[tuple[int, str, str]]:
        """(repeat, experiment, policy) in run order: repeats outermost, policies rotated per repeat."""
        out = []
        for r in range(1, self.repeat + 1):
            for exp in EXPERIMENTS:
                pols = list(EXPERIMENT_POLICIES[exp])
                k = (r - 1) % len(pols)
                for pol in pols[k:] + pols[:k]:
                    out.append((r, exp, pol))
        return out

    def cells(self) -> list[tuple[int, str, str, str]]:
        """schedule() with each cell measured on every backend in turn, back to back, so drift
        hits the emulator and the kernel alike: (repeat, experiment, policy, backend)."""
        return [(r, e, p, b) for r, e, p in self.schedule() for b in self.backends
                if b == "emu" or p in side_by_side.KVM_POLICIES]


def run_id(experiment: str, policy: str, repeat: int, backend: str = "emu") -> str:
    return f"{'kvm:' if backend == 'kvm' else ''}{experiment}/{policy}/r{repeat}"


# --- pure aggregation ---------------------------------------------------------------------------

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


def aggregate(runs: list[dict]) -> dict:
    """summary[experiment][policy][metric] = {median, min, max, n, runs}.

    `runs` items: {"id", "experiment", "policy", "repeat", "metrics"}. io's pct_of_idle_poll is
    computed per repeat against that repeat's idle-poll run, then summarised like the rest.
    """
    summary: dict[str, dict[str, dict]] = {}
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        by_cell.setdefault((run["experiment"], run["policy"]), []).append(run)
    idle_poll_io = {r["repeat"]: r for r in by_cell.get(("io", "idle-poll"), [])}
    for (exp, pol), cell in by_cell.items():
        cell = sorted(cell, key=lambda r: r["repeat"])
        metrics: dict[str, dict] = {}
        for name in cell[0]["metrics"]:
            s = summarize([r["metrics"].get(name) for r in cell])
            s["runs"] = [r["id"] for r in cell]
            metrics[name] = s
        if exp == "io" and idle_poll_io:
            pct, ids = [], []
            for r in cell:
                ref = idle_poll_io.get(r["repeat"])
                if ref is None:
                    continue
                base = ref["metrics"]["writes_per_s"]
                pct.append(100.0 * r["metrics"]["writes_per_s"] / base if base else None)
                ids += [r["id"]] + ([ref["id"]] if ref is not r else [])
            s = summarize(pct)
            s["runs"] = ids
            metrics["pct_of_idle_poll"] = s
        summary.setdefault(exp, {})[pol] = metrics
    # A stable order: experiments, then policies, as run.
    return {exp: {p: summary[exp][p] for p in EXPERIMENT_POLICIES[exp] if p in summary.get(exp, {})}
            for exp in EXPERIMENTS if exp in summary}


def medians(summary: dict) -> dict:
    """summary reduced to its medians: m[experiment][policy][metric] -> number or None."""
    return {exp: {pol: {k: v["median"] for k, v in ms.items()} for pol, ms in pols.items()}
            for exp, pols in summary.items()}


# --- the verdict: computed from the medians ---------------------------------------------------------

def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}%"


def _core(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}% of a core"


def _cyc(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f} cycles"


def apart(summary: dict | None, exp: str, a: str, b: str, metric: str) -> bool | None:
    """Whether two cells differ beyond their 95% intervals across repeats: True (intervals apart),
    False (they overlap: indistinguishable here), None (no interval: a single run, or no summary)."""
    try:
        ia, ib = interval(summary[exp][a][metric]), interval(summary[exp][b][metric])
    except (KeyError, TypeError):
        return None
    if ia.value is None or ib.value is None or ia.n < 2 or ib.n < 2:
        return None
    return not ia.overlaps(ib)


def verdict(m: dict, fixed_ns: int, overcommit: bool = False, cores: int | None = None,
            summary: dict | None = None, running_inject_ns: int = 0) -> str:
    """One paragraph from the measured medians `m` (see medians()); seed figures named as such.
    With `summary` (aggregate()'s, intervals included), two cells whose intervals overlap are
    called indistinguishable instead of being ordered. running_inject_ns: what the calibration
    charges an idle=poll guest per interrupt (0: uncalibrated, idle=poll is the ceiling)."""
    io, idle, timer = m.get("io", {}), m.get("idle", {}), m.get("timer", {})
    g = lambda d, p, k: d.get(p, {}).get(k)  # noqa: E731
    parts = []
    pairs = {key: apart(summary, exp, "fixed", "none", key)
             for exp, key in (("io", "writes_per_s"), ("idle", "cpu_pct_per_vcpu"), ("timer", "p50_cycles"))}

    f_pct, n_pct = g(io, "fixed", "pct_of_idle_poll"), g(io, "none", "pct_of_idle_poll")
    f_cpu, n_cpu = g(idle, "fixed", "cpu_pct_per_vcpu"), g(idle, "none", "cpu_pct_per_vcpu")
    f_w, n_w = g(io, "fixed", "writes_per_s"), g(io, "none", "writes_per_s")
    s = (f"fixed polling (the seed's 2,000,000 cycles = {fixed_ns / 1000:,.0f} us here) reached "
         f"{_pct(f_pct)} of idle-poll's writes/s (seed: 99%)")
    if f_w and n_w:
        times = "indistinguishable here from" if pairs["writes_per_s"] is False else f"{f_w / n_w:.1f}x"
        s += f", {times} the {n_w:,.0f} writes/s of no polling ({_pct(n_pct)} of idle-poll)"
    same = "indistinguishable here; " if pairs["cpu_pct_per_vcpu"] is False else ""
    s += f", at {_core(f_cpu)} per idle vCPU against {_core(n_cpu)} without polling ({same}seed: 1.5-2.5%)."
    parts.append(s)

    others = []
    for p in ("adaptive", "guest-haltpoll"):
        if p in io or p in idle:
            others.append(f"{p} {_pct(g(io, p, 'pct_of_idle_poll'))} at {_core(g(idle, p, 'cpu_pct_per_vcpu'))}")
    ip_cpu = g(idle, "idle-poll", "cpu_pct_per_vcpu")
    if others:
        parts.append("For comparison, " + "; ".join(others) +
                     (f"; idle-poll itself costs {_core(ip_cpu)} per idle vCPU" if ip_cpu is not None else "") + ".")

    f_t, n_t, a_t = g(timer, "fixed", "p50_cycles"), g(timer, "none", "p50_cycles"), g(timer, "adaptive", "p50_cycles")
    if f_t is not None and n_t is not None:
        ratio = f", {n_t / f_t:,.0f}x lower" if f_t > 0 and n_t > f_t else ""
        if pairs["p50_cycles"] is False:
            ratio = ", indistinguishable here"
        t = (f"Timer wake - deadline p50: {_cyc(f_t)} with fixed vs {_cyc(n_t)} without polling{ratio}"
             f" (seed: 8,000-10,000 vs 20,000-120,000)")
        if a_t is not None:
            t += f"; adaptive {_cyc(a_t)}"
        parts.append(t + f"; with polling {_where(f_t, SEED['timer_cycles_with_poll'])}, without "
                     f"{_where(n_t, SEED['timer_cycles_without_poll'])}.")

    f_h, f_fail = g(idle, "fixed", "halts_per_s"), g(idle, "fixed", "failed_polls_per_s")
    if f_h:
        parts.append(f"The idle {IDLE_VCPUS}-vCPU guest halted {f_h:.1f} times/s with fixed polling and "
                     f"{100 * (f_fail or 0) / f_h:.0f}% of those polls failed (seed: ~10/s, nearly all failed).")

    if f_pct is not None:
        if f_pct > 110 and running_inject_ns:
            claim = (f"Fixed polling beat idle-poll, as the kernel does on a machine like this one: the calibration "
                     f"charges each interrupt into a running vCPU the {running_inject_ns / 1000:,.0f} us the kernel "
                     "measured for it, so idle=poll is no ceiling here and the seed's headline does not carry over")
        elif f_pct > 110:
            claim = ("Fixed polling beat idle-poll by more than noise, which a quiet machine does not show "
                     "(idle=poll is the ceiling): the idle-poll run was probably starved of its CPU, so the "
                     "seed's headline cannot be judged from this run")
        elif f_pct >= 95:
            claim = "The seed's headline, near idle=poll throughput from polling, is reproduced here"
        elif f_pct >= 80:
            claim = "The seed's headline, near idle=poll throughput from polling, is largely reproduced here"
        else:
            claim = "The seed's headline, near idle=poll throughput from polling, is not reproduced here"
        if f_cpu is not None and f_pct <= 110:
            lo, hi = SEED["idle_fixed_cpu_pct_range"]
            where = "below" if f_cpu < lo else "within" if f_cpu <= hi else "above"
            claim += f", at an idle cost {where} the seed's 1.5-2.5% per vCPU"
        parts.append(claim + ".")
    if summary is not None and None in pairs.values():
        parts.append("One run per cell has no interval across repeats, so where fixed and none differ above that "
                     "may be noise (--repeat 3 or more tells).")
    if overcommit:
        parts.append(f"The idle guest was overcommitted ({IDLE_VCPUS} vCPUs + device on "
                     f"{cores if cores else 'fewer'} CPUs), so a busy vCPU's figure is its share of a shared core.")
    return " ".join(parts)


# --- formatting -------------------------------------------------------------------------------------

def _where(x: float, seed_range: list[int]) -> str:
    lo, hi = seed_range
    return "below the seed's range" if x < lo else "within the seed's range" if x <= hi else "above the seed's range"


def _num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def cell(s: dict | None, digits: int = 0, unit: str = "", spread: bool = True) -> str:
    """'median (min-max)' of a summarized metric."""
    if not s or s.get("median") is None:
        return "-"
    text = f"{_num(s['median'], digits)}{unit}"
    if spread and s["n"] > 1:
        text += f" ({_num(s['min'], digits)}-{_num(s['max'], digits)})"
    return text


# --- measuring ----------------------------------------------------------------------------------------

def sensitive(experiment: str, policy: str) -> bool:
    """Whether a neighbour on the vCPU's CPU changes the figure: io and timer measure how fast a
    vCPU gets back to work, and an idle=poll vCPU's share of its CPU is what idle reports for it.
    A halting idle guest leaves its CPU idle, so neighbours fill it (its foreign load nears 1 on a
    busy machine) while its figure, its own CPU time at a few wakes per second, barely moves."""
    return experiment != "idle" or policy == "idle-poll"


def poll_preempted_frac(result: dict) -> float:
    """Share of host polls cut short because another task wanted the vCPU's CPU (halt_poll_preempted)."""
    attempted = sum(v["stats"]["halt_attempted_poll"] for v in result["vcpus"])
    preempted = sum(v["stats"]["halt_poll_preempted"] or 0 for v in result["vcpus"])  # null on kvm
    return preempted / attempted if attempted >= 20 else 0.0


def disturbance(experiment: str, policy: str, result: dict, foreign: float, ours: bool = False) -> str | None:
    """Why a run measured its neighbours more than its policy, or None. Two signs: other processes
    held the vCPU's CPU (foreign load), or a neighbour kept preempting the polls (need_resched()),
    so that a polling policy mostly blocked (seen as halt_poll_preempted; ~0.1% on a quiet machine).
    ours: the run has a neighbour of ours beside the vCPU (beside_neighbour), whose preempting the
    polls is what it measures, never a disturbance; others' load still is one (ours is not in it)."""
    if not sensitive(experiment, policy):
        return None
    if foreign >= DISTURBED:
        return f"other processes used {foreign:.2f} of a core beside it"
    preempted = 0.0 if ours else poll_preempted_frac(result)
    if preempted >= PREEMPTED_POLLS:
        return f"{100 * preempted:.0f}% of its polls were cut short by preemption"
    return None


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
    out = [Job(run_id(e, p, r, b), e, e, p, r, b, None, f"{b} {e:<5} {p:<14} repeat {r}/{plan.repeat}",
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
    import numpy as np

    from hostd.plumbing.results import vcpu_samples
    from hostd.plumbing.vm import ChildDied

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
    from hostd.output.report import check_failures

    todo = jobs(plan)
    retry_budget = RETRY_BUDGET * sum(j.weight for j in todo)
    bare_w = plan.durations["io"] + CELL_OVERHEAD_S
    runs: list[dict] = []
    samples: dict[tuple[str, str], list] = {}
    with Progress([j.weight for j in todo] + [bare_w] * len(bare_metal.MODES) * plan.repeat, progress) as bar:
        for k, job in enumerate(todo, 1):
            rep, exp, pol, backend, weight = job.repeat, job.experiment, job.policy, job.backend, job.weight
            if exp == "io" and not any(r["experiment"] == "bare-metal" and r["repeat"] == rep for r in runs):
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


def _brief(m: dict) -> str:
    if "writes_per_s" in m:
        return f"{m['writes_per_s']:,.0f} writes/s"
    if "cpu_pct_per_vcpu" in m:
        return f"{m['cpu_pct_per_vcpu']:.2f}% of a core per vCPU, {m['halts_per_s']:.1f} halts/s"
    return f"p50 {_num(m['p50_ns'])} ns"


# --- output -------------------------------------------------------------------------------------------

CSV_COLUMNS = {
    "io": ("writes_per_s", "pct_of_bare_metal", "pct_of_idle_poll", "poll_success_pct", "halt_exits", "halt_successful_poll", "exits_per_s",
           "wake_p50_ns", "wake_p99_ns"),
    "idle": ("cpu_pct_per_vcpu", "halts_per_s", "failed_polls_per_s"),
    "timer": ("p50_ns", "p99_ns", "max_ns", "p50_cycles", "p99_cycles", "max_cycles", "wakes"),
}


def summary_csv(exp: str, summary: dict) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf)
    cols = CSV_COLUMNS[exp]
    stat = ("median", "min", "max", "value", "ci_low", "ci_high")  # value: the mean its 95% interval is for
    w.writerow(["policy", "n_runs"] + [f"{c}_{'mean' if s == 'value' else s}" for c in cols for s in stat])
    for pol, ms in summary.get(exp, {}).items():
        n = max((ms[c]["n"] for c in cols if c in ms), default=0)
        row = [pol, n]
        for c in cols:
            s = ms.get(c, {})
            row += [s.get(k) for k in stat]
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def runs_csv(exp: str, runs: list[dict]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf)
    cols = [c for c in CSV_COLUMNS[exp] if c not in ("pct_of_idle_poll", "pct_of_bare_metal")]
    w.writerow(["run", "policy", "repeat", "order", "duration_s", "overcommit"] + cols)
    for r in runs:
        if r["experiment"] != exp:
            continue
        spec = r["result"]["spec"]
        w.writerow([r["id"], r["policy"], r["repeat"], r["order"], spec["duration_s"], spec["overcommit"]]
                   + ["" if r["metrics"].get(c) is None else r["metrics"][c] for c in cols])
    return buf.getvalue()


def placement(plan: Plan) -> dict:
    out = {}
    for exp in EXPERIMENTS:
        vcpus = IDLE_VCPUS if exp == "idle" else 1
        vcpu_cpus, device_cpu, overcommit = place(vcpus, None, None, False)
        out[exp] = {"vcpus": vcpus, "vcpu_cpus": vcpu_cpus, "device_cpu": device_cpu, "overcommit": overcommit}
    return out


def build_document(plan: Plan, runs: list[dict], started: str, elapsed_s: float) -> dict:
    summary = aggregate([r for r in runs if r.get("backend", "emu") == plan.backends[0] and r["experiment"] in EXPERIMENTS])
    bare = bare_metal.pct_of_bare_metal(runs, plan.backends[0])
    for pol, pct in bare["pct"].items():
        if pol in summary.get("io", {}):
            summary["io"][pol]["pct_of_bare_metal"] = pct
    place_ = placement(plan)
    cpus = len(os.sched_getaffinity(0))
    failures = [f"{r['id']}: {f}" for r in runs for f in r["check_failures"]]
    disturbed = [r["id"] for r in runs if r.get("disturbed")]
    running = plan.calibration["costs_ns"]["running_inject_ns"] if plan.calibration else 0
    text = verdict(medians(summary), plan.fixed_ns, place_["idle"]["overcommit"], cpus, summary=summary,
                   running_inject_ns=running)
    text += bare_metal.verdict(bare)
    near = beside_neighbour.document(plan, runs)
    text += (" " + near["verdict"]) if near["verdict"] else ""
    kvm = None
    fid = None
    if plan.backends[1:] == ("kvm",):
        kvm_summary = aggregate([r for r in runs if r["backend"] == "kvm" and r["experiment"] in EXPERIMENTS])
        kvm = side_by_side.document(summary, kvm_summary)
        fid = fidelity.rows(summary, kvm_summary) + fidelity.neighbour_rows(near["summary"], near["kvm"]["summary"])
        text += " " + side_by_side.verdict(summary, kvm_summary)
        text += " " + fidelity.summary_line(fid, calibration.name_of(plan.calibration))
    elif plan.kvm_unavailable:
        kvm = {"unavailable": plan.kvm_unavailable}
    if disturbed:
        text += (f" Caution: {len(disturbed)} of {len(runs)} runs were disturbed by other processes even after "
                 f"re-measuring (marked *): measure on a quiet machine for figures worth quoting.")
    return {
        "command": "hostd compare",
        "started_utc": started,
        "elapsed_s": round(elapsed_s, 1),
        "config": {
            "quick": plan.quick,
            "backends": list(plan.backends),
            "repeat": plan.repeat,
            "durations_s": plan.durations,
            "side_durations_s": plan.side_durations if len(plan.backends) > 1 else None,
            "tick_hz": plan.tick_hz,
            "tsc_khz": plan.tsc_khz,
            "calibration": plan.calibration,
            "fixed_halt_poll_cycles": SEED_HALT_POLL_CYCLES,
            "fixed_halt_poll_ns": plan.fixed_ns,
            "adaptive_halt_poll_ns": KVM_HALT_POLL_NS_DEFAULT,
            "host_cpus": cpus,
            "placement": place_,
            "order": "repeat outermost; experiments io, idle, timer; policy order rotated by one each repeat; then "
                     "the neighbour experiment (its own order: see neighbour.config)",
            "disturbed_foreign_cores": DISTURBED,
            "disturbed_preempted_polls": PREEMPTED_POLLS,
            "max_attempts": MAX_ATTEMPTS,
        },
        "backend": plan.backends[0],
        "summary": summary,
        "bare_metal": bare,
        "neighbour": near,
        "kvm": kvm,
        "fidelity": fid,
        "verdict": text,
        "disturbed_runs": disturbed,
        "retried_runs": [r["id"] for r in runs if r.get("discarded_attempts")],
        "seed": SEED,
        "checks": {"ok": not failures, "failures": failures},
        "runs": runs,
    }


def print_tables(doc: dict, out) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, width=None if out.isatty() else 150)
    cfg, s = doc["config"], doc["summary"]
    reps = cfg["repeat"]
    disturbed = set(doc.get("disturbed_runs", []))

    def name(exp: str, pol: str) -> str:
        ids = {rid for m in s[exp][pol].values() for rid in m.get("runs", [])}
        return pol + (" *" if ids & disturbed else "")

    spread = " (min-max)" if reps > 1 else ""
    side = doc["kvm"] if doc.get("kvm") and "summary" in doc["kvm"] else None

    def kvm_columns(t, exp: str) -> None:
        for col in side_by_side.columns(exp) if side else ():
            t.add_column(col, justify="right")

    def kvm_cells(exp: str, pol: str) -> list[str]:
        return side_by_side.cells(side, exp, pol, cell) if side else []

    console.print(
        f"[bold]hostd compare[/bold]: median of {reps} run(s) per cell{', --quick' if cfg['quick'] else ''}; "
        f"fixed = {SEED_HALT_POLL_CYCLES:,} cycles = {cfg['fixed_halt_poll_ns']:,} ns at {cfg['tsc_khz']:,} kHz; "
        f"adaptive max {cfg['adaptive_halt_poll_ns']:,} ns; [italic]seed[/italic] = the 2015 patch's quoted figures, "
        f"not measured here")
    if doc["backend"] == "emu":
        console.print(f"emulator calibration: {calibration.name_of(cfg.get('calibration'))}")
    if doc["backend"] == "kvm":
        console.print("backend: kvm, the kernel's own halt polling (fixed runs as its adaptive polling capped at "
                      "the budget)")
    elif side:
        d = cfg["side_durations_s"]
        console.print(f"kernel (kvm) = the same cell on real KVM VMs, the kernel's own halt polling (fixed runs "
                      f"as its adaptive polling capped at the budget; runs of io {d['io']:g} s, idle {d['idle']:g} s, "
                      f"timer {d['timer']:g} s); emu / kvm = the emulator's figure over the kernel's")
    elif doc.get("kvm"):
        console.print(f"kvm: {doc['kvm']['unavailable']}; the emulator's columns alone")

    io = s.get("io", {})
    t = Table(title=f"Latency-bound O_DSYNC writes (1 vCPU, {cfg['durations_s']['io']:g} s per run)",
              title_justify="left")
    for col, j in (("policy", "left"), (f"writes/s{spread}", "right"),
                   (f"% of bare metal{spread}\n(other CPUs idle)", "right"), (f"% of idle-poll{spread}", "right"),
                   ("successful polls / exits", "right"), ("exits/s", "right"), ("seed (2015)", "left")):
        t.add_column(col, justify=j, style="dim italic" if col.startswith("seed") else None)
    kvm_columns(t, "io")
    for pol, m in io.items():
        t.add_row(name("io", pol), cell(m["writes_per_s"]), cell(m.get("pct_of_bare_metal"), 0, "%"),
                  cell(m.get("pct_of_idle_poll"), 0, "%"),
                  cell(m["poll_success_pct"], 0, "%", spread=False) if m["halt_exits"]["median"] else "no exits",
                  cell(m["exits_per_s"], spread=False), SEED["io"].get(pol, ""), *kvm_cells("io", pol))
    bare = doc.get("bare_metal")
    for mode, pct in (("idle", "100%"), ("busy", cell(bare and bare["pct"].get("bare-busy"), 0, "%"))):
        if bare and bare[mode]["median"] is not None:
            star = " *" if set(bare[mode]["runs"]) & disturbed else ""
            t.add_row(f"bare metal, other CPUs {mode}{star}", cell(bare[mode]), pct, "", "no vCPU", "", "")
    console.print(t)

    idle = s.get("idle", {})
    pl = cfg["placement"]["idle"]
    oc = (f"; overcommitted: {pl['vcpus']} vCPUs + device on {cfg['host_cpus']} CPUs "
          f"(vCPUs on CPU(s) {sorted(set(pl['vcpu_cpus']))}, device on {pl['device_cpu']})") if pl["overcommit"] else ""
    t = Table(title=f"Idle cost: {IDLE_VCPUS}-vCPU idle guest, tick {cfg['tick_hz']:g} Hz per vCPU, "
              f"{cfg['durations_s']['idle']:g} s per run{oc}", title_justify="left")
    for col, j in (("policy", "left"), (f"host CPU per idle vCPU, % of a core{spread}", "right"),
                   (f"halts/s{spread}", "right"), (f"failed polls/s{spread}", "right"), ("seed (2015)", "left")):
        t.add_column(col, justify=j, style="dim italic" if col.startswith("seed") else None)
    kvm_columns(t, "idle")
    for pol, m in idle.items():
        t.add_row(name("idle", pol), cell(m["cpu_pct_per_vcpu"], 2, "%"), cell(m["halts_per_s"], 1),
                  cell(m["failed_polls_per_s"], 1), SEED["idle"].get(pol, ""), *kvm_cells("idle", pol))
    console.print(t)

    timer = s.get("timer", {})
    t = Table(title=f"TSC-deadline timer: wake - deadline (1 vCPU, {DEFAULT_INTERVAL_US} us deadlines, "
              f"{cfg['durations_s']['timer']:g} s per run)", title_justify="left")
    t.add_column("policy")
    for q in ("p50", "p99", "max"):
        t.add_column(f"{q} ns{spread}\n{q} TSC cycles", justify="right", no_wrap=True)
    t.add_column("seed (2015)", style="dim italic")
    kvm_columns(t, "timer")
    for pol, m in timer.items():
        t.add_row(name("timer", pol), *(f"{cell(m[q + '_ns'])}\n{cell(m[q + '_cycles'])}"
                                        for q in ("p50", "p99", "max")), SEED["timer"].get(pol, ""),
                  *kvm_cells("timer", pol))
    console.print(t)

    beside_neighbour.print_tables(doc, console, cell, disturbed)

    if doc.get("fidelity"):
        t = Table(title=f"Fidelity: the emulator against the kernel on this machine, same cells ({fidelity.TOLERANCES})",
                  title_justify="left")
        for col, j in (("figure", "left"), ("emulator", "right"), ("kernel (kvm)", "right"),
                       ("emu vs kvm", "right"), ("", "left"), ("why not", "left")):
            t.add_column(col, justify=j)
        for r in doc["fidelity"]:
            digits = r.get("digits", 2 if r["key"].startswith("idle") else 0)
            t.add_row(r["figure"], _num(r["emu"], digits), _num(r["kvm"], digits),
                      fidelity.ratio_text(r), fidelity.mark(r), r["why"] or "")
        console.print(t)

    if disturbed:
        why = {r["id"]: r["disturbance"] for r in doc["runs"] if r.get("disturbed")}
        console.print("* includes a run disturbed by other processes even after re-measuring: "
                      + "; ".join(f"{rid} ({why.get(rid)})" for rid in sorted(disturbed)))
    retried = doc.get("retried_runs", [])
    if retried:
        console.print(f"re-measured because other processes disturbed them: {', '.join(retried)} "
                      "(the least disturbed attempt is kept; all are in results.json)")
    console.print(Text("Verdict: ", style="bold") + Text(doc["verdict"]))
    if not doc["checks"]["ok"]:
        console.print(Text("Checks FAILED: " + "; ".join(doc["checks"]["failures"]), style="bold red"))


# --- CLI ----------------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="the 2015 halt_poll patch's experiment, measured here, beside its own figures",
        description="Run the seed's experiment side by side: O_DSYNC writes/s per policy as % of "
        "idle-poll, host CPU per idle vCPU of a 4-vCPU idle guest, and TSC-deadline timer latency; "
        "each cell the median of --repeat interleaved runs, printed beside the 2015 patch's figures "
        "with a verdict, and saved (results.json, CSVs, PNG plots) under --out. Then a fourth experiment, "
        "beside a neighbour: timer and io under none, adaptive and guest-haltpoll with a process of ours "
        "spinning 10% and 50% of every 2 ms on the vCPU's CPU (one run per cell unless --repeat is given). "
        "A run during which other processes took 0.3 of a core or more of the VM's CPUs is measured again "
        "(and flagged if it stays so).",
        epilog="example: hostd compare --quick   (about a minute)",
    )
    q, d = DURATIONS[True], DURATIONS[False]
    nq, nd = beside_neighbour.DURATION_S[True], beside_neighbour.DURATION_S[False]
    p.add_argument("--quick", action="store_true",
                   help=f"one run per cell and shorter cells (io {q['io']:g} s, idle {q['idle']:g} s, timer "
                   f"{q['timer']:g} s, beside a neighbour {nq:g} s; defaults {d['io']:g}, {d['idle']:g}, "
                   f"{d['timer']:g}, {nd:g} s): about a minute instead of 2.5 (with --backend both, under 2 "
                   "instead of under 5)")
    p.add_argument("--repeat", metavar="N",
                   help=f"runs per cell; each cell shows their median and min-max (default {DEFAULT_REPEAT}, "
                   f"or 1 with --quick; beside a neighbour {beside_neighbour.REPEAT}, adaptive's "
                   f"{beside_neighbour.ADAPTIVE_REPEAT[False]} ({beside_neighbour.ADAPTIVE_REPEAT[True]} with --quick), "
                   "unless given)")
    p.add_argument("--tick-hz", default=str(DEFAULT_TICK_HZ), metavar="HZ",
                   help=f"idle guest tick per vCPU (default {DEFAULT_TICK_HZ}: a NOHZ Linux guest, ~10 halts/s "
                   "for 4 vCPUs; 100 for a Windows-like guest)")
    p.add_argument("--tsc-khz", metavar="KHZ",
                   help="TSC rate to convert the seed's 2,000,000 cycles and latencies "
                   "(default: read from the machine)")
    p.add_argument("--out", metavar="DIR", help="result folder (default results/<UTC timestamp>/)")
    p.add_argument("--json", action="store_true", help="print one JSON object (what results.json holds) on stdout")
    p.add_argument("--backend", default="emu", metavar="{emu,kvm,both}",
                   help="emu: the emulator (default); kvm: real KVM VMs, the kernel's own halt polling; both: "
                   "every cell on each, the kernel's figures and emulator / kernel beside the emulator's "
                   "(the emulator alone, with the reason, where /dev/kvm is unusable)")
    p.add_argument("--table", default="seed", metavar="{seed,dyn2015,guest2019,all}",
                   help="seed: the 2015 patch's experiment (default); dyn2015: dynamic halt-polling's idle %%c0 and "
                   "TCP_RR-like latency; guest2019: guest halt polling's ping-pong; all: each in turn, each in a "
                   "folder of its own under --out")
    calibration.add_calibration_option(p)
    add_neighbour_option(p.add_argument_group(
        "beside a neighbour", "The fourth experiment runs beside neighbours spinning 10% and 50% of every 2 ms; each "
        "--neighbour adds one more there. The seed's three experiments always run without one."), repeatable=True)
    p.add_argument("--always-poll-us", metavar="US",
                   help="dyn2015: always-poll's budget in microseconds (default 500)")
    p.set_defaults(func=main)


def plan_from_args(args: argparse.Namespace) -> Plan:
    repeat = 1 if args.quick else DEFAULT_REPEAT
    if args.repeat is not None:
        repeat = parse_int("--repeat", args.repeat, 1, 50)
    tick_hz = parse_float("--tick-hz", args.tick_hz, 0.0, 10_000.0)
    tsc_khz = tsc_khz_from_args(args)
    if cycles_to_ns(SEED_HALT_POLL_CYCLES, tsc_khz) > U32_MAX:
        raise UsageError(f"--tsc-khz: {SEED_HALT_POLL_CYCLES} cycles at {tsc_khz} kHz exceed the kernel's "
                         f"maximum halt_poll_ns of {U32_MAX}")
    out = args.out or os.path.join("results", datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out: {out!r} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(out))
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe if not os.path.isdir(out) else out, os.W_OK):
        raise UsageError(f"--out: cannot write into {out!r}")
    extra = [parse_neighbour(text) for text in getattr(args, "neighbour", None) or ()]
    backends, kvm_unavailable = _backends(args.backend)
    profile = calibration.resolve(args.calibration) if "emu" in backends else None
    return Plan(quick=args.quick, repeat=repeat, tick_hz=tick_hz, tsc_khz=tsc_khz, out=out,
                durations=dict(DURATIONS[bool(args.quick)]), backends=backends, kvm_unavailable=kvm_unavailable,
                calibration=profile.to_dict() if profile else None, neighbours=beside_neighbour.neighbours(extra),
                neighbour_repeat=beside_neighbour.REPEAT if args.repeat is None else repeat,
                neighbour_adaptive_repeat=beside_neighbour.ADAPTIVE_REPEAT[bool(args.quick)] if args.repeat is None
                else repeat,
                neighbour_duration=beside_neighbour.DURATION_S[bool(args.quick)])


def _backends(text: str) -> tuple[tuple[str, ...], str | None]:
    """--backend: the backends to run, and why kvm is left out of `both` (or None)."""
    if text not in ("emu", "kvm", "both"):
        raise UsageError(f"--backend: unknown backend {text!r} (choose from emu, kvm, both)")
    if text == "emu":
        return ("emu",), None
    try:
        check_backend("kvm", PolicySpec(policy="none", host_policy="none", halt_poll_ns=0))
    except UsageError as exc:
        if text == "kvm":
            raise
        return ("emu",), str(exc)
    return ("kvm",) if text == "kvm" else ("emu", "kvm"), None


def write_results(plan: Plan, doc: dict, samples: dict) -> list[str]:
    os.makedirs(plan.out, exist_ok=True)
    files = []
    for exp in EXPERIMENTS:
        atomic_write(os.path.join(plan.out, f"{exp}.csv"), summary_csv(exp, doc["summary"]))
        atomic_write(os.path.join(plan.out, f"{exp}_runs.csv"), runs_csv(exp, doc["runs"]))
        files += [f"{exp}.csv", f"{exp}_runs.csv"]
    atomic_write(os.path.join(plan.out, "neighbour.csv"), beside_neighbour.summary_csv(doc))
    atomic_write(os.path.join(plan.out, "neighbour_runs.csv"), beside_neighbour.runs_csv(doc["runs"]))
    files += ["neighbour.csv", "neighbour_runs.csv"]
    if doc.get("fidelity"):
        atomic_write(os.path.join(plan.out, "fidelity.csv"), fidelity.to_csv(doc["fidelity"]))
        files.append("fidelity.csv")
    from hostd.output import plots
    files += plots.write_all(plan.out, doc, samples)
    doc["files"] = ["results.json"] + files
    write_json(os.path.join(plan.out, "results.json"), doc)  # last: its presence means the folder is complete
    return doc["files"]


def main(args: argparse.Namespace) -> int:
    from hostd.commands import tables  # it imports this module

    which = tables.parse_tables(args.table)
    plan = plan_from_args(args)
    if args.neighbour and "seed" not in which:
        raise UsageError(f"--neighbour: only with --table seed or all (the neighbour experiment is the seed "
                         f"comparison's; {args.table} runs none)")
    others = tables.plan_from_compare(args, plan, [t for t in which if t != "seed"])  # validated before any run
    rc = 0
    if "seed" in which:
        rc = main_seed(args, replace(plan, out=os.path.join(plan.out, "seed")) if others else plan)
    if others and rc != EXIT_SIGNAL:
        rc = max(rc, tables.main(args, others, plan.out, nested="seed" in which))
    return rc


def main_seed(args: argparse.Namespace, plan: Plan) -> int:
    remove_stale_segments()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        runs, samples = measure_all(plan, progress=True)
    except (KeyboardInterrupt, Terminated):
        sys.stderr.write("hostd: compare interrupted; every process stopped and its segment removed; "
                         "nothing was written\n")
        return EXIT_SIGNAL
    except Exception as exc:  # ChildDied / TimeoutError twice in one cell
        from hostd.plumbing.vm import ChildDied
        if not isinstance(exc, (ChildDied, TimeoutError)):
            raise
        sys.stderr.write(f"hostd: {exc}; the VM was stopped and cleaned up; compare aborted\n")
        return EXIT_CHECK_FAILED
    finally:
        signal.signal(signal.SIGTERM, old)
    doc = build_document(plan, runs, started, time.monotonic() - t0)
    write_results(plan, doc, samples)
    if args.json:
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_tables(doc, sys.stdout)
        sys.stdout.write(f"\nresults: {os.path.join(plan.out, 'results.json')} (+ CSVs and PNG plots)\n")
    sys.stderr.write(f"hostd: compare took {doc['elapsed_s']:.0f} s; results in {plan.out}/\n")
    for f in doc["checks"]["failures"]:
        sys.stderr.write(f"hostd: check failed: {f}\n")
    return 0 if doc["checks"]["ok"] else EXIT_CHECK_FAILED
