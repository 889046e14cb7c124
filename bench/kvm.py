"""`python -m bench.kvm [--seconds S] [--json]`: the kernel's own halt polling here, without hostd.

DESIGN §9's figures from the kvm backend's own pieces (KvmVm and its guest, IrqfdInjector, the
O_DSYNC WriteDevice), wired in one process plus a forked device, so each piece is proven before
hostd runs them: the guest's TSC-deadline latency with cap 0 and a 2 ms cap, and the seed's
synchronous writes at several caps and with an idle=poll guest. The vCPU thread runs on the last
CPU, the device and the stopper on the first; the foreign load on those CPUs is reported.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import threading
import time

import numpy as np

from hostd.plumbing import hoststats
from irqsrc.irqfd import IrqfdInjector
from irqsrc.sources import WriteDevice
from vcpu import abi, kvm_api
from vcpu.kvm_vm import KvmVm, catch_stop_signal

INTERVAL_US = 500
SEED_CAP_NS = 769_230  # the seed's 2,000,000 cycles at 2.6 GHz


def cpus() -> tuple[int, int]:
    """(housekeeping CPU, vCPU CPU)."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


def _run(vm: KvmVm, seconds: float, on_submit=None, device: list[int] = ()) -> dict:
    """KVM_RUN on the vCPU CPU for `seconds`; a stopper thread ends it with immediate_exit + signal.
    device: pids whose CPU is ours, not a neighbour's."""
    house, vcpu_cpu = cpus()
    main = threading.get_ident()
    catch_stop_signal()

    def stopper() -> None:
        os.sched_setaffinity(0, [house])
        time.sleep(seconds)
        vm.stop(main)

    os.sched_setaffinity(0, [vcpu_cpu])
    stop = threading.Thread(target=stopper)
    busy0, own0 = hoststats.cpu_busy_s([house, vcpu_cpu]), hoststats.own_cpu_s(list(device))
    t0 = time.monotonic_ns()
    stop.start()
    exits = exit_ns = 0
    now = time.perf_counter_ns
    try:
        while vm.enter() != kvm_api.KVM_EXIT_INTR:
            on_submit()
            exits += 1
            exit_ns += now() - vm.returned_ns
    finally:
        stop.join()
        os.sched_setaffinity(0, [house, vcpu_cpu])
    window = (time.monotonic_ns() - t0) / 1e9
    own = hoststats.own_cpu_s(list(device))
    foreign = hoststats.foreign_load(hoststats.cpu_busy_s([house, vcpu_cpu]) - busy0, own - own0, window)
    st = vm.stats.read()
    return {
        "seconds": window, "delivered": vm.delivered(), "foreign_load": round(foreign, 3),
        "halt_exits": st["halt_exits"], "halt_attempted_poll": st["halt_attempted_poll"],
        "halt_successful_poll": st["halt_successful_poll"],
        "vmm_exit_ns_mean": exit_ns / exits if exits else None,
    }


def _samples(vm: KvmVm) -> np.ndarray:
    lat = np.zeros(1 << 20, np.int64)
    n, _ = vm.drain(lat, np.zeros_like(lat), np.zeros_like(lat), 0)
    return lat[:n]


def timer(cap_ns: int, seconds: float, interval_us: int = INTERVAL_US) -> dict:
    """Guest TSC-deadline latency (ISR rdtsc - deadline) in cycles, under a poll cap."""
    vm = KvmVm("timer", False, cap_ns, interval_ns=interval_us * 1000)
    try:
        r = _run(vm, seconds)
        cycles = _samples(vm)
    finally:
        vm.close()
    r["cycles_p50"] = int(np.median(cycles)) if cycles.size else None
    return {"cap_ns": cap_ns, **r}


def io(cap_ns: int, seconds: float, spin: bool = False) -> dict:
    """Synchronous 4 KiB O_DSYNC writes by a forked device, completions through irqfd."""
    house, _ = cpus()
    seg = mmap.mmap(-1, abi.segment_size(1))
    words = memoryview(seg).cast("Q")
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    req_r, req_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the device: never touches KVM
        try:
            os.close(req_w)
            os.sched_setaffinity(0, [house])
            dev = WriteDevice(None, None)
            inj = IrqfdInjector(words, [efd])
            while os.read(req_r, 1):
                dev.write()
                inj.inject(0)
            dev.close()
        finally:
            os._exit(0)
    os.close(req_r)
    vm = None
    try:
        vm = KvmVm("io", spin, cap_ns, irqfd=efd, shared=words,
                   inject_offset=abi.byte_offset(abi.slot_base(0) + abi.INJECT_TSC))
        r = _run(vm, seconds, lambda: os.write(req_w, b"x"), [pid])
        lat = _samples(vm)
        r["wake_us_p50"] = round(float(np.median(lat)) * 1000 / vm.tsc_khz, 1) if lat.size else None
    finally:
        os.close(req_w)
        os.waitpid(pid, 0)
        if vm is not None:
            vm.close()
        os.close(efd)
    r["writes_per_s"] = round(r["delivered"] / r["seconds"])
    return {"cap_ns": cap_ns, "guest": "idle=poll" if spin else "hlt", **r}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kvm", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="each run (default 2)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        kvm_api.probe()
    except kvm_api.KvmUnavailable as exc:
        sys.stderr.write(f"bench.kvm: {exc}\n")
        return 2
    s = args.seconds
    runs = {
        "timer": [timer(0, s), timer(2_000_000, s)],
        "io": [io(0, s), io(200_000, s), io(SEED_CAP_NS, s), io(0, s, spin=True)],
    }
    if args.json:
        json.dump(runs, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'timer, cap':>22} {'cycles p50':>11} {'polls ok':>15} {'foreign':>8}")
    for r in runs["timer"]:
        print(f"{r['cap_ns']:>19} ns {r['cycles_p50']:>11} "
              f"{r['halt_successful_poll']:>6}/{r['halt_attempted_poll']:<8} {r['foreign_load']:>8}")
    print(f"\n{'io, cap':>22} {'writes/s':>11} {'polls ok':>15} {'foreign':>8} {'wake p50 us':>12} {'VMM us/exit':>12}")
    for r in runs["io"]:
        label = "idle=poll guest" if r["guest"] != "hlt" else f"{r['cap_ns']} ns"
        print(f"{label:>22} {r['writes_per_s']:>11} {r['halt_successful_poll']:>6}/{r['halt_attempted_poll']:<8} "
              f"{r['foreign_load']:>8} {r['wake_us_p50']:>12} {r['vmm_exit_ns_mean'] / 1000:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
