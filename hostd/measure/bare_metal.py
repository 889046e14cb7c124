"""The seed table's bare-metal reference: the device process's own O_DSYNC writes, back to back.

The same 4 KiB O_DSYNC pwrites the io experiment's device makes, on the same kind of file and the
same CPU, with no vCPU in the loop (the VM's vCPU just stays halted). Measured twice, because
"bare metal" is not one number on a machine whose idle CPUs wake slowly (DESIGN §9): with the
other CPUs idle, and with them kept busy by a spinning process each. The verdict's sentence on
them is hostd.output.compare_verdict.bare_metal_verdict.
"""
from __future__ import annotations

import subprocess
import sys

from hostd.analysis.stats import summarize
from hostd.measure.disturbance import DISTURBED
from hostd.measure.window import measure
from hostd.output.report import check_failures
from hostd.plumbing.spec import VmSpec, place
from vcpu.policy import PolicySpec

MODES = ("idle", "busy")  # what the other CPUs do meanwhile


def spin(cpus: list[int]) -> list[subprocess.Popen]:
    """One busy-looping process pinned to each CPU; the caller kills them (stop_spinning)."""
    code = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code, str(c)], stdin=subprocess.DEVNULL) for c in cpus]


def stop_spinning(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def measure_bare_io(mode: str, duration_s: float, tsc_khz: int) -> dict:
    """writes/s of the device alone, with the other CPUs idle or busy; the run's result whole."""
    cpus, device, overcommit = place(1, None, None, False)
    spec = VmSpec(vm="vm0", vcpus=1, workload="io", policy=PolicySpec(policy="none", host_policy="none",
                  halt_poll_ns=0), vcpu_cpus=cpus, device_cpu=device, overcommit=overcommit,
                  duration_s=duration_s, extra={"bare_io": True})
    spinners = spin(sorted(set(cpus) - {device})) if mode == "busy" else []
    try:
        result, vm = measure(spec, tsc_khz, progress=False)
    finally:
        stop_spinning(spinners)
    dev = vm.reports["irqsrc"]
    n, span = dev["bare_writes"], dev["bare_span_ns"]
    return {"mode": mode, "writes": n, "writes_per_s": (n - 1) / (span / 1e9) if n > 1 and span else None,
            "device_cpu": device, "busy_cpus": sorted(set(cpus) - {device}) if mode == "busy" else [],
            "result": result}


REFERENCE = "idle"  # "% of bare metal" is against the idle-CPUs figure: a bare-metal host at rest but for the benchmark


def run_record(mode: str, repeat: int, duration_s: float, tsc_khz: int) -> dict:
    """One bare-metal run as compare stores its runs (experiment "bare-metal", policy = the mode)."""
    m = measure_bare_io(mode, duration_s, tsc_khz)
    result = m.pop("result")
    foreign = result["host_cpus"]["foreign_load"]
    # With the other CPUs busy, the load beside it is our own spinners: only the idle mode can be disturbed.
    why = f"other processes used {foreign:.2f} of a core beside it" if mode == "idle" and foreign >= DISTURBED else None
    return {"id": f"bare-metal/{mode}/r{repeat}", "experiment": "bare-metal", "policy": mode, "repeat": repeat,
            "backend": "emu", "metrics": {"writes_per_s": m["writes_per_s"], "writes": m["writes"]},
            "busy_cpus": m["busy_cpus"], "device_cpu": m["device_cpu"],
            "foreign_load": foreign, "disturbed": why is not None, "disturbance": why,
            "check_failures": check_failures(result), "result": result}


def measure_repeat(repeat: int, duration_s: float, tsc_khz: int, bar, weight: float) -> list[dict]:
    """Both bare-metal runs of one repeat, on compare's progress bar."""
    out = []
    for mode in MODES:
        bar.start_cell(f"bare metal (device alone), other CPUs {mode}, repeat {repeat}", weight)
        rec = run_record(mode, repeat, duration_s, tsc_khz)
        if rec["disturbed"]:  # measured once more (as compare does its cells); the quieter one is kept
            bar.end_cell(weight, f"  {rec['id']}: {rec['disturbance']}; measuring again", extra=True)
            bar.start_cell(f"bare metal (device alone), other CPUs {mode}, repeat {repeat} (again)", weight)
            again = run_record(mode, repeat, duration_s, tsc_khz)
            keep, drop = sorted((rec, again), key=lambda r: r["foreign_load"])
            keep["discarded_attempts"] = [{"foreign_load": drop["foreign_load"], "metrics": drop["metrics"]}]
            rec = keep
        out.append(rec)
        bar.end_cell(weight, f"  {rec['id']}: {rec['metrics']['writes_per_s'] or 0:,.0f} writes/s")
    return out


def pct_of_bare_metal(runs: list[dict], backend: str = "emu") -> dict:
    """{"idle"|"busy": summary of the bare writes/s, "pct": {policy: summary of io writes/s as % of
    the same repeat's bare-metal (REFERENCE) writes/s}}; summaries from stats.summarize()."""
    bare = {(r["policy"], r["repeat"]): r for r in runs if r["experiment"] == "bare-metal"}
    out: dict = {"reference": f"bare metal with the other CPUs {REFERENCE}, same repeat"}
    for mode in MODES:
        rs = [r for (m, _), r in sorted(bare.items()) if m == mode]
        out[mode] = {**summarize([r["metrics"]["writes_per_s"] for r in rs]), "runs": [r["id"] for r in rs]}
    pct: dict[str, tuple[list, list]] = {}
    for r in runs:
        ref = bare.get((REFERENCE, r["repeat"]))
        if r["experiment"] != "io" or r.get("backend", "emu") != backend or ref is None:
            continue
        base = ref["metrics"]["writes_per_s"]
        vals, ids = pct.setdefault(r["policy"], ([], []))
        w = r["metrics"]["writes_per_s"]
        vals.append(100.0 * w / base if base and w is not None else None)
        ids += [r["id"], ref["id"]]
    busy = []
    for (mode, k), r in bare.items():
        ref = bare.get((REFERENCE, k))
        if mode == "busy" and ref is not None:
            num, den = r["metrics"]["writes_per_s"], ref["metrics"]["writes_per_s"]
            busy.append(100.0 * num / den if num is not None and den else None)
    out["pct"] = {p: {**summarize(v), "runs": ids} for p, (v, ids) in pct.items()}
    out["pct"]["bare-busy"] = {**summarize(busy), "runs": out["busy"]["runs"] + out[REFERENCE]["runs"]}
    return out
