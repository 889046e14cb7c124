"""The device's side of the vCPUs' submit rings (DESIGN §3 Submit; the layout is vcpu/abi.py's).

The device waits on each vCPU's submit eventfd (on kvm the kernel signals it for the guest's
KVM_IOEVENTFD port write). An eventfd read returns the count accumulated since the last read, so
after one the ring is drained until it is empty, not read once per signal.
"""
from __future__ import annotations

import time

from irqsrc.sources import Ring
from vcpu import abi


class SubmitRings:
    """Every vCPU's ring, and what each submitted as the device's own count, apart from the shared
    words. kvm has no ring: the eventfd's count is the kernel's count of the guest's port writes,
    which the device adds to `taken` itself (Device._serve_kernel_counted)."""

    def __init__(self, words: memoryview, nvcpus: int) -> None:
        self.w = words
        base = [abi.slot_base(i) for i in range(nvcpus)]
        self.i_head = [b + abi.RING_HEAD for b in base]
        self.i_tail = [b + abi.RING_TAIL for b in base]
        self.i_entries = [b + abi.RING_ENTRIES for b in base]
        self.taken = [0] * nvcpus
        self.wait_ns = Ring()  # the guest's submit to the device taking it: the notify's own latency

    def take(self, index: int, out) -> None:
        """After an eventfd read: append `index` to `out` once per request in its ring. The ring's
        head says how many, not the count read: a request published after that read is taken now,
        and its own signal later finds the ring empty."""
        w = self.w
        i_tail, i_entries = self.i_tail[index], self.i_entries[index]
        tail = w[i_tail]
        head = w[self.i_head[index]]
        abi.full_fence()  # the head before the entries it publishes (aarch64)
        now = time.monotonic_ns()
        while tail != head:
            self.wait_ns.add(now - w[i_entries + tail % abi.RING_CAP])
            tail += 1
            self.taken[index] += 1
            out.append(index)
        w[i_tail] = tail
