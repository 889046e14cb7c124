"""The sentences of `hostd compare`'s verdict, from the measured medians; the seed's figures named as such.

Pure functions of the summaries (hostd.analysis.compare_summary computes them and whether two
cells lie apart), so a results folder's verdict can be worded again without re-running.
"""
from __future__ import annotations

from hostd.output.figures import num
from hostd.plumbing.neighbour import NeighbourSpec
from hostd.plumbing.neighbour_cases import ALONE, case_key, case_label, median_of
from hostd.plumbing.published import IDLE_VCPUS, SEED

# Beside a neighbour: successful polls that fell by this many points "gave way"; a neighbour that
# lost this much more CPU under one policy than another lost "more".
GAVE_WAY_POINTS = 10.0
MORE_CORES = 0.02


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}%"


def _core(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}% of a core"


def _cyc(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f} cycles"


def _num(x: float | None, digits: int = 0) -> str:
    return num(x, digits, missing="n/a")


def _where(x: float, seed_range: list[int]) -> str:
    lo, hi = seed_range
    return "below the seed's range" if x < lo else "within the seed's range" if x <= hi else "above the seed's range"


def seed_lines(m: dict, fixed_ns: int, overcommit: bool = False, cores: int | None = None,
               apart: dict[str, bool | None] | None = None, running_inject_ns: int = 0) -> tuple[list[str], list[str]]:
    """(claims, notes), one a line: the headline first, then fixed against none; the notes the other
    policies and the cautions. From the medians `m` (m[experiment][policy][metric]). apart[metric],
    for io's writes_per_s, idle's cpu_pct_per_vcpu and timer's p50_cycles: whether fixed and none lie apart
    across repeats (False: indistinguishable; None: no interval), or None where no summary was
    given. running_inject_ns: what the calibration charges an idle=poll guest per interrupt (0:
    uncalibrated, idle=poll is the ceiling)."""
    io, idle, timer = m.get("io", {}), m.get("idle", {}), m.get("timer", {})
    g = lambda d, p, k: d.get(p, {}).get(k)  # noqa: E731
    parts, headline, later = [], [], []
    pairs = apart or {}

    f_pct, n_pct = g(io, "fixed", "pct_of_idle_poll"), g(io, "none", "pct_of_idle_poll")
    f_cpu, n_cpu = g(idle, "fixed", "cpu_pct_per_vcpu"), g(idle, "none", "cpu_pct_per_vcpu")
    f_w, n_w = g(io, "fixed", "writes_per_s"), g(io, "none", "writes_per_s")
    s = (f"fixed polling (the seed's 2,000,000 cycles = {fixed_ns / 1000:,.0f} us here) reached "
         f"{_pct(f_pct)} of idle-poll's writes/s (seed: 99%)")
    if f_w and n_w:
        times = "indistinguishable here from" if pairs.get("writes_per_s") is False else f"{f_w / n_w:.1f}x"
        s += f", {times} the {n_w:,.0f} writes/s of no polling ({_pct(n_pct)} of idle-poll)"
    same = "indistinguishable here; " if pairs.get("cpu_pct_per_vcpu") is False else ""
    s += f", at {_core(f_cpu)} per idle vCPU against {_core(n_cpu)} without polling ({same}seed: 1.5-2.5%)."
    parts.append(s)

    others = []
    for p in ("adaptive", "guest-haltpoll"):
        if p in io or p in idle:
            others.append(f"{p} {_pct(g(io, p, 'pct_of_idle_poll'))} at {_core(g(idle, p, 'cpu_pct_per_vcpu'))}")
    ip_cpu = g(idle, "idle-poll", "cpu_pct_per_vcpu")
    if others:
        later.append("For comparison, " + "; ".join(others) +
                     (f"; idle-poll itself costs {_core(ip_cpu)} per idle vCPU" if ip_cpu is not None else "") + ".")

    f_t, n_t, a_t = g(timer, "fixed", "p50_cycles"), g(timer, "none", "p50_cycles"), g(timer, "adaptive", "p50_cycles")
    if f_t is not None and n_t is not None:
        ratio = f", {n_t / f_t:,.0f}x lower" if f_t > 0 and n_t > f_t else ""
        if pairs.get("p50_cycles") is False:
            ratio = ", indistinguishable here"
        t = (f"Timer wake - deadline p50: {_cyc(f_t)} with fixed vs {_cyc(n_t)} without polling{ratio}"
             f" (seed: 8,000-10,000 vs 20,000-120,000)")
        if a_t is not None:
            t += f"; adaptive {_cyc(a_t)}"
        parts.append(t + f"; with polling {_where(f_t, SEED['timer_cycles_with_poll'])}, without "
                     f"{_where(n_t, SEED['timer_cycles_without_poll'])}.")

    f_h, f_fail = g(idle, "fixed", "halts_per_s"), g(idle, "fixed", "failed_polls_per_s")
    if f_h:
        parts.append(f"The idle {IDLE_VCPUS}-vCPU guest halted {f_h:.1f} times/s with fixed polling and "
                     f"{100 * (f_fail or 0) / f_h:.0f}% of those polls failed (seed: ~10/s, nearly all failed).")

    if f_pct is not None:
        if f_pct > 110 and running_inject_ns:
            claim = (f"Fixed polling beat idle-poll, as the kernel does on a machine like this one: the calibration "
                     f"charges each interrupt into a running vCPU the {running_inject_ns / 1000:,.0f} us the kernel "
                     "measured for it, so idle=poll is no ceiling here and the seed's headline does not carry over")
        elif f_pct > 110:
            claim = ("Fixed polling beat idle-poll by more than noise, which a quiet machine does not show "
                     "(idle=poll is the ceiling): the idle-poll run was probably starved of its CPU, so the "
                     "seed's headline cannot be judged from this run")
        elif f_pct >= 95:
            claim = "The seed's headline, near idle=poll throughput from polling, is reproduced here"
        elif f_pct >= 80:
            claim = "The seed's headline, near idle=poll throughput from polling, is largely reproduced here"
        else:
            claim = "The seed's headline, near idle=poll throughput from polling, is not reproduced here"
        if f_cpu is not None and f_pct <= 110:
            lo, hi = SEED["idle_fixed_cpu_pct_range"]
            where = "below" if f_cpu < lo else "within" if f_cpu <= hi else "above"
            claim += f", at an idle cost {where} the seed's 1.5-2.5% per vCPU"
        headline.append(claim + ".")
    if apart is not None and None in apart.values():
        later.append("One run per cell has no interval across repeats, so where fixed and none differ above that "
                     "may be noise (--repeat 3 or more tells).")
    if overcommit:
        later.append(f"The idle guest was overcommitted ({IDLE_VCPUS} vCPUs + device on "
                     f"{cores if cores else 'fewer'} CPUs), so a busy vCPU's figure is its share of a shared core.")
    return headline + parts, later


def bare_metal_verdict(bare: dict) -> str:
    """The seed's bare-metal claims against the measured reference, bare metal with the other CPUs
    idle (bare_metal.pct_of_bare_metal's); "" where it was not measured."""
    pct = bare["pct"]
    if bare["idle"]["median"] is None or "fixed" not in pct:
        return ""

    def p(pol: str) -> str:
        return _pct(pct.get(pol, {}).get("median"))

    return (f"Against bare metal (the device's own O_DSYNC writes with no vCPU, other CPUs idle: "
            f"{bare['idle']['median']:,.0f} writes/s), none made {p('none')} and fixed {p('fixed')} "
            f"(the seed: ~30% and 60-65%); with the other CPUs busy, bare metal made {p('bare-busy')} of that.")


def neighbour_verdict(summary: dict, ns: list[NeighbourSpec], kvm: dict | None = None) -> str:
    """neighbour_lines' claims as one paragraph (results.json's neighbour.verdict)."""
    return " ".join(neighbour_lines(summary, ns, kvm))


def neighbour_lines(summary: dict, ns: list[NeighbourSpec], kvm: dict | None = None) -> list[str]:
    """What the busiest neighbour shows on the timer: whether the host's adaptive polling gave way
    (its successful polls against alone) and what it cost the neighbour, against guest-haltpoll;
    then what polling bought beside it. summary, kvm: beside_neighbour.aggregate()'s."""
    if not ns:
        return []
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
    return parts
