"""rr's "host" reference: a bare process ping-ponging with the device, no vCPU in the loop.

It submits the same request the rr guest submits (with no exit cost) and sleeps in the kick socket until the answer,
as a process blocked in recv() would: no halt, no poll, no exit cost. Its slot says BLOCKED
throughout, so the device kicks it on every answer; it keeps the slot's ack and delivered
counters as a vCPU does, so the run's exactly-once check covers it too.
"""
from __future__ import annotations

import time

import zmq

from vcpu import abi
from vcpu.emu.guest import RoundTrips
from vcpu.emu.submit import Submitter


def run_bare(words: memoryview, kick: zmq.Socket, sub: Submitter, index: int, trips: RoundTrips,
             safety_timeout_ms: int) -> None:
    b = abi.slot_base(index)
    i_seq, i_ack = b + abi.IRQ_SEQ, b + abi.IRQ_ACK
    i_delivered, i_coalesced = b + abi.C["irq_delivered"], b + abi.C["irq_coalesced"]
    i_ops, i_spurious = b + abi.C["ops"], b + abi.C["spurious_wakeup"]
    words[b + abi.STATE] = abi.BLOCKED
    kick.setsockopt(zmq.RCVTIMEO, safety_timeout_ms)
    buf = bytearray(8)
    now = time.monotonic_ns
    ack = words[i_ack]
    while not words[abi.H_STOP]:
        t0 = now()
        sub.submit()
        while True:
            try:
                kick.recv_into(buf)
            except zmq.Again:
                pass  # the device kicks every answer: a timeout only re-checks
            seq = words[i_seq]
            if seq != ack:
                break
            if words[abi.H_STOP]:
                return  # the request in flight is not a sample
            words[i_spurious] += 1
        t = now()
        words[i_delivered] += 1
        if seq - ack > 1:
            words[i_coalesced] += seq - ack - 1
        ack = seq
        words[i_ack] = seq
        words[i_ops] += 1
        trips.add(t - t0)
