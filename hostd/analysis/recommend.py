"""`hostd tune`'s recommendation: which swept budget to poll for, decided by a test on the points'
95% intervals (TEST), or 0 with the reason why; pure, on the points' dicts.

- a budget counts only if its poll success is distinguishably above MIN_HIT_RATIO; no budget
  counting: polling buys nothing, 0;
- polling's gain is real only where a counting budget's interval and budget 0's do not overlap;
  the answer is the smallest such budget whose interval reaches within the target of the best
  one's (not distinguishably worse);
- no distinguishable gain while a gain worth having is still possible: the data cannot decide
  ("not enough data", with about how many halts per point would), and the sweep measures longer.
"""
from __future__ import annotations

import math

from hostd.analysis import stats
from hostd.analysis.stats import Interval, interval, min_n_for_quantile, scaled_n

# A budget whose poll success is not distinguishably above this share of the halts catches
# nothing worth its CPU; when no budget does better, polling bought nothing.
MIN_HIT_RATIO = 0.01
# The smallest gain worth polling for, as a share of budget 0's figure (when --target asks for less).
MIN_GAIN = 0.01

TEST = (
    "Each point's figure and poll success carry 95% intervals (a latency percentile: distribution-free, "
    "from order statistics with binomial ranks; writes/s: batch means; poll success: Wilson). A budget "
    f"counts only if its poll success is distinguishably above {MIN_HIT_RATIO:.0%} (the interval's low end "
    "above it); with none counting, polling buys nothing and the answer is 0. Polling's gain at a counting "
    "budget is distinguishable when its figure's interval and budget 0's do not overlap (a conservative "
    "test). The recommendation is the smallest budget with a distinguishable gain whose interval reaches "
    "within --target of the interval of the best such budget, i.e. is not distinguishably worse than the "
    "best. No distinguishable gain, and none worth having (over (1 - target) of budget 0's figure, at least "
    f"{MIN_GAIN:.0%}) still possible: 0. Otherwise the data cannot decide: the points are measured longer, "
    "up to --max-duration, and then, if still undecided, the answer stays 0 with 'not enough halts'.")


def _share(p: dict, base: float, best: float, higher_is_better: bool) -> float | None:
    """Point estimate of how much of the best this point gets. Higher is better: figure / best.
    Lower is better (a latency): (figure at 0 - figure) / (figure at 0 - best), the part of the
    reduction polling can buy that this budget buys; a latency has no natural zero (the wake path
    costs something whatever the budget), so best / figure would turn a 30 ns wobble on a 200 ns
    poll-path latency into a miss."""
    f = p["figure"]["value"]
    if f is None:
        return None
    if higher_is_better:
        return f / best if best > 0 else 1.0
    return (base - f) / (base - best) if base > best else 1.0


def _cost(iv: Interval, higher_is_better: bool) -> tuple[float, float, float]:
    """(value, low, high) oriented so that lower is better, unbounded ends as infinities."""
    if higher_is_better:
        return -iv.value, -iv.hi, -iv.lo
    return iv.value, iv.lo, iv.hi


def _halts_needed(n: int, zero: tuple, others: list[tuple], margin: float, quantile: float | None) -> int:
    """About how many samples per point would let the test decide, from how intervals narrow (as
    1/sqrt(n)): enough for a gain to clear both intervals, or for the largest gain the intervals
    allow to fall below the margin, whichever comes first. zero/others: _cost triples."""
    v0, lo0, hi0 = zero
    gaining, flat = [], []
    for v, lo, hi in others:
        width, gain = (hi0 - lo0 + hi - lo) / 2, v0 - v
        wanted = max(gain, margin - gain)
        if not math.isfinite(width):  # unbounded: a bounded interval first, and one narrower than min-max
            need = 4 * max(n, min_n_for_quantile(quantile) if quantile else stats.BATCHES)
        else:
            need = scaled_n(n, width, wanted) if width > 0 and wanted > 0 else n + 1
        (gaining if gain > 0 else flat).append(need)
    # One budget whose gain clears the intervals decides; ruling a gain out takes every budget.
    return min(gaining) if gaining else max(flat, default=n + 1)


def recommend(points: list[dict], target: float, higher_is_better: bool, quantile: float | None = 0.5) -> dict:
    """Fill each point's share_of_best; return the decision (see TEST and the module docstring).

    points: dicts with budget_ns (ascending, the first 0), figure and success_ratio as
    {"value", "ci_low", "ci_high", "n"} (value None: not measured). quantile: the percentile the
    figure is (None: a mean), for the estimate of the halts needed."""
    figs = {p["budget_ns"]: interval(p["figure"]) for p in points}
    zero = points[0]
    base = figs[0].value if figs[0] is not None else None
    measured = [p for p in points if p["figure"]["value"] is not None]
    per_point = min((p["figure"]["n"] for p in points), default=0)
    if base is None or not measured:
        for p in points:
            p["share_of_best"] = None
        return _rec(zero, None, "no figure", True, "budget 0's workload figure was not measured; nothing to "
                    "compare with, budget 0", per_point)
    best_value = (max if higher_is_better else min)(p["figure"]["value"] for p in measured)
    for p in points:
        p["share_of_best"] = _share(p, base, best_value, higher_is_better)
    counting = [p for p in measured[1:] if interval(p["success_ratio"]).lo > MIN_HIT_RATIO]
    if not counting:
        top = max((interval(p["success_ratio"]).hi for p in points[1:]), default=0.0)
        return _rec(zero, None, "polling buys nothing", True,
                    f"at no swept budget was the poll success distinguishably above {MIN_HIT_RATIO:.0%} (every "
                    f"interval reaches down to it; the highest upper end is {top:.1%}), so the figures differ by "
                    "noise only", per_point)
    v0, lo0, hi0 = _cost(figs[0], higher_is_better)
    cost = {p["budget_ns"]: _cost(figs[p["budget_ns"]], higher_is_better) for p in counting}
    gaining = [p for p in counting if cost[p["budget_ns"]][2] < lo0]
    scale = abs(v0) or 1.0
    margin = max(1 - target, MIN_GAIN) * scale
    if not gaining:
        largest = max(hi0 - cost[p["budget_ns"]][1] for p in counting)
        if largest < margin:
            return _rec(zero, None, "no gain worth polling for", True,
                        f"no budget's figure is distinguishably better than budget 0's, and the largest gain the "
                        f"intervals allow is under {margin / scale:.0%} of budget 0's figure", per_point)
        needed = _halts_needed(per_point, (v0, lo0, hi0), list(cost.values()), margin, quantile)
        room = f"of up to {largest / scale:.0%}" if math.isfinite(largest) else "of any size"
        rec = _rec(zero, None, "not enough data", False,
                   f"not enough halts ({per_point:,} per point; about {_about(needed):,} needed): no budget's "
                   f"figure is distinguishably better than budget 0's, yet a gain {room} is still possible; "
                   "budget 0 until the data says otherwise", per_point)
        rec["halts_needed"] = _about(needed)
        return rec
    best = min(gaining, key=lambda p: cost[p["budget_ns"]][0])
    vb, _, hib = cost[best["budget_ns"]]
    # Within --target of the best: the old share rule's tolerance, around the best's interval.
    slack = (1 - target) * (abs(vb) if higher_is_better else v0 - vb)
    cost[0] = (v0, lo0, hi0)
    chosen = next(p for p in [zero, *gaining] if cost[p["budget_ns"]][1] <= hib + slack)
    if chosen is zero:  # a distinguishable gain, but one the --target calls too small to poll for
        return _rec(zero, best, "no gain worth polling for", True,
                    f"budget 0's figure is within the {target:.0%} target of the best budget's "
                    f"({best['budget_ns']:,} ns), whose gain is distinguishable but small", per_point)
    same = " (the best itself)" if chosen is best else f" than the best, {best['budget_ns']:,} ns"
    rec = _rec(chosen, best, "poll", False,
               f"the smallest budget whose gain over budget 0 is distinguishable (intervals apart) and whose "
               f"figure is not distinguishably worse{same}, within the {target:.0%} target", per_point, decided=True)
    rec["target_figure"] = -(hib + slack) if higher_is_better else hib + slack  # a qualifying interval reaches it
    return rec


def _about(n: int) -> int:
    """Two significant digits: an estimate, not a count."""
    digits = max(0, len(str(n)) - 2)
    return int(math.ceil(n / 10**digits) * 10**digits)


def _rec(p: dict, best: dict | None, verdict: str, nothing: bool, reason: str, per_point: int,
         decided: bool | None = None) -> dict:
    return {"budget_ns": p["budget_ns"], "verdict": verdict, "decided": nothing if decided is None else decided,
            "polling_buys_nothing": nothing, "figure": p["figure"], "share_of_best": p["share_of_best"],
            "success_ratio": p["success_ratio"], "host_cpu_frac_per_vcpu": p["host_cpu_frac_per_vcpu"],
            "best_figure": None if best is None else best["figure"],
            "best_budget_ns": None if best is None else best["budget_ns"],
            "target_figure": None, "halts_per_point": per_point, "halts_needed": None, "test": TEST,
            "reason": reason}
