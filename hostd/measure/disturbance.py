"""When a run measured other processes more than its policy, and how often compare measures it again.

Other processes (other users, tests) using this many cores' worth of the VM's CPUs during the
window, or preempting this share of the polls, make a run "disturbed": a polling or idle=poll
vCPU then loses its CPU for whole time slices while a blocked one is woken ahead of it, and a
spinning vCPU pushes neighbours onto the device's CPU; the comparison would measure them.
"""
from __future__ import annotations

DISTURBED = 0.3
PREEMPTED_POLLS = 0.25
MAX_ATTEMPTS = 3
RETRY_BUDGET = 0.25  # re-measuring may add at most this fraction of the planned time


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
