"""`hostd compare`'s results: each cell summarised across repeats, and results.json's document.

Each table cell is the median of the repeats with the min-max beside it. Every measured number
comes from a run stored whole (the DESIGN §8 result) in the document's runs; the only constants
it holds are the seed's quoted figures, labelled as the seed's. Pure functions of the runs,
unit-tested without processes.
"""
from __future__ import annotations

import os

from hostd.analysis import fidelity
from hostd.analysis.stats import interval, summarize
from hostd.measure import bare_metal, beside_neighbour
from hostd.measure.compare_plan import EXPERIMENT_POLICIES, EXPERIMENTS, Plan, placement
from hostd.measure.disturbance import DISTURBED, MAX_ATTEMPTS, PREEMPTED_POLLS
from hostd.output import side_by_side
from hostd.output.compare_verdict import bare_metal_verdict, neighbour_lines, seed_lines
from hostd.output.fidelity_table import summary_line
from hostd.output.machine_note import own_idle_note
from hostd.plumbing import calibration, hoststats
from hostd.plumbing.formats import RESULTS_FORMAT_VERSION
from hostd.plumbing.published import SEED
from vcpu.policy import KVM_HALT_POLL_NS_DEFAULT, SEED_HALT_POLL_CYCLES

# The figures the verdict orders fixed against none by: (experiment, metric).
FIXED_AGAINST_NONE = (("io", "writes_per_s"), ("idle", "cpu_pct_per_vcpu"), ("timer", "p50_cycles"))


def aggregate(runs: list[dict]) -> dict:
    """summary[experiment][policy][metric] = {median, min, max, n, runs}.

    `runs` items: {"id", "experiment", "policy", "repeat", "metrics"}. io's pct_of_idle_poll is
    computed per repeat against that repeat's idle-poll run, then summarised like the rest.
    """
    summary: dict[str, dict[str, dict]] = {}
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        by_cell.setdefault((run["experiment"], run["policy"]), []).append(run)
    idle_poll_io = {r["repeat"]: r for r in by_cell.get(("io", "idle-poll"), [])}
    for (exp, pol), cell in by_cell.items():
        cell = sorted(cell, key=lambda r: r["repeat"])
        metrics: dict[str, dict] = {}
        for name in cell[0]["metrics"]:
            s = summarize([r["metrics"].get(name) for r in cell])
            s["runs"] = [r["id"] for r in cell]
            metrics[name] = s
        if exp == "io" and idle_poll_io:
            pct, ids = [], []
            for r in cell:
                ref = idle_poll_io.get(r["repeat"])
                if ref is None:
                    continue
                base = ref["metrics"]["writes_per_s"]
                pct.append(100.0 * r["metrics"]["writes_per_s"] / base if base else None)
                ids += [r["id"]] + ([ref["id"]] if ref is not r else [])
            s = summarize(pct)
            s["runs"] = ids
            metrics["pct_of_idle_poll"] = s
        summary.setdefault(exp, {})[pol] = metrics
    # A stable order: experiments, then policies, as run.
    return {exp: {p: summary[exp][p] for p in EXPERIMENT_POLICIES[exp] if p in summary.get(exp, {})}
            for exp in EXPERIMENTS if exp in summary}


def medians(summary: dict) -> dict:
    """summary reduced to its medians: m[experiment][policy][metric] -> number or None."""
    return {exp: {pol: {k: v["median"] for k, v in ms.items()} for pol, ms in pols.items()}
            for exp, pols in summary.items()}


def apart(summary: dict | None, exp: str, a: str, b: str, metric: str) -> bool | None:
    """Whether two cells differ beyond their 95% intervals across repeats: True (intervals apart),
    False (they overlap: indistinguishable here), None (no interval: a single run, or no summary)."""
    try:
        ia, ib = interval(summary[exp][a][metric]), interval(summary[exp][b][metric])
    except (KeyError, TypeError):
        return None
    if ia.value is None or ib.value is None or ia.n < 2 or ib.n < 2:
        return None
    return not ia.overlaps(ib)


def verdict_lines(m: dict, fixed_ns: int, overcommit: bool = False, cores: int | None = None,
                  summary: dict | None = None, running_inject_ns: int = 0) -> tuple[list[str], list[str]]:
    """The seed experiments' (claims, notes) (compare_verdict.seed_lines) from the medians `m` (see
    medians()). With `summary` (aggregate()'s, intervals included), two cells whose intervals
    overlap are called indistinguishable instead of being ordered."""
    pairs = None if summary is None else {key: apart(summary, exp, "fixed", "none", key)
                                          for exp, key in FIXED_AGAINST_NONE}
    return seed_lines(m, fixed_ns, overcommit, cores, pairs, running_inject_ns)


def build_document(plan: Plan, runs: list[dict], started: str, elapsed_s: float) -> dict:
    """results.json: the configuration, each experiment's summary, the kernel's beside it, the
    verdict, the checks, and every run whole."""
    summary = aggregate([r for r in runs if r.get("backend", "emu") == plan.backends[0] and r["experiment"] in EXPERIMENTS])
    bare = bare_metal.pct_of_bare_metal(runs, plan.backends[0])
    for pol, pct in bare["pct"].items():
        if pol in summary.get("io", {}):
            summary["io"][pol]["pct_of_bare_metal"] = pct
    place_ = placement(plan)
    cpus = len(os.sched_getaffinity(0))
    failures = [f"{r['id']}: {f}" for r in runs for f in r["check_failures"]]
    disturbed = [r["id"] for r in runs if r.get("disturbed")]
    running = plan.calibration["costs_ns"]["running_inject_ns"] if plan.calibration else 0
    # The verdict's claims, the most important first: the seed's headline and its figures, the
    # kernel's own and the emulator's distance to it, bare metal, beside a neighbour; cautions last.
    seed, notes = verdict_lines(medians(summary), plan.fixed_ns, place_["idle"]["overcommit"], cpus,
                                summary=summary, running_inject_ns=running)
    near = beside_neighbour.document(plan, runs)
    kvm = None
    fid = None
    kernel: list[str] = []
    if plan.backends[1:] == ("kvm",):
        kvm_summary = aggregate([r for r in runs if r["backend"] == "kvm" and r["experiment"] in EXPERIMENTS])
        kvm = side_by_side.document(summary, kvm_summary)
        fid = fidelity.rows(summary, kvm_summary) + fidelity.neighbour_rows(near["summary"], near["kvm"]["summary"])
        kernel = [*side_by_side.verdict_lines(summary, kvm_summary),
                  summary_line(fid, calibration.name_of(plan.calibration))]
    elif plan.kvm_unavailable:
        kvm = {"unavailable": plan.kvm_unavailable}
    ns = [n for n in beside_neighbour.cases(plan) if n is not None]
    own_idle = hoststats.own_idle()
    lines = [*seed, *kernel, bare_metal_verdict(bare),
             *neighbour_lines(near["summary"], ns, (near["kvm"] or {}).get("summary")), *notes,
             own_idle_note(own_idle, "every wake latency and io writes/s above, on both backends")]
    if disturbed:
        lines.append(f"Caution: {len(disturbed)} of {len(runs)} runs were disturbed by other processes even after "
                     f"re-measuring (marked *): measure on a quiet machine for figures worth quoting.")
    lines = [line for line in lines if line]
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "command": "hostd compare",
        "started_utc": started,
        "elapsed_s": round(elapsed_s, 1),
        "config": {
            "quick": plan.quick,
            "backends": list(plan.backends),
            "repeat": plan.repeat,
            "io_adaptive_repeat": plan.repeats("io", "adaptive"),
            "durations_s": plan.durations,
            "side_durations_s": plan.side_durations if len(plan.backends) > 1 else None,
            "tick_hz": plan.tick_hz,
            "tsc_khz": plan.tsc_khz,
            "calibration": plan.calibration,
            "fixed_halt_poll_cycles": SEED_HALT_POLL_CYCLES,
            "fixed_halt_poll_ns": plan.fixed_ns,
            "adaptive_halt_poll_ns": KVM_HALT_POLL_NS_DEFAULT,
            "host_cpus": cpus,
            "own_idle": own_idle,
            "placement": place_,
            "order": "repeat outermost; experiments io, idle, timer; policy order rotated by one each repeat; io "
                     "adaptive's extra repeats after them; then "
                     "the neighbour experiment (its own order: see neighbour.config)",
            "disturbed_foreign_cores": DISTURBED,
            "disturbed_preempted_polls": PREEMPTED_POLLS,
            "max_attempts": MAX_ATTEMPTS,
        },
        "backend": plan.backends[0],
        "summary": summary,
        "bare_metal": bare,
        "neighbour": near,
        "kvm": kvm,
        "fidelity": fid,
        "verdict": " ".join(lines),
        "verdict_lines": lines,
        "disturbed_runs": disturbed,
        "retried_runs": [r["id"] for r in runs if r.get("discarded_attempts")],
        "seed": SEED,
        "checks": {"ok": not failures, "failures": failures},
        "runs": runs,
    }
