"""Which way each halt ended, from the kernel: the kvm:kvm_vcpu_wakeup tracepoint.

The kernel's stats count successful polls but do not say which halts they were; this tracepoint
fires once per halt at its end, in kvm_vcpu_halt, saying "poll" (ended inside the poll) or
"wait" (the vCPU thread was scheduled out). It is read through a private tracefs instance
(instances/hpemu.<pid>: the global trace is left alone), filtered to the vCPU thread, with the
x86-tsc trace clock, so an event's timestamp is on the same counter as the guest ISR's `rdtsc`
less the vCPU's TSC offset. The instance is removed on every exit path; one left by a killed
process is removed by the next hostd (remove_stale). Instances are made and removed by
vcpu/kvm/tracefs.py, which `hostd record` uses too.
"""
from __future__ import annotations

import os
import re

import numpy as np

from vcpu.kvm import tracefs

EVENT = "kvm/kvm_vcpu_wakeup"
PREFIX = "hpemu."
# "  python-30918  [001] .....  5306705560675: kvm_vcpu_wakeup: wait time 3753796 ns, polling valid"
LINE = re.compile(rb" (\d+): kvm_vcpu_wakeup: (poll|wait) ")
CAPACITY = 1 << 21  # halts kept per run (events beyond are dropped, and the samples then lose their path)


def tracefs_root() -> str | None:
    """A tracefs we may make instances in and that has the event, or None."""
    return tracefs.usable_root(EVENT)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class WakeupTrace:
    """The wakeup events of one thread, collected as (TSC, waited) into preallocated arrays."""

    def __init__(self, root: str, tid: int) -> None:
        self.fd = -1
        self.dir = tracefs.make_instance(root, PREFIX)
        try:
            _write(os.path.join(self.dir, "trace_clock"), "x86-tsc")
            _write(os.path.join(self.dir, "events", EVENT, "filter"), f"common_pid == {tid}")
            _write(os.path.join(self.dir, "events", EVENT, "enable"), "1")
            self.fd = os.open(os.path.join(self.dir, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        except BaseException:
            self.close()
            raise
        self.tsc = np.zeros(CAPACITY, np.int64)
        self.waited = np.zeros(CAPACITY, np.bool_)
        self.n = 0
        self.dropped = 0
        self.tail = b""

    def drain(self) -> None:
        """Take what the kernel buffered since the last call (the publisher thread's job)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return
        data = self.tail + b"".join(chunks)
        cut = data.rfind(b"\n") + 1
        self.tail = data[cut:]
        for m in LINE.finditer(data, 0, cut):
            if self.n == CAPACITY:
                self.dropped += 1
                continue
            self.tsc[self.n] = int(m.group(1))
            self.waited[self.n] = m.group(2) == b"wait"
            self.n += 1

    def paths(self, wake_tsc: np.ndarray) -> np.ndarray:
        """Per wake (host TSC of the ISR), the halt that ended just before it: 0 poll, 1 wait,
        -1 none (no halt ended since the previous wake: it did not end one)."""
        ts = self.tsc[: self.n]
        idx = np.searchsorted(ts, wake_tsc, side="right") - 1
        fresh = idx >= 0
        fresh[1:] &= idx[1:] > idx[:-1]  # a halt ends at most one wake
        out = np.full(len(wake_tsc), -1, np.int8)
        out[fresh] = self.waited[: self.n][idx[fresh]]
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        tracefs.remove_instance(self.dir, (EVENT,))


def remove_stale() -> list[str]:
    """Remove the instances of processes that no longer exist; returns their names."""
    root = tracefs_root()
    return [] if root is None else tracefs.remove_stale(root, PREFIX, (EVENT,))
