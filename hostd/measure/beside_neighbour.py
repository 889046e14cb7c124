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
repeats. Planning, aggregation, the verdict, the table and the CSVs are here (pure functions of the
runs, tested without processes); compare measures the cells and writes the files.
"""
from __future__ import annotations

import csv
import io as _io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from hostd.analysis.stats import summarize
from hostd.plumbing.neighbour import NeighbourSpec, label as neighbour_label
from hostd.plumbing.spec import DEFAULT_INTERVAL_US, VmSpec
from hostd.plumbing.vm import NEIGHBOUR_BASELINE_NS
from vcpu.policy import PolicySpec

if TYPE_CHECKING:
    from hostd.commands.compare import Plan

EXPERIMENT = "neighbour"
ALONE = "alone"  # the case without a neighbour
DEFAULT_NEIGHBOURS = (NeighbourSpec(0.1, 2_000_000), NeighbourSpec(0.5, 2_000_000))
WORKLOADS = ("timer", "io")
POLICIES = ("none", "adaptive", "guest-haltpoll")
KVM_POLICIES = ("none", "adaptive")  # the kvm backend's guest has no cpuidle-haltpoll
TIMER_CAP_NS = 2_000_000  # adaptive's cap for the timer; io's is the seed's 2,000,000 cycles (Plan.fixed_ns)
# Seconds per cell (--quick or not) and runs per cell unless --repeat says otherwise: with these,
# ./run.sh (the full comparison, both backends) stays under 5 minutes on 2 cores and --quick under 2.
# Each cell with a neighbour also spends NEIGHBOUR_BASELINE_NS with the neighbour alone first.
DURATION_S = {False: 1.0, True: 0.5}
REPEAT = 1
# adaptive's cells carry the fidelity rows, and one 1 s run decides them by a few halts: its wake p50
# sits where polled and blocked wakes meet, so a run's share of each moves it by 2x. The full
# comparison takes the median of this many of those runs (about 40 s more on 2 cores); --quick one.
ADAPTIVE_REPEAT = {False: 3, True: 1}
# The verdict's words: successful polls that fell by this many points "gave way"; a neighbour that
# lost this much more CPU under one policy than another lost "more".
GAVE_WAY_POINTS = 10.0
MORE_CORES = 0.02

# --- plan -------------------------------------------------------------------------------------

def case_key(n: NeighbourSpec | None) -> str:
    """`alone`, or `50%:2ms` (the --neighbour text of that neighbour): a case's key in results."""
    if n is None:
        return ALONE
    period = f"{n.period_ns / 1e6:g}ms" if n.period_ns >= 1_000_000 else f"{n.period_ns / 1e3:g}us"
    return f"{100 * n.duty:g}%:{period}"


def case_label(n: NeighbourSpec | None) -> str:
    return "alone" if n is None else neighbour_label(n.duty, n.period_ns)


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
    lost = m["neighbour_cpu_lost_cores"]
    s = f"{m['writes_per_s']:,.0f} writes/s" if "writes_per_s" in m else f"p50 {_num(m['wake_p50_ns'])} ns"
    s += f", polls ok {_num(m['poll_success_pct'])}%"
    return s + ("" if lost is None else f", neighbour lost {lost:.3f} core")


# --- aggregation -----------------------------------------------------------------------------------

def aggregate(runs: list[dict], backend: str) -> dict:
    """summary[case][workload][policy][metric] = summarize(...) + its run ids, for one backend's
    runs of this experiment; cases, workloads and policies in run order."""
    by_cell: dict[tuple[str, str, str], list[dict]] = {}
    for r in runs:
        if r["experiment"] == EXPERIMENT and r["backend"] == backend:
            by_cell.setdefault((case_key(_spec(r["neighbour"])), r["workload"], r["policy"]), []).append(r)
    out: dict = {}
    for (case, wl, pol), rs in by_cell.items():
        rs = sorted(rs, key=lambda r: r["repeat"])
        out.setdefault(case, {}).setdefault(wl, {})[pol] = {
            name: {**summarize([r["metrics"].get(name) for r in rs]), "runs": [r["id"] for r in rs]}
            for name in rs[0]["metrics"]}
    order = [case_key(_spec(r["neighbour"])) for r in runs if r["experiment"] == EXPERIMENT]
    return {c: {wl: {p: out[c][wl][p] for p in POLICIES if p in out[c].get(wl, {})}
                for wl in WORKLOADS if wl in out[c]}
            for c in dict.fromkeys(order) if c in out}


def _spec(d: dict | None) -> NeighbourSpec | None:
    return None if d is None else NeighbourSpec(d["duty"], d["period_ns"])


def median_of(summary: dict | None, case: str, wl: str, pol: str, metric: str) -> float | None:
    try:
        return summary[case][wl][pol][metric]["median"]
    except (KeyError, TypeError):
        return None


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
        "verdict": verdict(summary, ns, kvm),
    }


# --- the verdict: computed from the medians ------------------------------------------------------------

def verdict(summary: dict, ns: list[NeighbourSpec], kvm: dict | None = None) -> str:
    """What the busiest neighbour shows on the timer: whether the host's adaptive polling gave way
    (its successful polls against alone) and what it cost the neighbour, against guest-haltpoll;
    then what polling bought beside it."""
    if not ns:
        return ""
    top = max(ns, key=lambda n: n.duty)
    case = case_key(top)
    g = lambda pol, metric, s=summary, c=case: median_of(s, c, "timer", pol, metric)  # noqa: E731
    a_ok, a_alone = g("adaptive", "poll_success_pct"), g("adaptive", "poll_success_pct", c=ALONE)
    h_ok, h_alone = g("guest-haltpoll", "poll_success_pct"), g("guest-haltpoll", "poll_success_pct", c=ALONE)
    a_lost, h_lost = g("adaptive", "neighbour_cpu_lost_cores"), g("guest-haltpoll", "neighbour_cpu_lost_cores")
    parts = []
    if a_ok is not None:
        s = f"Beside a neighbour spinning {case_label(top)} (timer), the host's adaptive polling "
        if a_alone is None:
            s += f"ended {a_ok:.0f}% of halts in a successful poll"
        else:
            did = "gave way to it" if a_ok < a_alone - GAVE_WAY_POINTS else "did not give way"
            s += f"{did} ({a_ok:.0f}% of halts ended in a successful poll, {a_alone:.0f}% alone)"
        if a_lost is not None:
            s += f" and the neighbour lost {a_lost:.3f} core"
        if h_ok is not None:
            s += (f", while guest-haltpoll, whose poll runs in guest mode and does not yield, ended {h_ok:.0f}% of its "
                  f"idle periods in a poll ({_pct(h_alone)} alone)")
            if h_lost is not None and a_lost is not None:
                more = ("took more of the neighbour's CPU" if h_lost > a_lost + MORE_CORES else
                        "took less of the neighbour's CPU" if h_lost < a_lost - MORE_CORES else
                        "cost the neighbour about as much")
                s += f" and {more} ({h_lost:.3f} core)"
        k_ok, k_lost = g("adaptive", "poll_success_pct", s=kvm), g("adaptive", "neighbour_cpu_lost_cores", s=kvm)
        if k_ok is not None:
            s += (f"; the kernel's adaptive: {k_ok:.0f}% successful polls ({_pct(g('adaptive', 'poll_success_pct', s=kvm, c=ALONE))} "
                  f"alone), neighbour lost {_num(k_lost, 3)} core")
        parts.append(s + ".")
    bought = []
    for wl, metric, unit, higher in (("timer", "wake_p50_ns", " ns wake p50", False), ("io", "writes_per_s", " writes/s", True)):
        a, n = median_of(summary, case, wl, "adaptive", metric), median_of(summary, case, wl, "none", metric)
        if a and n:
            times = a / n if higher else n / a
            bought.append(f"{wl} {_num(a)}{unit} with adaptive against {_num(n)} without ({times:.1f}x "
                          f"{'the throughput' if higher else 'faster'})")
    if bought:
        parts.append(f"What polling bought beside it: {'; '.join(bought)}.")
    return " ".join(parts)


def _num(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}%"


# --- output -------------------------------------------------------------------------------------------

# Per workload: (metric, digits, unit, header) of the emulator's columns; the kernel's repeat them
# (--backend both: its emu / kvm ratios are in the fidelity table).
COLUMNS = {
    "timer": (("poll_success_pct", 0, "%", "successful\npolls"), ("wake_p50_ns", 0, "", "p50 ns\nTSC cycles"),
              ("vcpu_cpu_cores", 3, "", "vCPU\ncores"), ("neighbour_cpu_lost_cores", 3, "", "neighbour\nlost")),
    "io": (("poll_success_pct", 0, "%", "successful\npolls"), ("wake_p50_ns", 0, "", "wake p50\nns"),
           ("writes_per_s", 0, "", "writes/s"), ("vcpu_cpu_cores", 3, "", "vCPU\ncores"),
           ("neighbour_cpu_lost_cores", 3, "", "neighbour\nlost")),
}
TITLES = {"timer": f"timer, wake - deadline ({DEFAULT_INTERVAL_US} us deadlines)",
          "io": "io, O_DSYNC writes (wake p50: interrupt injected -> guest resumes)"}


def heading(doc: dict) -> str:
    nb = doc["neighbour"]["config"]
    cfg = doc["config"]
    runs = "one run" if nb["repeat"] == 1 else f"the median of {nb['repeat']} runs"
    if nb["adaptive_repeat"] != nb["repeat"]:
        runs += f" (adaptive: the median of {nb['adaptive_repeat']})"
    return (f"Beside a neighbour: a process of ours pinned to the vCPU's CPU spinning its duty of every period "
            f"(1 vCPU; {runs} of {nb['duration_s']:g} s per cell; the seed's experiments above keep their "
            f"own). adaptive capped at {nb['cap_ns']['timer']:,} ns (timer, {nb['interval_us']} us deadlines) "
            f"and {nb['cap_ns']['io']:,} ns = the seed's 2,000,000 cycles at {cfg['tsc_khz']:,} kHz (io); "
            "guest-haltpoll's guest poll capped alike, emulator only. successful polls: idle periods a poll ended; "
            "neighbour lost: its CPU alone just before the vCPUs ran, minus beside them (cores); vCPU: the vCPU's CPU "
            "(cores); alone: no neighbour"
            + ("; kvm: the same cell on real KVM VMs, the kernel's own halt polling." if doc["neighbour"].get("kvm")
               else "."))


def print_tables(doc: dict, console, fmt: Callable, disturbed: set[str]) -> None:
    """The experiment's tables, one per workload, rows per (case, policy); `fmt` is compare's cell()."""
    from rich.table import Table  # lazy: rich costs start-up time every hostd command would pay; only printing needs it

    nb = doc.get("neighbour")
    if not nb or not nb["summary"]:
        return
    s, kvm = nb["summary"], (nb.get("kvm") or {}).get("summary")
    spread = nb["config"]["repeat"] > 1
    console.print(heading(doc))
    labels = {c["key"]: c["label"] for c in nb["config"]["cases"]}
    for wl in WORKLOADS:
        t = Table(title=f"Beside a neighbour: {TITLES[wl]}", title_justify="left")
        t.add_column("neighbour", no_wrap=True)
        t.add_column("policy", no_wrap=True)
        for _, _, _, header in COLUMNS[wl]:
            t.add_column(header, justify="right")
        for _, _, _, header in COLUMNS[wl] if kvm is not None else ():
            t.add_column(f"kvm\n{header}", justify="right")
        for case, wls in s.items():
            pols = wls.get(wl, {})
            for i, (pol, m) in enumerate(pols.items()):
                ids = {rid for v in m.values() for rid in v.get("runs", [])}
                row = [labels.get(case, case) if i == 0 else "", pol + (" *" if ids & disturbed else "")]
                row += _cells(wl, m, fmt, spread)
                if kvm is not None:
                    k = kvm.get(case, {}).get(wl, {}).get(pol)
                    row += _cells(wl, k, fmt, spread) if k else ["-"] * len(COLUMNS[wl])
                t.add_row(*row, end_section=i == len(pols) - 1)
        console.print(t)


def _cells(wl: str, m: dict, fmt: Callable, spread: bool) -> list[str]:
    out = []
    for metric, digits, unit, _ in COLUMNS[wl]:
        text = fmt(m.get(metric), digits, unit, spread=spread)
        if wl == "timer" and metric == "wake_p50_ns":
            text += "\n" + fmt(m.get("wake_p50_cycles"), 0, "", spread=spread)
        out.append(text)
    return out


CSV_COLUMNS = ("poll_success_pct", "polls_preempted_pct", "wake_p50_ns", "wake_p50_cycles", "wake_p99_ns",
               "writes_per_s", "vcpu_cpu_cores", "neighbour_cpu_cores", "neighbour_alone_cpu_cores",
               "neighbour_cpu_lost_cores")


def summary_csv(doc: dict) -> str:
    """neighbour.csv: one row per (backend, case, workload, policy), each figure's median, min and max."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["backend", "neighbour", "workload", "policy", "n_runs"]
               + [f"{c}_{s}" for c in CSV_COLUMNS for s in ("median", "min", "max")])
    nb = doc.get("neighbour") or {}
    sides = [(doc["backend"], nb.get("summary") or {}), ("kvm", (nb.get("kvm") or {}).get("summary") or {})]
    for backend, summary in sides:
        for case, wls in summary.items():
            for wl, pols in wls.items():
                for pol, ms in pols.items():
                    row = [backend, case, wl, pol, max((v["n"] for v in ms.values()), default=0)]
                    for c in CSV_COLUMNS:
                        row += [ms.get(c, {}).get(s) for s in ("median", "min", "max")]
                    w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def runs_csv(runs: list[dict]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "backend", "neighbour", "workload", "policy", "repeat", "order", "duration_s",
                "foreign_load", "disturbed", *CSV_COLUMNS])
    for r in runs:
        if r["experiment"] != EXPERIMENT:
            continue
        w.writerow([r["id"], r["backend"], case_key(_spec(r["neighbour"])), r["workload"], r["policy"], r["repeat"],
                    r["order"], r["result"]["spec"]["duration_s"], r["foreign_load"], r["disturbed"]]
                   + ["" if r["metrics"].get(c) is None else r["metrics"][c] for c in CSV_COLUMNS])
    return buf.getvalue()
