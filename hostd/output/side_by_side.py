"""`hostd compare --backend both`: the kernel's own figures beside the emulator's, and their ratio.

The emulator is only as good as its distance to the kernel it emulates (DESIGN §9): every figure
of the seed's experiment is shown measured both ways on this machine, with emulator / kernel.
Pure functions of compare's summaries, so they are tested without processes.
"""
from __future__ import annotations

# The kvm backend has no guest-haltpoll (the project's guest has no cpuidle-haltpoll driver).
KVM_POLICIES = ("none", "fixed", "adaptive", "idle-poll")
# The figure of each experiment that gets a kernel column and a ratio: (metric, digits, unit).
FIGURES = {
    "io": (("writes_per_s", 0, ""), ("poll_success_pct", 0, "%")),
    "idle": (("cpu_pct_per_vcpu", 2, "%"), ("halts_per_s", 1, "")),
    "timer": (("p50_cycles", 0, ""), ("p99_cycles", 0, "")),
}
LABELS = {
    "writes_per_s": "writes/s", "poll_success_pct": "successful polls / exits",
    "cpu_pct_per_vcpu": "host CPU per idle vCPU", "halts_per_s": "halts/s",
    "p50_cycles": "p50 TSC cycles", "p99_cycles": "p99 TSC cycles",
}


def sample_key(exp: str) -> str:
    """Where compare keeps the kernel's wake samples of an experiment, for the plots."""
    return f"kvm:{exp}"


def summary_of(doc: dict) -> dict | None:
    """The kernel's summary in a compare document, when it ran beside the emulator."""
    kvm = doc.get("kvm")
    return kvm["summary"] if kvm and "summary" in kvm else None


def median_of(summary: dict, exp: str, pol: str, metric: str) -> float | None:
    return summary.get(exp, {}).get(pol, {}).get(metric, {}).get("median")


def ratios(emu: dict, kvm: dict) -> dict:
    """ratio[experiment][policy][metric] = emulator median / kernel median (None where either is
    missing or the kernel's is 0)."""
    out: dict = {}
    for exp, figures in FIGURES.items():
        for pol in KVM_POLICIES:
            for metric, _, _ in figures:
                e, k = median_of(emu, exp, pol, metric), median_of(kvm, exp, pol, metric)
                out.setdefault(exp, {}).setdefault(pol, {})[metric] = e / k if e is not None and k else None
    return out


def document(emu: dict, kvm: dict) -> dict:
    """What results.json holds for the kernel's side: its summary and the ratios."""
    return {"summary": kvm, "emu_over_kvm": ratios(emu, kvm)}


def columns(exp: str) -> list[str]:
    cols = []
    for metric, _, _ in FIGURES[exp]:
        cols += [f"kernel (kvm)\n{LABELS[metric]}", f"emu / kvm\n{LABELS[metric]}"]
    return cols


def cells(side: dict, exp: str, pol: str, fmt) -> list[str]:
    """The kernel's cells for one row: each figure (formatted by `fmt`, hostd.output.figures.cell) and its ratio."""
    m = side["summary"].get(exp, {}).get(pol)
    out = []
    for metric, digits, unit in FIGURES[exp]:
        r = side["emu_over_kvm"].get(exp, {}).get(pol, {}).get(metric)
        out += [fmt(m.get(metric), digits, unit) if m else "-", ratio_text(r)]
    return out


def ratio_text(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:,.0f}x" if r >= 10 else f"{r:.1f}x" if r >= 1 else f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def verdict_lines(emu: dict, kvm: dict) -> list[str]:
    """Claims on the kernel's own figures and how far the emulator is from them, one a line."""
    g = median_of
    parts = []
    kf, kn = g(kvm, "io", "fixed", "writes_per_s"), g(kvm, "io", "none", "writes_per_s")
    kip = g(kvm, "io", "idle-poll", "writes_per_s")
    if kf and kn:
        s = (f"On the kernel's own halt polling (kvm backend, this machine) fixed made {kf:,.0f} writes/s against "
             f"{kn:,.0f} without polling ({kf / kn:.1f}x)")
        if kip:
            s += f"; an idle=poll guest made {kip:,.0f} (fixed: {100 * kf / kip:.0f}% of it)"
        parts.append(s + "; fixed runs there as the kernel's adaptive polling capped at the budget.")
    tf, tn = g(kvm, "timer", "fixed", "p50_cycles"), g(kvm, "timer", "none", "p50_cycles")
    ef, en = g(emu, "timer", "fixed", "p50_cycles"), g(emu, "timer", "none", "p50_cycles")
    if tf and tn:
        s = f"The kernel's timer p50 is {tf:,.0f} cycles with polling and {tn:,.0f} without ({tn / tf:.1f}x)"
        if ef and en:
            gain, times = en / ef, en / ef / (tn / tf)
            s += (f"; the emulator shows {gain:.{0 if gain >= 10 else 1}f}x, "
                  f"{times:.{0 if times >= 10 else 1}f} times the kernel's gain")
        parts.append(s + ".")
    return parts

