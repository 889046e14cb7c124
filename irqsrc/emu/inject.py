"""Interrupt injection (DESIGN §3): timestamp, bump, fence, then kick the vCPU if it is blocked.

A vCPU that is running or polling sees the bump itself; kicking it anyway would wake its ZeroMQ
I/O thread on its core and preempt the poll after this one (KVM's kvm_vcpu_wake_up of a vCPU that
is not waiting costs it nothing). The fence orders our bump before our read of `state`, and the
vCPU fences between storing BLOCKED and re-checking `irq_seq`: at least one side sees the other,
so either the vCPU does not sleep or it gets the kick. Its safety-net timeout keeps proving that.
A guest's timer is not the device's at all: the vCPU times its own deadline (vcpu/emu/halt.py).
"""
from __future__ import annotations

import time

import zmq

from vcpu import abi

KICK = b"\x01"


class Injector:
    def __init__(self, words: memoryview, kicks: list[zmq.Socket]) -> None:
        self.w = words
        self.kicks = kicks
        self.i_seq = [abi.slot_base(i) + abi.IRQ_SEQ for i in range(len(kicks))]
        self.i_inject = [abi.slot_base(i) + abi.INJECT_NS for i in range(len(kicks))]
        self.i_state = [abi.slot_base(i) + abi.STATE for i in range(len(kicks))]
        # The device's own count, kept apart from the shared words so the end-of-run
        # exactly-once check compares two independent tallies.
        self.injected = [0] * len(kicks)
        self.kicks_dropped = 0

    def inject(self, index: int) -> None:
        w = self.w
        i_seq = self.i_seq[index]
        i_inject = self.i_inject[index]
        seq = w[i_seq] + 1
        t = time.monotonic_ns()  # stamped right before the two stores, nothing in between
        w[i_inject] = t  # x86-TSO keeps this store ahead of the bump below
        w[i_seq] = seq
        abi.full_fence()
        self.injected[index] += 1
        if w[self.i_state[index]] != abi.BLOCKED:
            return
        try:
            self.kicks[index].send(KICK, zmq.NOBLOCK)
        except zmq.Again:
            # Queue full means undrained kicks are already waiting: the vCPU will drain
            # them and its re-check sees this interrupt, so nothing is lost.
            self.kicks_dropped += 1
