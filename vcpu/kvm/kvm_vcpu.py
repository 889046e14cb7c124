"""The kvm backend inside a vCPU process: one real KVM VM, run until hostd says stop.

The process contract is the emulated vCPU's (vcpu/process.py does the setup, the greetings and
the reports); what runs between "go" and "stop" is KVM_RUN. Two threads:

- the vCPU thread (the process's main thread, on the vCPU's CPU) sits in KVM_RUN; the kernel
  halts, polls and blocks the guest there, and takes the `io` guest's submit port write itself:
  the port is a KVM_IOEVENTFD on the device's submit eventfd, as a VMM's virtio notify. KVM_RUN
  comes back to us only to stop;
- a publisher thread, on the housekeeping CPU so the kernel's poll never sees it runnable
  (`kvm_vcpu_can_poll`: single_task_running()), copies the kernel's stats and the guest's
  counts into the vCPU's slot every PUBLISH_S (so `hostd stat` reads them live), drains the
  guest's sample ring, and on H_STOP ends the KVM_RUN in progress: immediate_exit, then a
  signal, because a halted guest with nothing left to wake it never returns by itself.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from vcpu import abi
from vcpu.kvm import kvm_api, kvm_trace
from vcpu.kvm.kvm_stats import HALT_COUNTERS, HALT_HISTS
from vcpu.abi import PATH_BLOCK, PATH_GUEST_POLL, PATH_POLL
from vcpu.kvm.kvm_vm import KvmVm, catch_stop_signal
from vcpu.policy import PolicySpec

PUBLISH_S = 0.02  # ~50 us of the housekeeping CPU each
# Wake paths as the report tags samples, vcpu.abi's codes: the kernel's stats do not say per
# halt whether it polled or blocked; the kvm:kvm_vcpu_wakeup tracepoint does, where tracefs is
# usable (vcpu/kvm/kvm_trace.py). Without it a halted guest's wakes are PATH_KERNEL, path unknown.
PATH_KERNEL = 3


def halt_poll_cap(policy: PolicySpec) -> tuple[int, str]:
    """The VM's KVM_CAP_HALT_POLL for a policy, and what the kernel then does, in words."""
    p = policy.policy
    if p in ("none", "idle-poll"):
        return 0, "no host polling" if p == "none" else "the guest spins instead of halting; no host polling"
    if p == "adaptive":
        return policy.halt_poll_ns, "the kernel's adaptive halt polling, capped at the budget"
    if p == "fixed":
        return policy.halt_poll_ns, ("fixed runs as the kernel's adaptive halt polling capped at the budget "
                                     "(the 2015 never-shrink needs --kvm-module-params)")
    raise kvm_api.KvmUnavailable(f"policy {p} is not available on the kvm backend")


class KvmVcpu:
    def __init__(self, spec: dict, index: int, words: memoryview) -> None:
        policy = PolicySpec.from_dict(spec["policy"])
        cap, _ = halt_poll_cap(policy)
        self.cap_follows_budget = policy.policy in ("adaptive", "fixed")
        self.w = words
        self.index = index
        self.spec = spec
        irqfds = spec["irqfds"]
        self.spin = policy.policy == "idle-poll"
        self.vm = KvmVm(
            spec["workload"], self.spin, cap,
            irqfd=None if irqfds is None else irqfds[index],
            shared=words, inject_offset=abi.byte_offset(abi.slot_base(index) + abi.INJECT_TSC),
            interval_ns=spec["interval_ns"],
            submit_eventfd=spec["submit_fds"][index] if spec["submit_fds"] else None,
        )
        # This (main) thread runs KVM_RUN: the halts to trace are its. An idle=poll guest never halts.
        root = None if self.spin else kvm_trace.tracefs_root()
        self.trace = None
        if root is not None:
            try:
                self.trace = kvm_trace.WakeupTrace(root, threading.get_native_id())
            except OSError:
                pass  # tracefs there but not ours to use: latency by path stays unknown (report says)
        # Sample buffers, touched now: their first-touch faults must not land in the window.
        n = spec["sample_capacity"]
        self.lat = np.ones(n, np.int64)
        self.halt = np.ones(n, np.int64)
        self.wake = np.ones(n, np.int64)
        self.n = 0
        self.dropped = 0
        b = abi.slot_base(index)
        self.timer = spec["workload"] == "timer"
        self.i_seq = b + abi.IRQ_SEQ
        self.i_param_gen, self.i_halt_poll_ns = b + abi.PARAM_GEN, b + abi.HALT_POLL_NS
        self.param_gen = words[self.i_param_gen]
        self.c = {name: b + off for name, off in abi.C.items()}
        self.h = {name: b + off for name, off in abi.HIST.items()}
        self.stopping = threading.Event()
        self.failure: BaseException | None = None  # the publisher's, raised in the vCPU thread
        catch_stop_signal()

    # --- the publisher thread --------------------------------------------------------------
    def publish(self) -> None:
        """Kernel stats and guest counts into the slot; new samples into the buffers; a budget
        hostd changed (`hostd set halt_poll_ns=`) into the VM's cap."""
        w, c, h, vm = self.w, self.c, self.h, self.vm
        if w[self.i_param_gen] != self.param_gen:
            self.param_gen = w[self.i_param_gen]
            if self.cap_follows_budget:
                vm.set_halt_poll_ns(w[self.i_halt_poll_ns])
        stats = vm.stats.read()
        for name in HALT_COUNTERS:
            w[c[name]] = stats[name]
        for name in HALT_HISTS:
            base = h[name]
            for i, v in enumerate(stats[name][: abi.HIST_BUCKETS]):
                w[base + i] = v
        self.n, lost = vm.drain(self.lat, self.halt, self.wake, self.n)
        if self.trace is not None:
            self.trace.drain()
        self.dropped += lost
        delivered = vm.delivered()
        if self.timer:
            # The timer's device is the kernel's LAPIC timer in our own VM: its injections are
            # the deadlines the guest armed, which only this process sees. Nobody else writes
            # this word on a kvm timer run.
            w[self.i_seq] = vm.armed()
        w[c["irq_delivered"]] = delivered
        w[c["ops"]] = delivered
        w[c["samples_dropped"]] = self.dropped

    def _publisher(self, main_thread: int) -> None:
        try:
            cpu = self.spec["device_cpu"]
            if cpu is not None:
                os.sched_setaffinity(0, [cpu])  # this thread only
            while not self.w[abi.H_STOP]:
                self.publish()
                if self.stopping.wait(PUBLISH_S):
                    return  # the vCPU thread ended first
        except BaseException as exc:
            self.failure = exc  # the vCPU thread raises it: the process exits naming it
        finally:
            # Whatever ended us, the vCPU thread must not stay in KVM_RUN: nothing else ends it.
            self.stopping.set()
            self.vm.stop(main_thread)

    # --- the vCPU thread -------------------------------------------------------------------
    def run(self) -> None:
        """KVM_RUN until H_STOP."""
        vm = self.vm
        pub = threading.Thread(target=self._publisher, args=(threading.get_ident(),), name="publisher")
        pub.start()
        try:
            while not self.stopping.is_set():
                vm.enter()  # a signal ends it: the stop, or one meant for another thread
        finally:
            self.stopping.set()  # on our own failure too: the publisher ends
            pub.join()
        if self.failure is not None:
            raise self.failure
        self.publish()

    def _paths(self) -> np.ndarray:
        n = self.n
        if self.spin:
            return np.full(n, PATH_GUEST_POLL, np.uint8)
        if self.trace is None:
            return np.full(n, PATH_KERNEL, np.uint8)
        waited = self.trace.paths(self.wake[:n] - self.vm.tsc_offset)  # the trace's clock: host TSC
        return np.choose(waited + 1, (PATH_KERNEL, PATH_POLL, PATH_BLOCK)).astype(np.uint8)

    def report(self) -> dict:
        """The emulator's report fields (ns), plus the guest's cycles."""
        n, khz = self.n, self.vm.tsc_khz
        lat = self.lat[:n].clip(0)
        halt = self.halt[:n].clip(0)
        return {
            "latency_ns": (lat * 1_000_000 // khz).tobytes(),
            "halt_ns": (halt * 1_000_000 // khz).tobytes(),
            "path": self._paths().tobytes(),
            "paths_traced": self.trace is not None,
            "trace_dropped": 0 if self.trace is None else self.trace.dropped,
            "latency_cycles": lat.tobytes(),
            "tsc_khz": khz,
        }

    def close(self) -> None:
        if self.trace is not None:
            self.trace.close()
        self.vm.close()
