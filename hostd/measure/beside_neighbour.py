"""`hostd compare`'s fourth experiment: beside a neighbour (DESIGN §5).

A neighbour of ours (hostd/plumbing/neighbour.py) spins DUTY of every PERIOD on the vCPU's CPU
while the timer (500 us deadlines) and io workloads run under `none`, `adaptive` capped at
2,000,000 ns (timer) or the seed's 2,000,000 cycles (io), on every backend compare runs, and
`guest-haltpoll` (the emulator only: the kvm backend's guest has no cpuidle-haltpoll) with its
guest poll capped alike. The kernel's host poll gives way to a runnable neighbour
(kvm_vcpu_can_poll(); the emulator counts it as halt_poll_preempted); a guest's poll runs in guest
mode and does not. Per cell: successful polls, wake p50, writes/s (io), the vCPU's CPU, and the CPU
the neighbour lost (what it got alone just before the vCPUs ran, minus what it got beside them).

Cases: each neighbour (10% and 50% of 2 ms, and each `compare --neighbour`) and `alone` (no
neighbour: each figure's reference); per case timer then io, the policy order rotated per case and
repeat; every cell on each backend back to back, as the seed's are. One run per cell unless
`--repeat` is given, of 1 s (0.5 s with --quick); the seed's experiments keep their durations and
repeats. Planning, a run's figures and the aggregation are here (pure functions of the runs, tested
without processes); compare measures the cells; the verdict, tables and CSVs are output's
(hostd/output/compare_verdict.py, neighbour_tables.py, compare_csv.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from hostd.analysis.stats import summarize
from hostd.output.compare_verdict import neighbour_verdict
from hostd.measure.compare_plan import Plan
from hostd.output.figures import num
from hostd.plumbing.neighbour import NeighbourSpec
from hostd.plumbing.neighbour_cases import (DEFAULT_NEIGHBOURS, EXPERIMENT, KVM_POLICIES, POLICIES, WORKLOADS,
                                            case_key, case_label, spec_of)
from hostd.plumbing.spec import DEFAULT_INTERVAL_US, VmSpec
from hostd.plumbing.vm import NEIGHBOUR_BASELINE_NS
from vcpu.policy import PolicySpec

TIMER_CAP_NS = 2_000_000  # adaptive's cap for the timer; io's is the seed's 2,000,000 cycles (Plan.fixed_ns)

# --- plan -------------------------------------------------------------------------------------

def neighbours(extra: list[NeighbourSpec] | None) -> tuple[NeighbourSpec, ...]:
    """The defaults and each --neighbour given (once each, in the order given)."""
    out = list(DEFAULT_NEIGHBOURS)
    for n in extra or ():
        if n not in out:
            out.append(n)
    return tuple(out)


def cases(plan: Plan) -> list[NeighbourSpec | None]:
    return [None, *plan.neighbours]


@dataclass(frozen=True)
class Cell:
    repeat: int
    neighbour: NeighbourSpec | None
    workload: str
    policy: str
    backend: str

    @property
    def case(self) -> str:
        return case_key(self.neighbour)

    def run_id(self) -> str:
        return (f"{'kvm:' if self.backend == 'kvm' else ''}{EXPERIMENT}/{self.case}/{self.workload}/"
                f"{self.policy}/r{self.repeat}")


def repeats(plan: Plan, policy: str) -> int:
    return max(plan.neighbour_repeat, plan.neighbour_adaptive_repeat) if policy == "adaptive" else plan.neighbour_repeat


def cells(plan: Plan) -> list[Cell]:
    """The experiment's runs in order: repeats outermost, then cases, workloads, policies (their
    order rotated per case and repeat; a policy's cells end with its repeats), each on every
    backend in turn, back to back."""
    out = []
    for r in range(1, max(repeats(plan, p) for p in POLICIES) + 1):
        for i, n in enumerate(cases(plan)):
            for wl in WORKLOADS:
                k = (r - 1 + i) % len(POLICIES)
                for pol in POLICIES[k:] + POLICIES[:k]:
                    if r <= repeats(plan, pol):
                        out += [Cell(r, n, wl, pol, b) for b in plan.backends if b == "emu" or pol in KVM_POLICIES]
    return out


def cap_ns(plan: Plan, workload: str) -> int:
    return TIMER_CAP_NS if workload == "timer" else plan.fixed_ns


def policy_spec(plan: Plan, workload: str, policy: str) -> PolicySpec:
    cap = cap_ns(plan, workload)
    if policy == "adaptive":
        return PolicySpec(policy="adaptive", host_policy="adaptive", halt_poll_ns=cap)
    if policy == "guest-haltpoll":  # the haltpoll driver turns host polling off; its guest poll gets the cap
        return PolicySpec(policy="guest-haltpoll", host_policy="none", halt_poll_ns=0, guest_halt_poll_ns=cap)
    return PolicySpec(policy=policy, host_policy="none", halt_poll_ns=0)


def vm_spec(plan: Plan, cell: Cell) -> VmSpec:
    return plan.vm_spec(cell.workload, cell.policy, cell.backend, policy_spec=policy_spec(plan, cell.workload, cell.policy),
                        duration=plan.neighbour_duration, neighbour=cell.neighbour)


def baseline_s(cell: Cell) -> float:
    """The neighbour's time alone before the vCPUs run, which a cell with one adds."""
    return 0.0 if cell.neighbour is None else NEIGHBOUR_BASELINE_NS / 1e9


# --- one run's figures -----------------------------------------------------------------------------

def run_metrics(result: dict) -> dict:
    """The figures of one run's §8 result. Successful polls: the idle periods a poll ended
    (host policies: halt_successful_poll / halt_exits; guest-haltpoll: the guest's successful polls
    over its idle periods)."""
    w, vcpus = result["workload"], result["vcpus"]
    total = lambda f: sum(f(v) or 0 for v in vcpus)  # noqa: E731
    if result["spec"]["policy"] == "guest-haltpoll":
        ok, periods = total(lambda v: v["guest"]["guest_halt_poll_success"]), total(lambda v: v["guest"]["idle_periods"])
    else:
        ok, periods = total(lambda v: v["stats"]["halt_successful_poll"]), total(lambda v: v["stats"]["halt_exits"])
    attempted = total(lambda v: v["stats"]["halt_attempted_poll"])
    kvm = result["spec"]["backend"] == "kvm"  # the kernel does not count its preempted polls apart
    n = result.get("neighbour")
    m = {
        "poll_success_pct": 100.0 * ok / periods if periods else None,
        "polls_preempted_pct": (None if kvm or not attempted else
                                100.0 * total(lambda v: v["stats"]["halt_poll_preempted"]) / attempted),
        "vcpu_cpu_cores": sum(v["host"]["cpu_frac"] for v in vcpus),
        "neighbour_cpu_cores": n["cpu_cores"] if n else None,
        "neighbour_alone_cpu_cores": n["alone_cpu_cores"] if n else None,
        "neighbour_cpu_lost_cores": n["cpu_lost_cores"] if n else None,
    }
    if w["name"] == "timer":
        m.update(wake_p50_ns=w["latency_ns"]["p50"], wake_p50_cycles=w["latency_cycles"]["p50"],
                 wake_p99_ns=w["latency_ns"]["p99"], wakes=w["latency_ns"]["count"])
    else:
        lat = vcpus[0]["latency_ns"]["all"]
        m.update(writes_per_s=w["ops_per_s"], wake_p50_ns=lat["p50"], wake_p99_ns=lat["p99"])
    return m


def brief(m: dict) -> str:
    """One progress line's figures."""
    lost, na = m["neighbour_cpu_lost_cores"], "n/a"
    s = f"{m['writes_per_s']:,.0f} writes/s" if "writes_per_s" in m else f"p50 {num(m['wake_p50_ns'], missing=na)} ns"
    s += f", polls ok {num(m['poll_success_pct'], missing=na)}%"
    return s + ("" if lost is None else f", neighbour lost {lost:.3f} core")


# --- aggregation -----------------------------------------------------------------------------------

def aggregate(runs: list[dict], backend: str) -> dict:
    """summary[case][workload][policy][metric] = summarize(...) + its run ids, for one backend's
    runs of this experiment; cases, workloads and policies in run order."""
    by_cell: dict[tuple[str, str, str], list[dict]] = {}
    for r in runs:
        if r["experiment"] == EXPERIMENT and r["backend"] == backend:
            by_cell.setdefault((case_key(spec_of(r["neighbour"])), r["workload"], r["policy"]), []).append(r)
    out: dict = {}
    for (case, wl, pol), rs in by_cell.items():
        rs = sorted(rs, key=lambda r: r["repeat"])
        out.setdefault(case, {}).setdefault(wl, {})[pol] = {
            name: {**summarize([r["metrics"].get(name) for r in rs]), "runs": [r["id"] for r in rs]}
            for name in rs[0]["metrics"]}
    order = [case_key(spec_of(r["neighbour"])) for r in runs if r["experiment"] == EXPERIMENT]
    return {c: {wl: {p: out[c][wl][p] for p in POLICIES if p in out[c].get(wl, {})}
                for wl in WORKLOADS if wl in out[c]}
            for c in dict.fromkeys(order) if c in out}


def document(plan: Plan, runs: list[dict]) -> dict:
    """results.json's "neighbour": the experiment's configuration, the tables' own summary, the
    kernel's beside it (--backend both) and the verdict."""
    summary = aggregate(runs, plan.backends[0])
    kvm = aggregate(runs, "kvm") if plan.backends[1:] == ("kvm",) else None
    ns = [n for n in cases(plan) if n is not None]
    return {
        "config": {
            "cases": [{"key": case_key(n), "label": case_label(n), "duty": n and n.duty, "period_ns": n and n.period_ns}
                      for n in cases(plan)],
            "workloads": list(WORKLOADS), "policies": list(POLICIES), "kvm_policies": list(KVM_POLICIES),
            "repeat": plan.neighbour_repeat, "adaptive_repeat": repeats(plan, "adaptive"),
            "duration_s": plan.neighbour_duration,
            "interval_us": DEFAULT_INTERVAL_US,
            "order": "after the seed's experiments; repeats outermost, then cases (alone first), timer then io, "
                     "the policy order rotated per case and repeat, each cell on every backend back to back",
            "cap_ns": {wl: cap_ns(plan, wl) for wl in WORKLOADS},
            "success": "idle periods a poll ended: host halt_successful_poll / halt_exits; guest-haltpoll the "
                       "guest's successful polls / its idle periods",
            "cpu_lost": "the neighbour's CPU alone just before the vCPUs ran, minus beside them (cores)",
        },
        "summary": summary,
        "kvm": None if kvm is None else {"summary": kvm},
        "verdict": neighbour_verdict(summary, ns, kvm),
    }
