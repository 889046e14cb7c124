"""`hostd replay --trace FILE`: every policy, the offline optimum and the kernel's own decisions,
on the halts a real KVM host traced (kvm:kvm_vcpu_wakeup, kvm:kvm_halt_poll_ns).

Per vCPU thread (the pid the events carry) and in total:
- each policy replayed on the thread's halt durations with replay's engine (one Replayer per
  thread and policy, like the kernel's per-vCPU state), its mean budget, how many halts ended
  while polling, and its cost under optimum's model (poll CPU + P per blocked halt);
- the offline optimum (optimum.optimal_budget) and every policy's distance from it;
- the kernel itself: the budgets it used, rebuilt from its decisions, and their cost with the
  outcome the trace records (poll/wait); and how far our `adaptive` agrees with it
  (hostd.replay.kernel_agreement).

The halt duration is the wakeup event's ns: HLT to wake *including* the poll, and for a halt
that blocked also the scheduler's wake-up latency; that is what the kernel's grow/shrink rule
reads, and an upper bound on the time to the interrupt that the cost model wants.

The report is one document (report()); hostd.output.trace_report prints it and writes the
files. Memory stays flat however long the trace: events are consumed as they are read, policies keep
O(1) state, and the optimum and the plot work on a uniform sample of at most SAMPLE_PER_VCPU halts
per thread and SAMPLE_TOTAL overall (exact below that; the report says when it sampled).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import re
import socket
import sys
from array import array
from pathlib import Path

import numpy as np

from hostd.replay import kernel_agreement
from hostd.analysis import optimum
from hostd.replay.kernel_agreement import KernelAgreement
from hostd.commands.replay import Replayer
from hostd.trace.parse import TraceInfo, TraceReader, Wakeup
from hostd.output.trace_report import KERNEL, HaltsCsv, format_report, write_out
from hostd.plumbing.errors import UsageError
from hostd.plumbing.policy_options import policy_spec_from_args
from vcpu.policy import (
    HALT_POLL_NS_GROW_DEFAULT,
    HALT_POLL_NS_GROW_START_DEFAULT,
    HALT_POLL_NS_SHRINK_DEFAULT,
    KVM_HALT_POLL_NS_DEFAULT,
    POLICIES,
    PolicySpec,
)

SAMPLE_PER_VCPU = 200_000
SAMPLE_TOTAL = 1_000_000
# P when --penalty-ns is not given: what one block costs a wake on this project's machines
# (DESIGN §9: irqfd write -> guest ISR p50 69 us with no polling, 12.5 us with a 2 ms poll).
DEFAULT_PENALTY_NS = 56_000
SYS_PARAMS = Path("/sys/module/kvm/parameters")
KVM_PARAMS = ("halt_poll_ns", "halt_poll_ns_grow", "halt_poll_ns_grow_start", "halt_poll_ns_shrink")
UPSTREAM = dict(zip(KVM_PARAMS, (KVM_HALT_POLL_NS_DEFAULT, HALT_POLL_NS_GROW_DEFAULT,
                                 HALT_POLL_NS_GROW_START_DEFAULT, HALT_POLL_NS_SHRINK_DEFAULT)))
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
        self.kernel = KernelAgreement(kernel_spec)
        self.sample = Reservoir(SAMPLE_PER_VCPU, seed=pid)
        self.halts = self.waited = self.halted_ns = 0

    def wakeup(self, ev: Wakeup) -> tuple[list[dict], int | None]:
        self.halts += 1
        self.waited += ev.waited
        self.halted_ns += ev.ns
        self.sample.add(ev.ns)
        rows = [r.step(ev.ns, ev.valid) for r in self.replayers.values()]
        return rows, self.kernel.wakeup(ev)


# --- parameters ----------------------------------------------------------------------------------

def read_sys_params() -> dict[str, int] | None:
    """The kvm module's live parameters, or None where the module is not loaded."""
    try:
        return {name: int((SYS_PARAMS / name).read_text().strip()) for name in KVM_PARAMS}
    except (OSError, ValueError):
        return None


def kernel_params(info: TraceInfo) -> tuple[dict[str, int], str]:
    """The kvm parameters the traced kernel ran with, as far as we can know, and where from."""
    rec = info.record or {}
    if isinstance(rec.get("kvm_parameters"), dict) and all(k in rec["kvm_parameters"] for k in KVM_PARAMS):
        return {k: int(rec["kvm_parameters"][k]) for k in KVM_PARAMS}, \
            f"recorded with the trace by hostd record on {rec.get('host', '?')}"
    here = socket.gethostname()
    if info.host is None or info.host == here:
        live = read_sys_params()
        if live is not None:
            return live, ("this machine's /sys/module/kvm/parameters"
                          + ("" if info.host else "; the trace names no host: give flags if it comes from another"))
    return dict(UPSTREAM), (f"upstream defaults (the trace comes from {info.host}; give its parameters with flags)"
                            if info.host else "upstream defaults (kvm is not loaded here)")


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


# --- selection -------------------------------------------------------------------------------------

def _pids(text: str | None) -> set[int] | None:
    if text is None:
        return None
    try:
        pids = {int(p) for p in text.split(",") if p.strip()}
    except ValueError:
        pids = set()
    if not pids or min(pids) < 0:
        raise UsageError(f"--pid: expected PID[,PID...], got {text!r}")
    return pids


def _comm(text: str | None) -> re.Pattern | None:
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise UsageError(f"--comm: not a regular expression: {text!r} ({exc})") from None


# --- the run ---------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    pids, comm_re = _pids(args.pid), _comm(args.comm)
    penalty = _penalty(args)
    max_unmatched = _count(args.max_unmatched, "--max-unmatched")
    made_out = bool(args.out) and not os.path.isdir(args.out)
    if args.out:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out: cannot create {args.out}: {exc.strerror or exc}") from None
    reader = TraceReader(args.trace, max_unmatched=max_unmatched)
    info = reader.info
    kparams = kparams_from = specs = kernel_spec = None
    vcpus: dict[int, VcpuReplay] = {}
    threads: dict[int, str] = {}  # every thread with KVM events, for the "unknown pid" answer
    choice: dict[int, bool] = {}
    total_sample = Reservoir(SAMPLE_TOTAL, seed=1)
    halts_csv = HaltsCsv(args.out) if args.out else None
    try:
        for ev in reader:
            pid = ev.pid
            if pid not in threads or threads[pid] == UNKNOWN_COMM:
                threads[pid] = ev.comm
            v = vcpus.get(pid)
            if v is None:
                picked = choice.get(pid)
                if picked is None:
                    if comm_re is not None and ev.comm == UNKNOWN_COMM:
                        continue  # not decidable until the thread's name shows
                    picked = choice[pid] = ((pids is None or pid in pids)
                                            and (comm_re is None or comm_re.search(ev.comm) is not None))
                if not picked:
                    continue
                if specs is None:  # the header (params) has been read by the first event
                    kparams, kparams_from = kernel_params(info)
                    specs, kernel_spec = policy_specs(args, kparams)
                    if halts_csv:
                        halts_csv.start(list(specs))
                v = vcpus[pid] = VcpuReplay(pid, ev.comm, specs, kernel_spec)
            if type(ev) is Wakeup:
                total_sample.add(ev.ns)
                rows, k_budget = v.wakeup(ev)
                if halts_csv:
                    halts_csv.row(ev, v.halts, k_budget, rows)
            else:
                v.kernel.decision(ev)
        _refuse_unusable(args, info, vcpus, threads)
    except BaseException:
        if halts_csv:
            halts_csv.abort()
        if made_out:
            with contextlib.suppress(OSError):
                os.rmdir(args.out)  # nothing to show: leave no empty directory behind
        raise
    doc = report(info, vcpus, specs, kparams, kparams_from, penalty, total_sample)
    if halts_csv:
        halts_csv.finish()
    if args.out:
        write_out(args.out, doc, total_sample.array())
    try:
        print(json.dumps(doc) if args.json else "\n".join(format_report(doc)), flush=True)
    except BrokenPipeError:  # `| head`: the reader has seen enough; no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _penalty(args: argparse.Namespace) -> tuple[float, str]:
    if args.penalty_ns is None:
        return float(DEFAULT_PENALTY_NS), ("default: a block's cost to a wake on this project's machines, "
                                           "DESIGN §9; give yours with --penalty-ns")
    return float(_count(args.penalty_ns, "--penalty-ns")), "--penalty-ns"


def _count(text, option: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = -1
    if value < 0:
        raise UsageError(f"{option}: must be a whole number >= 0, got {text!r}")
    return value


def _refuse_unusable(args, info: TraceInfo, vcpus: dict, threads: dict) -> None:
    """Nothing usable found: one line saying why, exit 2."""
    where = f"--trace: {args.trace}"
    if info.lines == 0:
        raise UsageError(f"{where} is empty")
    if info.wakeups == 0:
        seen = (f"{info.decisions} kvm_halt_poll_ns events but " if info.decisions else "")
        unmatched = f", {info.unmatched} lines of no known layout" if info.unmatched else ""
        raise UsageError(f"{where}: {seen}no kvm:kvm_vcpu_wakeup events in {info.lines} lines{unmatched} "
                         f"(record them with `hostd record`, perf or trace-cmd; see README 'Tuning a real host')")
    if not vcpus:
        what = " and ".join(x for x in (f"--pid {args.pid}" if args.pid else "",
                                         f"--comm {args.comm!r}" if args.comm else "") if x)
        known = ", ".join(f"{p} ({c})" for p, c in list(threads.items())[:8])
        more = f" and {len(threads) - 8} more" if len(threads) > 8 else ""
        raise UsageError(f"{where}: {what} matches no vCPU thread; threads with KVM events: {known}{more}")


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


def report(info: TraceInfo, vcpus: dict[int, VcpuReplay], specs: dict[str, PolicySpec], kparams: dict,
           kparams_from: str, penalty: tuple[float, str], total_sample: Reservoir) -> dict:
    p, p_from = penalty
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
             **_scope(sum(v.halts for v in vcpus.values()), totals, k_total, total_sample, p), "kernel": k_total}
    return {"trace": info.to_dict(),
            "kernel_params": {**kparams, "from": kparams_from},
            "penalty_ns": p, "penalty_from": p_from,
            "specs": {name: s.to_dict() for name, s in specs.items()},
            "vcpus": rows, "total": total}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "trace (with --trace)",
        "Replay the halts a real KVM host traced. The kernel's parameters come from the trace's "
        "`hostd record` header, else this machine's /sys/module/kvm/parameters, else upstream's "
        "defaults; the policy flags override them.")
    g.add_argument("--pid", metavar="PID[,PID...]", help="only these vCPU threads (the pid the events carry)")
    g.add_argument("--comm", metavar="REGEX", help="only vCPU threads whose name matches, e.g. 'CPU [0-3]/KVM'")
    g.add_argument("--penalty-ns", metavar="NS",
                   help=f"the cost model's price of one blocked halt: what a sleep/wake round trip adds to a "
                        f"wake on the traced host (default {DEFAULT_PENALTY_NS:,}, measured on this project's "
                        f"machines; use `hostd tune`'s figure for yours)")
    g.add_argument("--out", metavar="DIR",
                   help="also write summary.csv (per thread and policy), halts.csv (per halt), replay.json "
                        "and halts.png (halt durations with each policy's budget and the optimum) into DIR")
    g.add_argument("--max-unmatched", metavar="N", default="1000",
                   help="give up after this many lines that fit no trace layout (default 1000)")
