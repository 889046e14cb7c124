"""`hostd run`: launch one VM-like process group, measure it for a duration, report."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys

from hostd.measure.window import Terminated, measure, on_sigterm, spec_from_args
from hostd.output import report
from hostd.plumbing import kvm_params
from hostd.plumbing.errors import EXIT_CHECK_FAILED, EXIT_SIGNAL, UsageError
from hostd.plumbing.orphans import remove_stale_segments
from hostd.plumbing.output import atomic_write, check_out_dir, check_out_file, write_json
from hostd.plumbing.policy_options import add_policy_options
from hostd.plumbing.results import vcpu_samples
from hostd.plumbing.spec import add_vm_options
from hostd.plumbing.vm import ChildDied


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="launch a VM-like process group, measure it, report",
        description="Launch N vCPU processes and a device process, run a guest workload under a "
        "halt-poll policy for --duration seconds, then report KVM's halt statistics, wakeup latency "
        "by path (poll hit / block) and the host CPU each vCPU burned.",
        epilog="example: hostd run --vcpus 1 --workload timer --policy fixed --halt-poll-ns 2000000 --duration 3",
    )
    add_vm_options(p)
    add_policy_options(p)
    p.add_argument("--duration", default="5", metavar="SECONDS", help="how long to measure (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (DESIGN §8)")
    p.add_argument("--out", metavar="DIR", help="also write result.json and each vCPU's halt durations "
                   "(vcpuN.halts, ns per line, for `hostd replay --halts`) into DIR")
    p.add_argument("--trace-out", metavar="FILE", help="--backend kvm, root: also record the kernel's halt "
                   "tracepoints for this run's vCPUs into FILE, as `hostd record` does (for `hostd replay --trace`)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    spec, tsc_khz = spec_from_args(args)
    if args.out:
        check_out_dir(args.out, "--out")
    if args.trace_out:
        if spec.backend != "kvm":
            raise UsageError("--trace-out: the kernel's tracepoints see only --backend kvm's vCPUs")
        if os.geteuid() != 0:
            raise UsageError("--trace-out needs root (tracefs and the kvm tracepoints are root's)")
        check_out_file(args.trace_out, "--trace-out")
    remove_stale_segments()
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with contextlib.ExitStack() as stack:
            if args.kvm_module_params:
                stack.enter_context(kvm_params.never_shrink(spec.policy.halt_poll_ns))
                spec.extra["kvm_module_params"] = True
            result, vm = measure(spec, tsc_khz, progress=sys.stderr.isatty() and spec.duration_s >= 2,
                                 trace_out=args.trace_out)
    except (KeyboardInterrupt, Terminated):
        sys.stderr.write("hostd: interrupted; every process stopped and the segment removed\n")
        return EXIT_SIGNAL
    except ChildDied as exc:
        sys.stderr.write(f"hostd: {exc}; the VM was stopped and cleaned up\n")
        return EXIT_CHECK_FAILED
    except TimeoutError as exc:
        sys.stderr.write(f"hostd: {exc}; the VM was stopped and cleaned up\n")
        return EXIT_CHECK_FAILED
    finally:
        signal.signal(signal.SIGTERM, old)
    if args.out:
        write_json(os.path.join(args.out, "result.json"), result)
        for i in range(spec.vcpus):
            halts = vcpu_samples(vm, i)[2]
            atomic_write(os.path.join(args.out, f"vcpu{i}.halts"), "".join(f"{h}\n" for h in halts.tolist()))
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        report.print_run(result, sys.stdout)
    failures = report.check_failures(result)
    for f in failures:
        sys.stderr.write(f"hostd: check failed: {f}\n")
    return EXIT_CHECK_FAILED if failures else 0
