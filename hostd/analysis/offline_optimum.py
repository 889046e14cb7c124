"""`hostd tune`'s offline optimum (hostd.analysis.optimum): from the halt durations recorded during
the sweep, the fixed budget that minimises CPU spent polling + the block-path penalty per blocked
halt, and how far the swept fixed budgets, upstream adaptive and guest-haltpoll, replayed through
hostd.replay.replayer on the same trace, are from it (COST_MODEL)."""
from __future__ import annotations

import numpy as np

from hostd.analysis import optimum as opt
from hostd.replay.replayer import replay
from vcpu.abi import PATH_BLOCK, PATH_POLL
from vcpu.policy import KVM_HALT_POLL_NS_DEFAULT, PolicySpec

# The offline replays use at most this many halts (an even subsample of the pooled trace).
MAX_TRACE = 100_000

COST_MODEL = (
    "Offline optimum: for a fixed budget B, a halt of h ns (HLT to interrupt) costs h if it ends "
    "inside the poll (0 < B, h <= B: CPU spent polling) and B + P if not (the budget polled for "
    "nothing, then the block path), where P, the block-path penalty, is measured during the "
    "sweep: median block-path wake latency minus median poll-path wake latency on this machine. "
    "The optimum is the B minimising the mean cost over every halt recorded in the sweep; it lies "
    "at 0 or at one of the recorded durations, so it is found exactly. Fixed, adaptive and "
    "guest-haltpoll are replayed on the same trace with hostd replay's engine and priced the same "
    "way (poll CPU + P per blocked halt).")


def _p50(x: np.ndarray) -> float | None:
    return float(np.percentile(x, 50)) if x.size else None


def offline(budgets: list[int], halts: np.ndarray, latency: np.ndarray, path: np.ndarray,
            extra_fixed: list[int] = ()) -> dict:
    """The optimum over the pooled trace and every policy's distance from it (hostd.replay.replayer)."""
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
