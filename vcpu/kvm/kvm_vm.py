"""One real KVM VM with one vCPU running the project's guest (vcpu/kvm/kvm_guest.py).

KVM serves a VM's ioctls to the process that created it only (DESIGN §9), so this object lives
and dies in the vCPU process. The kernel halts, polls and blocks by its own rules; the budget is
this VM's KVM_CAP_HALT_POLL.
"""
from __future__ import annotations

import errno
import mmap
import os
import signal
import struct

import numpy as np

from vcpu.kvm import kvm_api as k
from vcpu.kvm import kvm_guest as g
from vcpu.kvm.kvm_stats import VcpuStats

STOP_SIGNAL = signal.SIGUSR1
MEM_SLOT_RAM, MEM_SLOT_SHARED = 0, 1
IRQ_GSI = 0  # the PIC's IRQ0; vCPU 0's LINT0 is ExtINT, so it reaches the guest
CR0_CD_NW = 0x60000000  # reset leaves caching off; a guest OS clears these first thing


def catch_stop_signal() -> None:
    """STOP_SIGNAL makes KVM_RUN return EINTR and does nothing else (call in the main thread)."""
    signal.signal(STOP_SIGNAL, lambda signum, frame: None)


def _page_round(n: int) -> int:
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


class KvmVm:
    def __init__(self, workload: str, spin: bool, halt_poll_ns: int, interval_ns: int = 0,
                 irqfd: int | None = None, shared=None, inject_offset: int = 0,
                 submit_eventfd: int | None = None) -> None:
        """shared: a writable buffer (the hpemu segment) mapped at SHARED_GPA; inject_offset: the
        byte offset in it of the device's INJECT_TSC word for this vCPU; submit_eventfd: the guest's
        submit port becomes a KVM_IOEVENTFD on it (None: the port write exits to us)."""
        self.fds: list[int] = []
        try:
            self.kvm = self._own(k.open_kvm())
            k.check_caps(self.kvm)
            self.vm = self._own(k.create_vm(self.kvm))
            k.ioctl(self.vm, k.KVM_SET_TSS_ADDR, k.TSS_ADDR)
            k.ioctl(self.vm, k.KVM_CREATE_IRQCHIP)
            self.set_halt_poll_ns(halt_poll_ns)
            self.ram = mmap.mmap(-1, g.RAM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
            self._map(MEM_SLOT_RAM, 0, len(self.ram), k.buffer_address(self.ram))
            if shared is not None:
                self._map(MEM_SLOT_SHARED, g.SHARED_GPA, _page_round(len(shared.cast("B"))),
                          k.buffer_address(shared))
            self.vcpu = self._own(k.ioctl(self.vm, k.KVM_CREATE_VCPU, 0))
            k.set_supported_cpuid(self.kvm, self.vcpu)
            self.entry = g.entry(workload)
            self._reset_to_guest()
            self.run_map, self.run = k.map_run(self.kvm, self.vcpu)
            self.tsc_khz = k.ioctl(self.vcpu, k.KVM_GET_TSC_KHZ)  # the guest's TSC rate
            g.load(memoryview(self.ram), workload, spin, interval_ns * self.tsc_khz // 1_000_000,
                   g.SHARED_GPA + inject_offset)
            self.tsc_offset = k.tsc_offset(self.vcpu)
            g.set_tsc_offset(memoryview(self.ram), self.tsc_offset)
            if irqfd is not None:
                k.ioctl(self.vm, k.KVM_IRQFD, k.kvm_irqfd(fd=irqfd, gsi=IRQ_GSI))
            if submit_eventfd is not None:
                k.ioeventfd(self.vm, g.SUBMIT_PORT, submit_eventfd)
            self.stats = VcpuStats(k.ioctl(self.vcpu, k.KVM_GET_STATS_FD))  # owns and closes that fd
            self.ring = np.frombuffer(self.ram, np.int64, g.RING_ENTRIES * g.RING_ENTRY // 8, g.RING_GPA).reshape(
                g.RING_ENTRIES, g.RING_ENTRY // 8)
            self.read_at = 0  # ring entries consumed by drain()
        except BaseException:
            for fd in self.fds:
                os.close(fd)
            raise

    def _own(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def _map(self, slot: int, gpa: int, size: int, addr: int) -> None:
        k.ioctl(self.vm, k.KVM_SET_USER_MEMORY_REGION, k.kvm_userspace_memory_region(
            slot=slot, guest_phys_addr=gpa, memory_size=size, userspace_addr=addr))

    def _reset_to_guest(self) -> None:
        """Real mode at the image, data segments with 4 GiB limits, interrupts off."""
        s = k.get_sregs(self.vcpu)
        s.cs.base, s.cs.selector = 0, 0
        for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
            seg.base, seg.selector, seg.limit, seg.g = 0, 0, 0xFFFFFFFF, 1
        s.cr0 &= ~CR0_CD_NW
        k.ioctl(self.vcpu, k.KVM_SET_SREGS, s)
        r = k.kvm_regs(rip=self.entry, rsp=g.STACK_TOP, rflags=0x2)
        k.ioctl(self.vcpu, k.KVM_SET_REGS, r)

    # --- running ---------------------------------------------------------------------------
    def enter(self) -> None:
        """KVM_RUN until a signal or immediate_exit ends it. The guest makes no exit to us (its
        submit is a KVM_IOEVENTFD the kernel takes), so any exit that does come is raised."""
        r = k.run(self.vcpu)
        if r == -errno.EINTR:
            return
        if r < 0:
            raise OSError(-r, f"KVM_RUN: {os.strerror(-r)}")
        reason = self.run.exit_reason
        rip = k.get_regs(self.vcpu).rip
        raise RuntimeError(f"guest stopped: {k.EXIT_NAMES.get(reason, f'KVM exit reason {reason}')} at rip {rip:#x}")

    def set_halt_poll_ns(self, ns: int) -> None:
        """The VM's poll cap; any thread of the creating process may change it, at any time."""
        k.enable_cap(self.vm, k.KVM_CAP_HALT_POLL, ns)

    def stop(self, thread: int) -> None:
        """End the KVM_RUN `thread` is in, or its next one, from another thread: immediate_exit,
        then STOP_SIGNAL (a halted guest with nothing left to wake it never returns by itself).
        catch_stop_signal() must have been called first."""
        self.run.immediate_exit = 1
        signal.pthread_kill(thread, STOP_SIGNAL)

    # --- what the guest recorded -----------------------------------------------------------
    def delivered(self) -> int:
        """Interrupts the guest took (its ISRs' count)."""
        return struct.unpack_from("<I", self.ram, g.G_COUNT)[0]

    def armed(self) -> int:
        """TSC deadlines the guest armed (timer workload)."""
        return struct.unpack_from("<I", self.ram, g.G_ARMED)[0]

    def drain(self, lat: np.ndarray, halt: np.ndarray, wake: np.ndarray, n: int) -> tuple[int, int]:
        """Copy the ring entries written since the last drain to lat[n:], halt[n:], wake[n:]
        (guest TSC cycles: wake - event, event - HLT, the wake itself).

        Returns (new n, entries lost): lost ones were overwritten before we came, or found no room."""
        count = self.delivered()
        lost = max(0, count - self.read_at - g.RING_ENTRIES)
        first = self.read_at + lost
        room = min(count - first, len(lat) - n)
        lost += count - first - room
        end = first + room
        while first < end:  # at most two runs: up to the ring's end, then from its start
            i = first & (g.RING_ENTRIES - 1)
            m = min(end - first, g.RING_ENTRIES - i)
            lat[n:n + m] = self.ring[i:i + m, 0]
            halt[n:n + m] = self.ring[i:i + m, 1]
            wake[n:n + m] = self.ring[i:i + m, 2]
            n += m
            first += m
        self.read_at = count
        return n, lost

    def close(self) -> None:
        """Closing the fds frees the VM in the kernel."""
        self.stats.close()
        del self.run, self.ring
        self.run_map.close()
        for fd in reversed(self.fds):
            os.close(fd)
        self.fds.clear()
