"""Measure one VM for a window: start it, run it for the spec's duration, build its §8 result, and
close it on every path. What `hostd run` does once, and compare, tune, the tables and bench do per cell."""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

from hostd.trace.recording import run_trace
from hostd.plumbing.policy_options import policy_spec_from_args, tsc_khz_from_args
from hostd.plumbing.results import build
from hostd.plumbing.spec import VmSpec, parse_duration, vm_spec_from_args
from hostd.plumbing.vm import Vm
from vcpu.kvm.kvm_vcpu import halt_poll_cap


class Terminated(Exception):
    """SIGTERM arrived: unwind through the same teardown as Ctrl-C."""


def on_sigterm(signum, frame):
    raise Terminated()


def spec_from_args(args: argparse.Namespace) -> tuple[VmSpec, int]:
    tsc_khz = tsc_khz_from_args(args)
    spec = vm_spec_from_args(args, policy_spec_from_args(args))
    spec.duration_s = parse_duration(args.duration)
    # Room for every wake at 50k wakes/s per vCPU (above what one vCPU sustains here, see
    # bench); beyond that samples are counted as dropped, never grown into.
    spec.sample_capacity = int(min(2_000_000, max(65_536, spec.duration_s * 50_000)))
    return spec, tsc_khz


def measure(spec: VmSpec, tsc_khz: int, progress: bool, window=None,
            trace_out: str | None = None) -> tuple[dict, Vm]:
    """Run one VM for spec.duration_s and return its result; the VM is closed on every path.
    window: an object whose start() and stop() bracket the measurement window (e.g. a C0Meter);
    trace_out: record the kernel's halt tracepoints for the vCPUs into this file (kvm)."""
    vm = Vm(spec)
    try:
        vm.start()
        with contextlib.ExitStack() as stack:
            trace = (stack.enter_context(run_trace(trace_out, vm.vcpu_pids(), spec.duration_s,
                                                       halt_poll_cap(spec.policy)[0]))
                     if trace_out else None)
            vm.go()
            if window is not None:
                window.start()
            end = time.monotonic() + spec.duration_s
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(0.1, left))
                vm.check_children()
                if trace is not None:
                    trace.drain()
                if progress:
                    done = spec.duration_s - max(0.0, left)
                    sys.stderr.write(f"\r  measuring {done:5.1f}/{spec.duration_s:g} s")
            if progress:
                sys.stderr.write("\n")
            if window is not None:
                window.stop()
            vm.stop()
        return build(vm, tsc_khz), vm
    finally:
        vm.close()
