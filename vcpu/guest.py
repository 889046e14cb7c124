"""The guest workloads a vCPU runs between halts (the device side of each is in irqsrc/)."""
from __future__ import annotations

import time
from array import array

import msgpack
import zmq

from vcpu import abi
from vcpu.costs import spin_ns
from vcpu.halt import VCpu

WORKLOADS = ("idle", "io", "timer", "rr")


def run_timer(v: VCpu, req: zmq.Socket, index: int, interval_ns: int) -> None:
    """TSC-deadline test: arm a deadline, halt, measure wake - deadline (recorded by VCpu)."""
    now = time.monotonic_ns
    while True:
        deadline = now() + interval_ns
        v.arm_timer(deadline)
        # Writing the TSC-deadline MSR is an exit: the host arms its timer (our device).
        req.send(msgpack.packb((abi.REQ_ARM, index, deadline)))
        if not v.idle():
            return


def submit_exit(req: zmq.Socket, submit: bytes, port_ns: int) -> None:
    """A port write the VMM forwards: the exit's way out, the send, the way back in."""
    half = port_ns // 2
    spin_ns(half)
    req.send(submit)
    spin_ns(port_ns - half)


def run_io(v: VCpu, req: zmq.Socket, index: int, port_ns: int) -> None:
    """Latency-bound synchronous writes: submit one (a port write: exit to the VMM and back),
    halt until its completion interrupt."""
    submit = msgpack.packb((abi.REQ_IO, index))
    while True:
        submit_exit(req, submit, port_ns)
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


def run_rr(v: VCpu, req: zmq.Socket, index: int, trips: RoundTrips, port_ns: int) -> None:
    """TCP_RR-like: send a request (an I/O submit), halt until the answer's interrupt.

    One round trip spans the guest's clock read right before the send to its clock read right
    after idle() returns, i.e. once the guest runs again with the answer consumed (wake path,
    exit cost and the exactly-once bookkeeping included, as a guest's ISR would be)."""
    submit = msgpack.packb((abi.REQ_IO, index))
    now = time.monotonic_ns
    while True:
        t0 = now()
        submit_exit(req, submit, port_ns)
        if not v.idle():
            return  # stopped: the transaction in flight is not a sample
        trips.add(now() - t0)


def run_idle(v: VCpu) -> None:
    """An idle guest: nothing to do but take the timer tick the device injects."""
    while v.idle():
        pass


def run(workload: str, v: VCpu, req: zmq.Socket, index: int, interval_ns: int,
        trips: RoundTrips | None = None, port_ns: int = 0) -> None:
    if workload == "rr":
        run_rr(v, req, index, trips, port_ns)
    elif workload == "timer":
        run_timer(v, req, index, interval_ns)
    elif workload == "io":
        run_io(v, req, index, port_ns)
    else:
        run_idle(v)
