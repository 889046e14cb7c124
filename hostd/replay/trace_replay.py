"""`hostd replay --trace FILE`'s engine: every policy, the offline optimum and the kernel's own
decisions, on the halts a real KVM host traced (kvm:kvm_vcpu_wakeup, kvm:kvm_halt_poll_ns).

Per vCPU thread (the pid the events carry) and in total:
- each policy replayed on the thread's halt durations (hostd.replay.replayer: one Replayer per
  thread and policy, like the kernel's per-vCPU state), its mean budget, how many halts ended
  while polling, and its cost under optimum's model (poll CPU + P per blocked halt);
- the offline optimum (optimum.optimal_budget) and every policy's distance from it;
- the kernel itself: the budgets it used, rebuilt from its decisions, and their cost with the
  outcome the trace records (poll/wait); and how far our `adaptive` agrees with it
  (hostd.replay.kernel_agreement).

The halt duration is the wakeup event's ns: HLT to wake *including* the poll, and for a halt
that blocked also the scheduler's wake-up latency; that is what the kernel's grow/shrink rule
reads, and an upper bound on the time to the interrupt that the cost model wants.

replay_trace() runs the trace and report() makes it one document, which hostd.output.trace_report
prints and writes out. Memory stays flat however long the trace: events are consumed as they are
read, policies keep O(1) state, and the optimum and the plot work on a uniform sample of at most
SAMPLE_PER_VCPU halts per thread and SAMPLE_TOTAL overall (exact below that; the report says when
it sampled).
"""
from __future__ import annotations

import argparse
import copy
import random
import re
from array import array
from dataclasses import dataclass, field

import numpy as np

from hostd.analysis import optimum
from hostd.output.trace_report import KERNEL
from hostd.replay import kernel_agreement
from hostd.replay.halts_csv import HaltsCsv
from hostd.plumbing.policy_options import policy_spec_from_args
from hostd.replay.replayer import Replayer
from hostd.trace.module_params import kernel_params
from hostd.trace.parse import TraceInfo, TraceReader, Wakeup
from vcpu.policy import POLICIES, PolicySpec

SAMPLE_PER_VCPU = 200_000
SAMPLE_TOTAL = 1_000_000
_HOST_KNOBS = ("halt_poll_ns_grow", "halt_poll_ns_grow_start", "halt_poll_ns_shrink")
_GUEST_KNOBS = ("guest_halt_poll_ns", "guest_halt_poll_grow", "guest_halt_poll_grow_start",
                "guest_halt_poll_shrink", "guest_halt_poll_allow_shrink")
UNKNOWN_COMM = "<...>"  # tracefs prints this for a task whose name it no longer has


class Reservoir:
    """A uniform sample of at most `size` values of a stream (Vitter's algorithm R): exact while
    the stream fits, fixed memory after."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seen = 0
        self.values = array("q")
        self._rng = random.Random(seed)  # seeded: the same trace gives the same report

    def add(self, value: int) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.size:
                self.values[j] = value

    def array(self) -> np.ndarray:
        return np.frombuffer(self.values, dtype=np.int64).copy() if self.values else np.empty(0, np.int64)

    @property
    def sampled(self) -> bool:
        return self.seen > len(self.values)


class VcpuReplay:
    """One vCPU thread: its policies, its sample, and the kernel's decisions."""

    def __init__(self, pid: int, comm: str, specs: dict[str, PolicySpec], kernel_spec: PolicySpec) -> None:
        self.pid, self.comm = pid, comm
        self.replayers = {name: Replayer(spec) for name, spec in specs.items()}
        self.kernel = kernel_agreement.KernelAgreement(kernel_spec)
        self.sample = Reservoir(SAMPLE_PER_VCPU, seed=pid)
        self.halts = self.waited = self.halted_ns = 0

    def wakeup(self, ev: Wakeup) -> tuple[list[dict], int | None]:
        self.halts += 1
        self.waited += ev.waited
        self.halted_ns += ev.ns
        self.sample.add(ev.ns)
        rows = [r.step(ev.ns, ev.valid) for r in self.replayers.values()]
        return rows, self.kernel.wakeup(ev)


# --- the policies ---------------------------------------------------------------------------------

def policy_specs(args: argparse.Namespace, kparams: dict[str, int]) -> tuple[dict[str, PolicySpec], PolicySpec]:
    """The policies to replay (--policy, else all) and the adaptive spec the kernel is judged by.

    adaptive takes the kernel's parameters unless a flag overrides one; with every policy
    replayed, each reads only the options that concern it (the host knobs go to adaptive alone)."""
    def spec_for(policy: str, strict: bool) -> PolicySpec:
        ns = copy.copy(args)
        ns.policy = policy
        if policy == "adaptive":
            for knob in _HOST_KNOBS:
                if getattr(ns, knob) is None:
                    setattr(ns, knob, str(kparams[knob]))
            if ns.halt_poll_ns is None and ns.halt_poll is None:
                ns.halt_poll_ns = str(kparams["halt_poll_ns"])
        elif not strict:
            for knob in _HOST_KNOBS:
                setattr(ns, knob, None)
            if policy != "fixed" and not (policy == "guest-haltpoll" and ns.host_policy):
                ns.halt_poll_ns = ns.halt_poll = None
            if policy != "guest-haltpoll":
                ns.host_policy = None
                for knob in _GUEST_KNOBS:
                    setattr(ns, knob, None)
        return policy_spec_from_args(ns)

    chosen = [args.policy] if args.policy else list(POLICIES)
    specs = {p: spec_for(p, strict=args.policy is not None) for p in chosen}
    kernel_spec = specs.get("adaptive") or spec_for("adaptive", strict=False)
    return specs, kernel_spec


# --- the run ---------------------------------------------------------------------------------------

@dataclass
class Replayed:
    """What replay_trace() found: the selected threads' replays, and what report() needs besides."""
    vcpus: dict[int, VcpuReplay] = field(default_factory=dict)
    threads: dict[int, str] = field(default_factory=dict)  # every thread with KVM events (for "no such pid")
    specs: dict[str, PolicySpec] | None = None  # from the first selected event on: the header is read by then
    kparams: dict[str, int] | None = None
    kparams_from: str | None = None
    total_sample: Reservoir = field(default_factory=lambda: Reservoir(SAMPLE_TOTAL, seed=1))


def replay_trace(reader: TraceReader, args: argparse.Namespace, pids: set[int] | None,
                 comm_re: re.Pattern | None, halts_csv: HaltsCsv | None = None) -> Replayed:
    """Every event of the threads selected by pid and name through their replays, as it is read;
    each halt's rows into halts_csv too."""
    r = Replayed()
    kernel_spec = None
    choice: dict[int, bool] = {}
    for ev in reader:
        pid = ev.pid
        if pid not in r.threads or r.threads[pid] == UNKNOWN_COMM:
            r.threads[pid] = ev.comm
        v = r.vcpus.get(pid)
        if v is None:
            picked = choice.get(pid)
            if picked is None:
                if comm_re is not None and ev.comm == UNKNOWN_COMM:
                    continue  # not decidable until the thread's name shows
                picked = choice[pid] = ((pids is None or pid in pids)
                                        and (comm_re is None or comm_re.search(ev.comm) is not None))
            if not picked:
                continue
            if r.specs is None:
                r.kparams, r.kparams_from = kernel_params(reader.info)
                r.specs, kernel_spec = policy_specs(args, r.kparams)
                if halts_csv:
                    halts_csv.start(list(r.specs))
            v = r.vcpus[pid] = VcpuReplay(pid, ev.comm, r.specs, kernel_spec)
        if type(ev) is Wakeup:
            r.total_sample.add(ev.ns)
            rows, k_budget = v.wakeup(ev)
            if halts_csv:
                halts_csv.row(ev, v.halts, k_budget, rows)
        else:
            v.kernel.decision(ev)
    return r


# --- the report ------------------------------------------------------------------------------------

def _pcts(x: np.ndarray) -> dict:
    if x.size == 0:
        return {"p50": None, "p90": None, "p99": None}
    p = np.percentile(x, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def _scope(halts: int, summaries: dict[str, dict], kernel: dict, sample: Reservoir, penalty: float) -> dict:
    """Costs, the optimum and the distances for one vCPU or for the total."""
    x = sample.array()
    best = optimum.optimal_budget(x, penalty)
    # From a sample the optimum's cost per halt is an estimate; exact otherwise.
    opt_cost = best.cost_per_halt_ns
    policies = {}
    for name, s in summaries.items():
        cost = optimum.replay_cost(s, penalty)
        per = cost / s["halts"] if s["halts"] else None
        policies[name] = {**s, "cost_ns": cost, "cost_per_halt_ns": per,
                          "over_optimum_ns": None if per is None else per - opt_cost}
    if kernel.get("poll_cpu_ns") is not None:
        cost = kernel["poll_cpu_ns"] + kernel["waited"] * penalty
        known = kernel["polled"] + kernel["waited"]
        per = cost / known if known else None
        policies[KERNEL] = {"policy": KERNEL, "halts": known, "polled_ok": kernel["polled"],
                            "success_ratio": kernel["polled"] / known if known else None,
                            "blocks": kernel["waited"], "poll_cpu_ns": kernel["poll_cpu_ns"],
                            "budget_ns_mean": kernel["budget_ns_sum"] / known if known else None,
                            "cost_ns": cost, "cost_per_halt_ns": per,
                            "over_optimum_ns": None if per is None else per - opt_cost}
    hits = x[x <= best.budget_ns] if best.budget_ns > 0 else x[:0]
    return {"halts": halts, "halt_ns": _pcts(x), "policies": policies,
            "optimum": {"budget_ns": best.budget_ns, "cost_per_halt_ns": opt_cost,
                        "success_ratio": hits.size / x.size if x.size else None,
                        "halts_used": int(x.size), "sampled": sample.sampled}}


def _sum_summaries(summaries: list[dict]) -> dict:
    out = dict(summaries[0])
    for key in ("halts", "polled_ok", "blocks", "exits", "poll_cpu_ns", "halted_ns", "exit_cost_ns",
                "guest_polled_ok"):
        if key in out:
            out[key] = sum(s[key] for s in summaries)
    n, exits = out["halts"], out["exits"]
    out["success_ratio"] = out["polled_ok"] / n if n else None
    out["poll_cpu_frac"] = out["poll_cpu_ns"] / out["halted_ns"] if out["halted_ns"] else None
    budget = sum((s["budget_ns_mean"] or 0) * s["exits"] for s in summaries)
    out["budget_ns_mean"] = budget / exits if exits else None
    if "guest_budget_ns_mean" in out:
        guest = sum((s["guest_budget_ns_mean"] or 0) * s["halts"] for s in summaries)
        out["guest_budget_ns_mean"] = guest / n if n else None
    return out


def report(info: TraceInfo, r: Replayed, penalty: tuple[float, str]) -> dict:
    """The document: per vCPU thread and in total, each policy's cost, the optimum and the kernel."""
    p, p_from = penalty
    vcpus, specs = r.vcpus, r.specs
    rows, kernels = [], []
    for v in vcpus.values():
        summaries = {name: r.summary() for name, r in v.replayers.items()}
        k = v.kernel.result()
        kernels.append(k)
        rows.append({"pid": v.pid, "comm": v.comm, "vcpu_id": k["vcpu_id"], "waited": v.waited,
                     "halted_ns": v.halted_ns, **_scope(v.halts, summaries, k, v.sample, p), "kernel": k})
    totals = {name: _sum_summaries([v.replayers[name].summary() for v in vcpus.values()]) for name in specs}
    k_total = kernel_agreement.merge(kernels)
    known = [k for k in kernels if k.get("poll_cpu_ns") is not None]
    if known:
        k_total.update({key: sum(k[key] for k in known)
                        for key in ("polled", "waited", "poll_cpu_ns", "budget_ns_sum")})
    total = {"vcpus": len(vcpus), "waited": sum(v.waited for v in vcpus.values()),
             "halted_ns": sum(v.halted_ns for v in vcpus.values()),
             **_scope(sum(v.halts for v in vcpus.values()), totals, k_total, r.total_sample, p), "kernel": k_total}
    return {"trace": info.to_dict(),
            "kernel_params": {**r.kparams, "from": r.kparams_from},
            "penalty_ns": p, "penalty_from": p_from,
            "specs": {name: s.to_dict() for name, s in specs.items()},
            "vcpus": rows, "total": total}
