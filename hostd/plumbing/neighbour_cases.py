"""The shape of compare's fourth experiment, beside a neighbour: its cases, workloads and policies,
and how its runs and summaries are keyed. Shared by the experiment (hostd.measure.beside_neighbour),
the fidelity rows that judge it and the output that shows it.
"""
from __future__ import annotations

from hostd.plumbing.neighbour import NeighbourSpec, label as neighbour_label

EXPERIMENT = "neighbour"
ALONE = "alone"  # the case without a neighbour
WORKLOADS = ("timer", "io")
POLICIES = ("none", "adaptive", "guest-haltpoll")
KVM_POLICIES = ("none", "adaptive")  # the kvm backend's guest has no cpuidle-haltpoll
DEFAULT_NEIGHBOURS = (NeighbourSpec(0.1, 2_000_000), NeighbourSpec(0.5, 2_000_000))
# Seconds per cell (--quick or not) and runs per cell unless --repeat says otherwise: with these,
# ./run.sh (the full comparison, both backends) stays under 5 minutes on 2 cores and --quick under 2.
# Each cell with a neighbour also spends NEIGHBOUR_BASELINE_NS with the neighbour alone first.
DURATION_S = {False: 1.0, True: 0.5}
REPEAT = 1
# adaptive's cells carry the fidelity rows, and one 1 s run decides them by a few halts: its wake p50
# sits where polled and blocked wakes meet, so a run's share of each moves it by 2x. The full
# comparison takes the median of this many of those runs (about 40 s more on 2 cores); --quick one.
ADAPTIVE_REPEAT = {False: 3, True: 1}


def case_key(n: NeighbourSpec | None) -> str:
    """`alone`, or `50%:2ms` (the --neighbour text of that neighbour): a case's key in results."""
    if n is None:
        return ALONE
    period = f"{n.period_ns / 1e6:g}ms" if n.period_ns >= 1_000_000 else f"{n.period_ns / 1e3:g}us"
    return f"{100 * n.duty:g}%:{period}"


def case_label(n: NeighbourSpec | None) -> str:
    return "alone" if n is None else neighbour_label(n.duty, n.period_ns)


def spec_of(d: dict | None) -> NeighbourSpec | None:
    """A run's "neighbour" (NeighbourSpec.to_dict(), or None) as a spec again."""
    return None if d is None else NeighbourSpec(d["duty"], d["period_ns"])


def median_of(summary: dict | None, case: str, wl: str, pol: str, metric: str) -> float | None:
    """summary[case][workload][policy][metric]'s median, None where any of it is missing."""
    try:
        return summary[case][wl][pol][metric]["median"]
    except (KeyError, TypeError):
        return None
