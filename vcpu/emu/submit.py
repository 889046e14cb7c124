"""The guest's submit, as a real VMM takes a virtio notify (DESIGN §3 Submit): a request in the
vCPU's ring in the VM's segment, then that vCPU's submit eventfd.

On the kvm backend the guest's port write is a KVM_IOEVENTFD and the kernel signals the same kind
of eventfd itself; here the guest spends the profile's submit cost (that exit, measured by `hostd
calibrate`) on its own core first, then writes the eventfd. No message broker on this path.
"""
from __future__ import annotations

import os
import time

from vcpu import abi
from vcpu.emu.costs import spin_ns


class Submitter:
    def __init__(self, words: memoryview, index: int, eventfd: int, submit_ns: int) -> None:
        b = abi.slot_base(index)
        self.w = words
        self.fd = eventfd
        self.submit_ns = submit_ns
        self.i_head, self.i_tail, self.i_entries = b + abi.RING_HEAD, b + abi.RING_TAIL, b + abi.RING_ENTRIES
        self.i_full = b + abi.C["ring_full"]

    def submit(self) -> None:
        """One request: the exit's cost, the entry (its stamp), the head, the eventfd."""
        spin_ns(self.submit_ns)
        w = self.w
        head = w[self.i_head]
        if head - w[self.i_tail] >= abi.RING_CAP:
            # One request is in flight per vCPU, so this is a bug in the protocol: counted, and the
            # run's exactly-once check fails on it. The guest then waits for a completion that never comes.
            w[self.i_full] += 1
            return
        w[self.i_entries + head % abi.RING_CAP] = time.monotonic_ns()
        abi.full_fence()  # the entry before the head (x86-TSO keeps the order anyway; aarch64 does not)
        w[self.i_head] = head + 1
        # The device is runnable from here until it sleeps again (it clears this itself): a poll's
        # look at the run queue (vcpu/emu/single_task.py) must count it as ours from the start.
        w[abi.H_DEVICE_AWAKE] = 1
        os.eventfd_write(self.fd, 1)
