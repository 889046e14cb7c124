"""The guest workloads a vCPU runs between halts (the device side of each is in irqsrc/)."""
from __future__ import annotations

import time
from array import array

from vcpu.emu.halt import VCpu
from vcpu.emu.submit import Submitter

WORKLOADS = ("idle", "io", "timer", "rr")


def run_timer(v: VCpu, interval_ns: int) -> None:
    """TSC-deadline test: arm a deadline, halt, measure wake - deadline (recorded by VCpu)."""
    now = time.monotonic_ns
    while True:
        v.settle()
        v.arm_timer(now() + interval_ns)
        if not v.idle():
            return


def run_io(v: VCpu, sub: Submitter) -> None:
    """Latency-bound synchronous writes: submit one, halt until its completion interrupt."""
    while True:
        v.settle()
        sub.submit()
        if not v.idle():
            return


class RoundTrips:
    """rr's per-transaction round trips, in ns, in fixed memory filled in place (no growth per sample)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.ns = array("q", bytes(8 * capacity))
        self.n = 0
        self.dropped = 0

    def add(self, ns: int) -> None:
        i = self.n
        if i < self.capacity:
            self.ns[i] = ns
            self.n = i + 1
        else:
            self.dropped += 1

    def payload(self) -> dict:
        return {"rr_ns": self.ns[: self.n].tobytes(), "rr_dropped": self.dropped}


def run_rr(v: VCpu, sub: Submitter, trips: RoundTrips) -> None:
    """TCP_RR-like: send a request (an I/O submit), halt until the answer's interrupt.

    One round trip spans the guest's clock read right before the submit to its clock read right
    after idle() returns, i.e. once the guest runs again with the answer consumed (wake path,
    exit cost and the exactly-once bookkeeping included, as a guest's ISR would be)."""
    now = time.monotonic_ns
    while True:
        v.settle()
        t0 = now()
        sub.submit()
        if not v.idle():
            return  # stopped: the transaction in flight is not a sample
        trips.add(now() - t0)


def run_idle(v: VCpu) -> None:
    """An idle guest: nothing to do but take the timer tick the device injects."""
    while True:
        v.settle()
        if not v.idle():
            return


def run(workload: str, v: VCpu, sub: Submitter | None, interval_ns: int, trips: RoundTrips | None = None) -> None:
    if workload == "rr":
        run_rr(v, sub, trips)
    elif workload == "timer":
        run_timer(v, interval_ns)
    elif workload == "io":
        run_io(v, sub)
    else:
        run_idle(v)
