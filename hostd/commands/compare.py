"""`hostd compare`: the 2015 halt_poll patch's experiment, measured here, beside the seed's figures.

Three experiments, every policy in each, repeated and interleaved:

- io:    1 vCPU, real O_DSYNC writes; writes/s per policy and as % of idle-poll (per repeat,
         against the idle-poll run of the same repeat), halt_successful_poll / halt_exits;
- idle:  a 4-vCPU idle guest; host CPU per idle vCPU (% of one core), halts/s, failed polls/s;
- timer: 1 vCPU, TSC-deadline test; wake - deadline p50/p99/max in ns and TSC cycles;

and a fourth, beside a neighbour (beside_neighbour.py): timer and io with a process of ours spinning
a duty cycle on the vCPU's CPU, what polling buys against what it costs that neighbour.

Parse -> plan and measure (hostd.measure.cells) -> summarise (hostd.analysis.compare_summary) ->
print (hostd.output.compare_tables) and write results.json, the CSVs and the plots; --table
dyn2015|guest2019 hands over to hostd.commands.tables.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone

from hostd.analysis.compare_summary import build_document
from hostd.commands import tables
from hostd.measure import beside_neighbour
from hostd.measure.cells import measure_all
from hostd.measure.compare_plan import DURATIONS, EXPERIMENTS, IO_ADAPTIVE_REPEAT, Plan
from hostd.measure.window import Terminated, on_sigterm
from hostd.output import compare_csv, fidelity_table, plots
from hostd.output.compare_tables import print_tables
from hostd.plumbing import calibration
from hostd.plumbing.backend import check as check_backend
from hostd.plumbing.errors import EXIT_CHECK_FAILED, EXIT_SIGNAL, UsageError
from hostd.plumbing import neighbour_cases
from hostd.plumbing.neighbour import add_neighbour_option, parse_neighbour
from hostd.plumbing.orphans import remove_stale_segments
from hostd.plumbing.output import atomic_write, check_out_dir, print_show_again, write_json
from hostd.plumbing.policy_options import cycles_to_ns, tsc_khz_from_args
from hostd.plumbing.spec import DEFAULT_TICK_HZ, parse_float, parse_int
from hostd.plumbing.vm import ChildDied
from vcpu.policy import SEED_HALT_POLL_CYCLES, U32_MAX, PolicySpec

DEFAULT_REPEAT = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="the 2015 halt_poll patch's experiment, measured here, beside its own figures",
        description="Run the seed's experiment side by side: O_DSYNC writes/s per policy as % of "
        "idle-poll, host CPU per idle vCPU of a 4-vCPU idle guest, and TSC-deadline timer latency; "
        "each cell the median of --repeat interleaved runs, printed beside the 2015 patch's figures "
        "with a verdict, and saved (results.json, CSVs, PNG plots) under --out. Then a fourth experiment, "
        "beside a neighbour: timer and io under none, adaptive and guest-haltpoll with a process of ours "
        "spinning 10% and 50% of every 2 ms on the vCPU's CPU (one run per cell unless --repeat is given). "
        "A run during which other processes took 0.3 of a core or more of the VM's CPUs is measured again "
        "(and flagged if it stays so).",
        epilog="example: hostd compare --quick   (about a minute)",
    )
    q, d = DURATIONS[True], DURATIONS[False]
    nq, nd = neighbour_cases.DURATION_S[True], neighbour_cases.DURATION_S[False]
    p.add_argument("--quick", action="store_true",
                   help=f"one run per cell and shorter cells (io {q['io']:g} s, idle {q['idle']:g} s, timer "
                   f"{q['timer']:g} s, beside a neighbour {nq:g} s; defaults {d['io']:g}, {d['idle']:g}, "
                   f"{d['timer']:g}, {nd:g} s): about a minute instead of 2.5 (with --backend both, under 2 "
                   "instead of under 5)")
    p.add_argument("--repeat", metavar="N",
                   help=f"runs per cell; each cell shows their median and min-max (default {DEFAULT_REPEAT}, "
                   f"or 1 with --quick; beside a neighbour {neighbour_cases.REPEAT}, adaptive's "
                   f"{neighbour_cases.ADAPTIVE_REPEAT[False]} ({neighbour_cases.ADAPTIVE_REPEAT[True]} with --quick), "
                   f"io's adaptive cell {IO_ADAPTIVE_REPEAT} (1 with --quick), unless given)")
    p.add_argument("--tick-hz", default=str(DEFAULT_TICK_HZ), metavar="HZ",
                   help=f"idle guest tick per vCPU (default {DEFAULT_TICK_HZ}: a NOHZ Linux guest, ~10 halts/s "
                   "for 4 vCPUs; 100 for a Windows-like guest)")
    p.add_argument("--tsc-khz", metavar="KHZ",
                   help="TSC rate to convert the seed's 2,000,000 cycles and latencies "
                   "(default: read from the machine)")
    p.add_argument("--out", metavar="DIR", help="result folder (default results/<UTC timestamp>/)")
    p.add_argument("--json", action="store_true", help="print one JSON object (what results.json holds) on stdout")
    p.add_argument("--backend", default="emu", metavar="{emu,kvm,both}",
                   help="emu: the emulator (default); kvm: real KVM VMs, the kernel's own halt polling; both: "
                   "every cell on each, the kernel's figures and emulator / kernel beside the emulator's "
                   "(the emulator alone, with the reason, where /dev/kvm is unusable)")
    p.add_argument("--table", default="seed", metavar="{seed,dyn2015,guest2019,all}",
                   help="seed: the 2015 patch's experiment (default); dyn2015: dynamic halt-polling's idle %%c0 and "
                   "TCP_RR-like latency; guest2019: guest halt polling's ping-pong; all: each in turn, each in a "
                   "folder of its own under --out")
    calibration.add_calibration_option(p)
    add_neighbour_option(p.add_argument_group(
        "beside a neighbour", "The fourth experiment runs beside neighbours spinning 10% and 50% of every 2 ms; each "
        "--neighbour adds one more there. The seed's three experiments always run without one."), repeatable=True)
    p.add_argument("--always-poll-us", metavar="US",
                   help="dyn2015: always-poll's budget in microseconds (default 500)")
    p.set_defaults(func=main)


def plan_from_args(args: argparse.Namespace) -> Plan:
    repeat = 1 if args.quick else DEFAULT_REPEAT
    if args.repeat is not None:
        repeat = parse_int("--repeat", args.repeat, 1, 50)
    tick_hz = parse_float("--tick-hz", args.tick_hz, 0.0, 10_000.0)
    tsc_khz = tsc_khz_from_args(args)
    if cycles_to_ns(SEED_HALT_POLL_CYCLES, tsc_khz) > U32_MAX:
        raise UsageError(f"--tsc-khz: {SEED_HALT_POLL_CYCLES} cycles at {tsc_khz} kHz exceed the kernel's "
                         f"maximum halt_poll_ns of {U32_MAX}")
    out = args.out or os.path.join("results", datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    check_out_dir(out, "--out")
    extra = [parse_neighbour(text) for text in getattr(args, "neighbour", None) or ()]
    backends, kvm_unavailable = _backends(args.backend)
    profile = calibration.resolve(args.calibration) if "emu" in backends else None
    return Plan(quick=args.quick, repeat=repeat, tick_hz=tick_hz, tsc_khz=tsc_khz, out=out,
                durations=dict(DURATIONS[bool(args.quick)]), backends=backends, kvm_unavailable=kvm_unavailable,
                calibration=profile.to_dict() if profile else None, neighbours=beside_neighbour.neighbours(extra),
                neighbour_repeat=neighbour_cases.REPEAT if args.repeat is None else repeat,
                neighbour_adaptive_repeat=neighbour_cases.ADAPTIVE_REPEAT[bool(args.quick)] if args.repeat is None
                else repeat,
                neighbour_duration=neighbour_cases.DURATION_S[bool(args.quick)],
                io_adaptive_repeat=IO_ADAPTIVE_REPEAT if args.repeat is None and not args.quick else 0)


def _backends(text: str) -> tuple[tuple[str, ...], str | None]:
    """--backend: the backends to run, and why kvm is left out of `both` (or None)."""
    if text not in ("emu", "kvm", "both"):
        raise UsageError(f"--backend: unknown backend {text!r} (choose from emu, kvm, both)")
    if text == "emu":
        return ("emu",), None
    try:
        check_backend("kvm", PolicySpec(policy="none", host_policy="none", halt_poll_ns=0))
    except UsageError as exc:
        if text == "kvm":
            raise
        return ("emu",), str(exc)
    return ("kvm",) if text == "kvm" else ("emu", "kvm"), None


def write_results(plan: Plan, doc: dict, samples: dict) -> list[str]:
    os.makedirs(plan.out, exist_ok=True)
    files = []
    for exp in EXPERIMENTS:
        atomic_write(os.path.join(plan.out, f"{exp}.csv"), compare_csv.summary_csv(exp, doc["summary"]))
        atomic_write(os.path.join(plan.out, f"{exp}_runs.csv"), compare_csv.runs_csv(exp, doc["runs"]))
        files += [f"{exp}.csv", f"{exp}_runs.csv"]
    atomic_write(os.path.join(plan.out, "neighbour.csv"), compare_csv.neighbour_summary_csv(doc))
    atomic_write(os.path.join(plan.out, "neighbour_runs.csv"), compare_csv.neighbour_runs_csv(doc["runs"]))
    files += ["neighbour.csv", "neighbour_runs.csv"]
    if doc.get("fidelity"):
        atomic_write(os.path.join(plan.out, "fidelity.csv"), fidelity_table.to_csv(doc["fidelity"]))
        files.append("fidelity.csv")
    files += plots.write_all(plan.out, doc, samples)
    doc["files"] = ["results.json"] + files
    write_json(os.path.join(plan.out, "results.json"), doc)  # last: its presence means the folder is complete
    return doc["files"]


def main(args: argparse.Namespace) -> int:
    which = tables.parse_tables(args.table)
    plan = plan_from_args(args)
    if args.neighbour and "seed" not in which:
        raise UsageError(f"--neighbour: only with --table seed or all (the neighbour experiment is the seed "
                         f"comparison's; {args.table} runs none)")
    others = tables.plan_from_compare(args, plan, [t for t in which if t != "seed"])  # validated before any run
    rc = 0
    if "seed" in which:
        rc = main_seed(args, replace(plan, out=os.path.join(plan.out, "seed")) if others else plan)
    if others and rc != EXIT_SIGNAL:
        rc = max(rc, tables.main(args, others, plan.out, nested="seed" in which))
    if rc != EXIT_SIGNAL and glob.glob(os.path.join(plan.out, "**", "results.json"), recursive=True):
        print_show_again(plan.out)  # not after an abort that wrote nothing
    return rc


def main_seed(args: argparse.Namespace, plan: Plan) -> int:
    remove_stale_segments()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        runs, samples = measure_all(plan, progress=True)
    except (KeyboardInterrupt, Terminated):
        sys.stderr.write("hostd: compare interrupted; every process stopped and its segment removed; "
                         "nothing was written\n")
        return EXIT_SIGNAL
    except (ChildDied, TimeoutError) as exc:  # twice in one cell
        sys.stderr.write(f"hostd: {exc}; the VM was stopped and cleaned up; compare aborted\n")
        return EXIT_CHECK_FAILED
    finally:
        signal.signal(signal.SIGTERM, old)
    doc = build_document(plan, runs, started, time.monotonic() - t0)
    write_results(plan, doc, samples)
    if args.json:
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_tables(doc, sys.stdout)
        sys.stdout.write(f"\nresults: {os.path.join(plan.out, 'results.json')} (+ CSVs and PNG plots)\n")
    sys.stderr.write(f"hostd: compare took {doc['elapsed_s']:.0f} s; results in {plan.out}/\n")
    for f in doc["checks"]["failures"]:
        sys.stderr.write(f"hostd: check failed: {f}\n")
    return 0 if doc["checks"]["ok"] else EXIT_CHECK_FAILED
