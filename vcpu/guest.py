"""The guest workloads a vCPU runs between halts (the device side of each is in irqsrc/)."""
from __future__ import annotations

import time

import msgpack
import zmq

from vcpu import abi
from vcpu.halt import VCpu

WORKLOADS = ("idle", "io", "timer")


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


def run_io(v: VCpu, req: zmq.Socket, index: int) -> None:
    """Latency-bound synchronous writes: submit one, halt until its completion interrupt."""
    submit = msgpack.packb((abi.REQ_IO, index))
    while True:
        req.send(submit)
        if not v.idle():
            return


def run_idle(v: VCpu) -> None:
    """An idle guest: nothing to do but take the timer tick the device injects."""
    while v.idle():
        pass


def run(workload: str, v: VCpu, req: zmq.Socket, index: int, interval_ns: int) -> None:
    if workload == "timer":
        run_timer(v, req, index, interval_ns)
    elif workload == "io":
        run_io(v, req, index)
    else:
        run_idle(v)
