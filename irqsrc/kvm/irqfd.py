"""Interrupt injection into real KVM VMs (kvm backend): stamp, count, write the vCPU's irqfd.

Same interface as inject.Injector. The eventfd is the VM's KVM_IRQFD on GSI 0: one write
raises the PIC's IRQ0 edge in that VM, and the kernel wakes (or finds, if it is polling) the
halted vCPU. The device never calls KVM itself; hostd handed it the eventfds.
"""
from __future__ import annotations

import os

from irqsrc.kvm.rdtsc import rdtsc
from vcpu import abi


class IrqfdInjector:
    def __init__(self, words: memoryview, eventfds: list[int]) -> None:
        self.w = words
        self.fds = eventfds
        self.i_seq = [abi.slot_base(i) + abi.IRQ_SEQ for i in range(len(eventfds))]
        self.i_tsc = [abi.slot_base(i) + abi.INJECT_TSC for i in range(len(eventfds))]
        self.injected = [0] * len(eventfds)
        self.kicks_dropped = 0  # no kicks on this path; kept for the device's report

    def inject(self, index: int) -> None:
        w = self.w
        w[self.i_seq[index]] += 1
        # The guest's ISR reads this stamp: nothing but the eventfd write after it.
        w[self.i_tsc[index]] = rdtsc()
        os.eventfd_write(self.fds[index], 1)
        self.injected[index] += 1  # our own count: after the interrupt is on its way
