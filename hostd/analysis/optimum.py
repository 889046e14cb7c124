"""The offline cost model of `hostd tune`: what a halt costs under a poll budget, and the best budget.

Cost of one halt of duration h (ns from HLT to the interrupt) under a fixed budget B:

    hit  (0 < B and h <= B):  h          the CPU spent polling until the interrupt came
    miss (otherwise):         B + P      the whole budget polled for nothing, then the block path

P is the block-path penalty measured on this machine: the median wake latency of the block path
minus the median wake latency of the poll path (what one sleep/wake round trip through the host
scheduler adds to a wake). Polling CPU and wake latency are both ns of a CPU or of a waiting
vCPU, so the model prices one ns of host CPU the same as one ns of guest wake delay; the expected
cost per halt is the mean over the recorded halts.

The same price applies to a replayed policy (`hostd.replay.replayer` rows): poll CPU (host and guest poll)
plus P per halt that blocked. For a fixed budget that is exactly the formula above, which is what
lets `optimal_budget` be checked against replay.

Where the optimum lies (why an exact search over the recorded durations suffices). Sort the
halts h_1 <= ... <= h_n and write C(B) = sum over halts of the cost above.
- C(0) = n*P: every halt misses and nothing is polled.
- On an open interval h_k < B < h_(k+1) (with h_0 = 0, h_(n+1) = +inf) the set of hits
  {i : h_i <= B} does not change, so C(B) = sum_{i<=k} h_i + (n-k)*(B + P): affine in B with
  slope n-k >= 0. It is non-decreasing on the interval, and its infimum there is its value at the
  left end B -> h_k+, which equals C(h_k) because h_k <= h_k is already a hit (C is
  right-continuous: the hit set at B = h_k is the same as just above it).
- On (0, h_1) the infimum is the limit B -> 0+, which is n*P = C(0).
So the infimum over all B >= 0 is attained on the finite set {0} U {h_1, ..., h_n}. Budgets are
whole ns, as the kernel's are: where some h_k = 0 the interval (0, h_(k+1)) starts at B = 1, so the
candidate for a recorded 0 is 1 (max(h_k, 1) in general). Evaluating C
at each of them (O(n log n) with a sort and prefix sums) gives the exact minimiser. Ties are
broken towards the smaller budget (the cheaper one for an idle vCPU).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Optimum:
    budget_ns: int  # the minimising fixed budget
    cost_ns: float  # total cost over the trace at that budget
    halts: int
    penalty_ns: float

    @property
    def cost_per_halt_ns(self) -> float:
        return self.cost_ns / self.halts if self.halts else 0.0


def fixed_cost(halts: Sequence[int] | np.ndarray, budget_ns: int, penalty_ns: float) -> float:
    """Total cost of the trace under a fixed budget (the formula in the module docstring)."""
    h = np.asarray(halts, dtype=np.int64)
    if budget_ns <= 0:
        return float(h.size) * penalty_ns
    hit = h <= budget_ns
    return float(h[hit].sum()) + float((~hit).sum()) * (budget_ns + penalty_ns)


def optimal_budget(halts: Sequence[int] | np.ndarray, penalty_ns: float) -> Optimum:
    """The fixed budget minimising the total cost over `halts`, searched exactly (see above)."""
    if penalty_ns < 0:
        raise ValueError("the block-path penalty must be >= 0")
    h = np.sort(np.asarray(halts, dtype=np.int64))
    n = int(h.size)
    best = Optimum(budget_ns=0, cost_ns=float(n) * penalty_ns, halts=n, penalty_ns=penalty_ns)
    if n == 0:
        return best
    # Candidates B = h_k (distinct, whole ns; a recorded 0 stands for B = 1, the smallest
    # budget that polls at all): hits are every halt <= B.
    values = np.unique(np.maximum(h, 1))
    prefix = np.concatenate(([0], np.cumsum(h, dtype=np.float64)))
    hits = np.searchsorted(h, values, side="right")  # number of halts <= B
    costs = prefix[hits] + (n - hits) * (values.astype(np.float64) + penalty_ns)
    k = int(np.argmin(costs))  # first minimum: the smallest budget among equal costs
    if costs[k] < best.cost_ns:
        best = Optimum(budget_ns=int(values[k]), cost_ns=float(costs[k]), halts=n, penalty_ns=penalty_ns)
    return best


def replay_cost(summary: dict, penalty_ns: float) -> float:
    """Total cost of a `hostd.replay.replayer` summary: poll CPU (host and guest) plus P per blocked halt.

    Modelled exit costs (--exit-cost-ns) are added too: a VM exit is CPU the guest-side
    poll avoids."""
    return float(summary["poll_cpu_ns"]) + summary["blocks"] * penalty_ns + float(summary.get("exit_cost_ns", 0))


def penalty_from_latencies(poll_p50_ns: float | None, block_p50_ns: float | None) -> tuple[float, str]:
    """P = block-path wake p50 - poll-path wake p50, floored at 0; with a note on how it was had.

    Without a poll-path sample (no halt ended inside any budget) the poll path's latency is taken
    as 0, so P is the block path's whole latency: an upper bound."""
    if block_p50_ns is None:
        return 0.0, "no halt blocked: the block path was not measured, penalty taken as 0"
    if poll_p50_ns is None:
        return float(block_p50_ns), "no poll hit was measured: penalty = block-path p50 (an upper bound)"
    return max(0.0, float(block_p50_ns) - float(poll_p50_ns)), "block-path p50 - poll-path p50"
