"""One real KVM VM driven in this process, with a forked device: the kernel's costs, path by path.

What `hostd calibrate` and `python -m bench.kvm` measure, from the kvm backend's own pieces
(KvmVm and its guest, IrqfdInjector, the O_DSYNC WriteDevice) without hostd around them. The
vCPU thread runs on the last allowed CPU, the device and the stopper on the first; the foreign
load on those CPUs is reported with every figure.
"""
from __future__ import annotations

import mmap
import os
import signal
import tempfile
import threading
import time

import numpy as np

from hostd.plumbing import hoststats
from irqsrc.kvm.irqfd import IrqfdInjector
from irqsrc.sources import WriteDevice, io_base_dir
from vcpu import abi
from vcpu.kvm.kvm_vm import KvmVm, catch_stop_signal

INTERVAL_US = 500


def cpus() -> tuple[int, int]:
    """(housekeeping CPU, vCPU CPU)."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


def run_for(vm: KvmVm, seconds: float, device: list[int] = ()) -> dict:
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
    busy0, own0 = hoststats.cpu_busy_s([house, vcpu_cpu]), hoststats.own_cpu(list(device))
    t0 = time.monotonic_ns()
    stop.start()
    try:
        vm.enter()
    finally:
        stop.join()
        os.sched_setaffinity(0, [house, vcpu_cpu])
    window = (time.monotonic_ns() - t0) / 1e9
    own = hoststats.own_cpu_s_since(own0, list(device))
    foreign = hoststats.foreign_load(hoststats.cpu_busy_s([house, vcpu_cpu]) - busy0, own, window)
    st = vm.stats.read()
    return {
        "seconds": window, "delivered": vm.delivered(), "foreign_load": round(foreign, 3),
        "halt_exits": st["halt_exits"], "halt_attempted_poll": st["halt_attempted_poll"],
        "halt_successful_poll": st["halt_successful_poll"],
    }


def _samples(vm: KvmVm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The guest's ring, in its cycles: (wake - event, event - HLT, the wake TSC) per interrupt."""
    lat = np.zeros(1 << 20, np.int64)
    halt, wake = np.zeros_like(lat), np.zeros_like(lat)
    n, _ = vm.drain(lat, halt, wake, 0)
    return lat[:n], halt[:n], wake[:n]


def _isr_ns_p50(lat: np.ndarray, halt: np.ndarray, wake: np.ndarray, tsc_khz: int) -> int | None:
    """p50 of the guest's own time from an ISR's first rdtsc to its next halt (the HLT's rdtsc is
    the next entry's event - halt): the EOI's exit, and the next submit's or arm's."""
    hlt = wake - lat - halt
    return _p50_ns(hlt[1:] - wake[:-1], tsc_khz) if lat.size > 1 else None


def _p50_ns(cycles: np.ndarray, tsc_khz: int) -> int | None:
    return round(float(np.median(cycles)) * 1_000_000 / tsc_khz) if cycles.size else None


def timer(cap_ns: int, seconds: float, interval_us: int = INTERVAL_US) -> dict:
    """Guest TSC-deadline latency (ISR rdtsc - deadline) in cycles, under a poll cap."""
    vm = KvmVm("timer", False, cap_ns, interval_ns=interval_us * 1000)
    try:
        r = run_for(vm, seconds)
        cycles, halt, wake = _samples(vm)
        r["wake_ns_p50"] = _p50_ns(cycles, vm.tsc_khz)
        r["isr_ns_p50"] = _isr_ns_p50(cycles, halt, wake, vm.tsc_khz)
    finally:
        vm.close()
    r["cycles_p50"] = int(np.median(cycles)) if cycles.size else None
    return {"cap_ns": cap_ns, **r}


def io(cap_ns: int, seconds: float, spin: bool = False, service_ns: int | None = None) -> dict:
    """Synchronous 4 KiB O_DSYNC writes (or a modelled service time) by a forked device: the guest's
    submit is a KVM_IOEVENTFD the device blocks on, completions go through irqfd; wake = the
    device's rdtsc before its irqfd write to the guest ISR."""
    house, _ = cpus()
    seg = mmap.mmap(-1, abi.segment_size(1))
    words = memoryview(seg).cast("Q")
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    submit = os.eventfd(0, os.EFD_CLOEXEC)
    # Ours, on the disk the device's default file is on: the device is killed, not closed.
    disk = tempfile.TemporaryDirectory(prefix="hpemu-probe-", dir=io_base_dir())
    pid = os.fork()
    if pid == 0:  # the device: never touches KVM
        try:
            os.sched_setaffinity(0, [house])
            dev = WriteDevice(os.path.join(disk.name, "disk.img"), service_ns)
            inj = IrqfdInjector(words, [efd])
            while True:
                for _ in range(os.eventfd_read(submit)):
                    dev.write()
                    inj.inject(0)
        finally:
            os._exit(0)
    vm = None
    try:
        vm = KvmVm("io", spin, cap_ns, irqfd=efd, shared=words, submit_eventfd=submit,
                   inject_offset=abi.byte_offset(abi.slot_base(0) + abi.INJECT_TSC))
        r = run_for(vm, seconds, device=[pid])
        lat, halt, wake = _samples(vm)
        ns = _p50_ns(lat, vm.tsc_khz)
        r["isr_ns_p50"] = _isr_ns_p50(lat, halt, wake, vm.tsc_khz)
        r["wake_ns_p50"] = ns
        r["wake_us_p50"] = None if ns is None else round(ns / 1000, 1)
    finally:
        os.kill(pid, signal.SIGKILL)  # it blocks in eventfd_read: nothing else ends it
        os.waitpid(pid, 0)
        if vm is not None:
            vm.close()
        os.close(efd)
        os.close(submit)
        disk.cleanup()
    r["writes_per_s"] = round(r["delivered"] / r["seconds"])
    return {"cap_ns": cap_ns, "guest": "idle=poll" if spin else "hlt", **r}


def loop(probe: str, seconds: float) -> dict:
    """The guest's back-to-back `exits` (cpuid, handled in the kernel) or `ports` (writes to the
    submit port, a KVM_IOEVENTFD on an eventfd of ours as the io and rr workloads' submit is: the
    kernel handles each exit, signals the eventfd and re-enters; the loop never comes out to us,
    run_for's stopper ends it): ns per round trip as the guest's loop sees it."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) if probe == "ports" else None
    vm = None
    try:
        vm = KvmVm(probe, False, 0, submit_eventfd=efd)
        r = run_for(vm, seconds)
        if efd is not None:  # each write signalled it: the exits were the kernel's
            try:
                r["eventfd_count"] = os.eventfd_read(efd)
            except BlockingIOError:
                r["eventfd_count"] = 0
    finally:
        if vm is not None:
            vm.close()
        if efd is not None:
            os.close(efd)
    r["round_trip_ns"] = round(r["seconds"] * 1e9 / r["delivered"]) if r["delivered"] else None
    return {"probe": probe, **r}
