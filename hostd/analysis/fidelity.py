"""The fidelity rows of `compare --backend both`: each of the seed's figures, emulator beside kernel.

A row is within reach when emulator / kernel lies in [LOW, HIGH], a share of halts (successful
polls) within ±POINTS points of the kernel's, and beside a neighbour (compare's fourth experiment,
beside_neighbour) the neighbour's CPU lost within ±CORES core (the bounds:
hostd/plumbing/fidelity_bounds.py). The table says only what this run measured: a row that missed
carries an explanation only where that explanation's condition holds in this run's own figures
(its summaries, the same `emu` and `kvm` that `rows` reads), and the explanation states that
condition with this run's numbers; otherwise the row is a plain ✗ beside its numbers. A reason
that no figure of the run can check (a story about a code path) is not printed. Pure functions of
compare's summaries, tested without processes; hostd/output/fidelity_table.py shows the rows.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from hostd.output.side_by_side import median_of
from hostd.plumbing import neighbour_cases
from hostd.plumbing.fidelity_bounds import CORES, HIGH, LOW, POINTS

# (key, experiment, policy, metric, label). The kernel's `fixed` is its adaptive polling capped at
# the budget, which polls as fixed does wherever halts are shorter than the cap (io, timer). Shares
# of halts are judged in points (POINTS_ROWS), every other figure as a ratio.
ROWS = (
    ("timer.none.p50", "timer", "none", "p50_cycles", "timer p50, no polling (TSC cycles)"),
    ("timer.none.p99", "timer", "none", "p99_cycles", "timer p99, no polling (TSC cycles)"),
    ("timer.fixed.p50", "timer", "fixed", "p50_cycles", "timer p50, fixed budget (TSC cycles)"),
    ("timer.fixed.p99", "timer", "fixed", "p99_cycles", "timer p99, fixed budget (TSC cycles)"),
    ("io.none", "io", "none", "writes_per_s", "io writes/s, none"),
    ("io.fixed", "io", "fixed", "writes_per_s", "io writes/s, fixed"),
    ("io.adaptive", "io", "adaptive", "writes_per_s", "io writes/s, adaptive"),
    ("io.idle-poll", "io", "idle-poll", "writes_per_s", "io writes/s, idle-poll"),
    ("idle.none", "idle", "none", "cpu_pct_per_vcpu", "host CPU per idle vCPU, none (% of a core)"),
    ("idle.adaptive", "idle", "adaptive", "cpu_pct_per_vcpu", "host CPU per idle vCPU, adaptive (% of a core)"),
    ("idle.fixed", "idle", "fixed", "cpu_pct_per_vcpu", "host CPU per idle vCPU, fixed (% of a core)"),
    ("io.fixed.success", "io", "fixed", "poll_success_pct", "successful polls / exits, io fixed (%)"),
    ("io.adaptive.success", "io", "adaptive", "poll_success_pct", "successful polls / exits, io adaptive (%)"),
    ("timer.fixed.success", "timer", "fixed", "poll_success_pct", "successful polls / exits, timer fixed (%)"),
)
_ROW = {key: (exp, pol, metric) for key, exp, pol, metric, _ in ROWS}
# A ratio of two small shares is noise (2% against 4% is 0.5x): successful polls are compared in
# points, as beside a neighbour.
POINTS_ROWS = frozenset({"io.fixed.success", "io.adaptive.success", "timer.fixed.success"})

# The thresholds the explanations' conditions test, each stated in the text it prints.
MOST_PCT = 50.0  # over half the halts
FEW_PCT = 5.0  # under this share of the halts
TINY_CORE_PCT = 0.05  # host CPU per idle vCPU: a gap smaller than this share of a core
TAIL_PCT = 1.0  # the share of wakes a p99 reaches into


class Explanation(NamedTuple):
    """Why a row missed, printed only where `condition(emu, kvm)` holds; `text(emu, kvm)` (called
    only then) states the condition with the run's numbers."""
    condition: Callable[[dict, dict], bool]
    text: Callable[[dict, dict], str]


def ratio_of(emu: dict, kvm: dict, key: str) -> float | None:
    """emulator / kernel of a row's figure (None where either is missing or the kernel's is 0)."""
    e, k = median_of(emu, *_ROW[key]), median_of(kvm, *_ROW[key])
    return e / k if e is not None and k else None


def _within(r: float | None) -> bool:
    return r is not None and LOW <= r <= HIGH


def _side(r: float | None) -> int:
    """-1 below LOW, 1 above HIGH, 0 within or unmeasured."""
    return 0 if r is None or _within(r) else (-1 if r < LOW else 1)


def _polled_pct(summary: dict, pol: str) -> float | None:
    """The share of one side's idle halts that polled: every poll of a 400 ms idle halt fails, so
    failed polls/s over halts/s."""
    h, f = median_of(summary, "idle", pol, "halts_per_s"), median_of(summary, "idle", pol, "failed_polls_per_s")
    return 100.0 * f / h if h and f is not None else None


def _blocked_pct(summary: dict, exp: str, pol: str) -> float | None:
    """The share of one side's halts that ended blocked: those without a successful poll."""
    s = median_of(summary, exp, pol, "poll_success_pct")
    return None if s is None else 100.0 - s


def _below(limit: float, *xs: float | None) -> bool:
    """Every one of xs is measured and below limit."""
    return all(x is not None and x < limit for x in xs)


# idle.fixed: the emulator's fixed polled on its idle halts, the kernel's did not.
def _idle_fixed_holds(emu: dict, kvm: dict) -> bool:
    e, k = _polled_pct(emu, "fixed"), _polled_pct(kvm, "fixed")
    return (e is not None and k is not None and k < FEW_PCT and e > MOST_PCT
            and _side(ratio_of(emu, kvm, "idle.fixed")) == 1)


def _idle_fixed_text(emu: dict, kvm: dict) -> str:
    e, k = _polled_pct(emu, "fixed"), _polled_pct(kvm, "fixed")
    return (f"the kernel's fixed polled on under {FEW_PCT:g}% of its idle halts ({k:.0f}%), the emulator's on most "
            f"({e:.0f}% of {median_of(emu, 'idle', 'fixed', 'halts_per_s'):.1f} halts/s): only the emulator "
            "spent CPU polling here")


# idle.none, idle.adaptive: neither side polled, and the gap is a sliver of a core.
def _idle_unpolled(pol: str) -> Explanation:
    key = f"idle.{pol}"

    def holds(emu: dict, kvm: dict) -> bool:
        e, k = median_of(emu, "idle", pol, "cpu_pct_per_vcpu"), median_of(kvm, "idle", pol, "cpu_pct_per_vcpu")
        return (_below(FEW_PCT, _polled_pct(emu, pol), _polled_pct(kvm, pol)) and e is not None and k is not None
                and abs(e - k) < TINY_CORE_PCT and not _within(ratio_of(emu, kvm, key)))

    def text(emu: dict, kvm: dict) -> str:
        e, k = median_of(emu, "idle", pol, "cpu_pct_per_vcpu"), median_of(kvm, "idle", pol, "cpu_pct_per_vcpu")
        return (f"neither side polled on its idle halts (under {FEW_PCT:g}%: emulator {_polled_pct(emu, pol):.0f}%, "
                f"kernel {_polled_pct(kvm, pol):.0f}%) and the two differ by {abs(e - k):.3f}% of a core, under "
                f"{TINY_CORE_PCT:g}% (emulator {e:.2f}%, kernel {k:.2f}%): each side's own wake path, not polling")
    return Explanation(holds, text)


# io.adaptive: both sides blocked on most io halts, and writes/s without polling misses the same way.
def _io_adaptive_holds(emu: dict, kvm: dict) -> bool:
    e, k = _blocked_pct(emu, "io", "adaptive"), _blocked_pct(kvm, "io", "adaptive")
    side = _side(ratio_of(emu, kvm, "io.adaptive"))
    return (e is not None and k is not None and e > MOST_PCT and k > MOST_PCT and side != 0
            and _side(ratio_of(emu, kvm, "io.none")) == side)


def _io_adaptive_text(emu: dict, kvm: dict) -> str:
    e, k = _blocked_pct(emu, "io", "adaptive"), _blocked_pct(kvm, "io", "adaptive")
    return (f"both sides blocked on most io halts under adaptive (emulator {e:.0f}%, kernel {k:.0f}%), and "
            f"without polling the emulator misses the same way (io writes/s, none: "
            f"{ratio_of(emu, kvm, 'io.none'):.2f}x): the miss is the block path's, not polling's")


# timer.none.p99: the p50 of the same blocked wakes is within; only the tail differs.
def _timer_none_p99_holds(emu: dict, kvm: dict) -> bool:
    return _within(ratio_of(emu, kvm, "timer.none.p50"))


def _timer_none_p99_text(emu: dict, kvm: dict) -> str:
    return (f"the p50 of the same blocked wakes is within ({ratio_of(emu, kvm, 'timer.none.p50'):.2f}x): only the "
            "tail differs, and a per-wake cost would move the p50 with it")


# timer.fixed.p99: the kernel's p99 is a blocked wake, the emulator's a poll hit.
def _timer_fixed_p99_holds(emu: dict, kvm: dict) -> bool:
    e, k = _blocked_pct(emu, "timer", "fixed"), _blocked_pct(kvm, "timer", "fixed")
    return (e is not None and k is not None and k > TAIL_PCT and e < TAIL_PCT
            and _side(ratio_of(emu, kvm, "timer.fixed.p99")) == -1)


def _timer_fixed_p99_text(emu: dict, kvm: dict) -> str:
    e, k = _blocked_pct(emu, "timer", "fixed"), _blocked_pct(kvm, "timer", "fixed")
    return (f"the kernel's fixed blocked on {k:.1f}% of its timer halts, over the {TAIL_PCT:g}% a p99 reaches into, "
            f"so its p99 is a blocked wake; the emulator's blocked on {e:.1f}%, so its p99 is still a poll hit")


EXPLAINED: dict[str, Explanation] = {
    "idle.fixed": Explanation(_idle_fixed_holds, _idle_fixed_text),
    "idle.none": _idle_unpolled("none"),
    "idle.adaptive": _idle_unpolled("adaptive"),
    "io.adaptive": Explanation(_io_adaptive_holds, _io_adaptive_text),
    "timer.none.p99": Explanation(_timer_none_p99_holds, _timer_none_p99_text),
    "timer.fixed.p99": Explanation(_timer_fixed_p99_holds, _timer_fixed_p99_text),
}


def explain(key: str, emu: dict, kvm: dict) -> str | None:
    """The explanation of a row's miss whose condition holds in this run's figures, or None."""
    x = EXPLAINED.get(key)
    return x.text(emu, kvm) if x is not None and x.condition(emu, kvm) else None


def rows(emu: dict, kvm: dict) -> list[dict]:
    """One dict per figure: emulator, kernel, their ratio (and difference, for shares), whether it is
    within reach, and `why` it missed where an explanation's condition holds in this run (else None)."""
    out = []
    for key, exp, pol, metric, label in ROWS:
        check = "points" if key in POINTS_ROWS else "ratio"
        e, k = median_of(emu, exp, pol, metric), median_of(kvm, exp, pol, metric)
        r, d, ok = _judge(check, e, k)
        out.append({"key": key, "figure": label, "emu": e, "kvm": k, "ratio": r, "diff": d, "check": check,
                    "within": bool(ok), "why": None if ok or ok is None else explain(key, emu, kvm)})
    return out


# --- beside a neighbour ---------------------------------------------------------------------------

# (workload, policy, metric, check, label): check "ratio" (emu / kvm in [LOW, HIGH]), "points" or
# "cores" (emu - kvm within ±POINTS, ±CORES). guest-haltpoll has no kernel side (emulator only).
NEIGHBOUR_ROWS = (
    ("timer", "none", "wake_p50_ns", "ratio", "timer p50, none (ns)"),
    ("timer", "adaptive", "wake_p50_ns", "ratio", "timer p50, adaptive (ns)"),
    ("timer", "adaptive", "poll_success_pct", "points", "successful polls, timer adaptive (%)"),
    ("timer", "adaptive", "neighbour_cpu_lost_cores", "cores", "neighbour CPU lost, timer adaptive (cores)"),
    ("io", "none", "writes_per_s", "ratio", "io writes/s, none"),
    ("io", "adaptive", "writes_per_s", "ratio", "io writes/s, adaptive"),
    ("io", "adaptive", "poll_success_pct", "points", "successful polls, io adaptive (%)"),
    ("io", "adaptive", "neighbour_cpu_lost_cores", "cores", "neighbour CPU lost, io adaptive (cores)"),
)
_SHORT = {"wake_p50_ns": "p50", "writes_per_s": "writes", "poll_success_pct": "success",
          "neighbour_cpu_lost_cores": "lost"}
_TOLERANCE = {"points": POINTS, "cores": CORES}
_DIGITS = {"cores": 3}


def _judge(check: str, e: float | None, k: float | None) -> tuple[float | None, float | None, bool | None]:
    """(ratio, difference, within): None where a side is missing (or, for a ratio, the kernel's is 0)."""
    if e is None or k is None:
        return None, None, None
    ratio = e / k if k else None
    if check == "ratio":
        return ratio, None, None if ratio is None else LOW <= ratio <= HIGH
    return ratio, e - k, abs(e - k) <= _TOLERANCE[check]


def _alone_same_way(case: str, wl: str, pol: str, metric: str, check: str) -> Explanation:
    """The same figure without a neighbour misses on the same side, and by as much (the two gaps
    within the row's own tolerance of each other): the gap is not the neighbour's. A gap the
    neighbour made several times larger (6.39x beside it, 1.65x alone, seen) is its doing."""
    def judged(emu: dict, kvm: dict, where: str) -> tuple[float | None, float | None, bool | None]:
        g = neighbour_cases.median_of
        return _judge(check, g(emu, where, wl, pol, metric), g(kvm, where, wl, pol, metric))

    def holds(emu: dict, kvm: dict) -> bool:
        here, alone = judged(emu, kvm, case), judged(emu, kvm, neighbour_cases.ALONE)
        if here[2] is not False or alone[2] is not False:
            return False
        if check == "ratio":
            return (here[0] > HIGH) == (alone[0] > HIGH) and alone[0] > 0 and LOW <= here[0] / alone[0] <= HIGH
        return (here[1] > 0) == (alone[1] > 0) and abs(here[1] - alone[1]) <= _TOLERANCE[check]

    def text(emu: dict, kvm: dict) -> str:
        (r, d, _), (rh, dh, _) = judged(emu, kvm, neighbour_cases.ALONE), judged(emu, kvm, case)
        gap = f"{r:.2f}x, {rh:.2f}x beside it" if check == "ratio" else f"{d:+.0f} points, {dh:+.0f} beside it"
        return (f"without a neighbour the emulator misses the same way and by as much ({gap}): the gap is not "
                "the neighbour's doing")
    return Explanation(holds, text)


def _baseline_moved(case: str, wl: str, pol: str) -> Explanation:
    """The neighbour got the same CPU beside the VM on both sides; only its baseline alone differed."""
    def figures(emu: dict, kvm: dict) -> tuple:
        g = neighbour_cases.median_of
        return tuple(g(s, case, wl, pol, m) for m in ("neighbour_cpu_cores", "neighbour_alone_cpu_cores")
                     for s in (emu, kvm))

    def holds(emu: dict, kvm: dict) -> bool:
        be, bk, ae, ak = figures(emu, kvm)
        return None not in (be, bk, ae, ak) and abs(be - bk) <= CORES < abs(ae - ak)

    def text(emu: dict, kvm: dict) -> str:
        be, bk, ae, ak = figures(emu, kvm)
        return (f"beside the VM the neighbour got the same CPU on both sides (emulator {be:.3f}, kernel {bk:.3f} core, "
                f"within ±{CORES:g}); its baseline alone differed (emulator {ae:.3f}, kernel {ak:.3f}): the miss is "
                "in the baseline, not in what polling took")
    return Explanation(holds, text)


def neighbour_explanation(case: str, wl: str, pol: str, metric: str, check: str) -> Explanation:
    """A neighbour row's explanation: its baseline (CPU lost), or the same miss alone (the others)."""
    return _baseline_moved(case, wl, pol) if check == "cores" else _alone_same_way(case, wl, pol, metric, check)


def neighbour_rows(emu: dict, kvm: dict | None) -> list[dict]:
    """The rows of compare's neighbour experiment: emu and kvm are beside_neighbour.aggregate()'s
    summaries; one row per NEIGHBOUR_ROWS entry and neighbour (the alone case is each miss's
    reference, not a row of its own)."""
    if kvm is None:
        return []
    out = []
    for case in (c for c in emu if c != neighbour_cases.ALONE):
        for wl, pol, metric, check, label in NEIGHBOUR_ROWS:
            e = neighbour_cases.median_of(emu, case, wl, pol, metric)
            k = neighbour_cases.median_of(kvm, case, wl, pol, metric)
            ratio, diff, within = _judge(check, e, k)
            x = neighbour_explanation(case, wl, pol, metric, check)
            why = x.text(emu, kvm) if within is False and x.condition(emu, kvm) else None
            out.append({"key": f"neighbour.{case}.{wl}.{pol}.{_SHORT[metric]}", "figure": f"beside {case}: {label}",
                        "emu": e, "kvm": k, "ratio": ratio, "diff": diff, "check": check, "within": bool(within),
                        "why": why, "digits": _DIGITS.get(check, 0)})
    return out
