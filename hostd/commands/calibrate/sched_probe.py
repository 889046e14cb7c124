"""The scheduler's block penalty here: what any blocked process on the vCPU's CPU pays to run again.

Both wakes a blocked vCPU takes, measured with bare Python processes on the CPUs the emulator uses:

- `wake`: a process blocked in read() on a pipe, woken by a write from the device's CPU (the
  cross-CPU wake a kick or an irqfd is), p50 of wake - the writer's stamp just before its write;
- `timer`: a process sleeping to a deadline on its own CPU, timer slack 1 ns (the hrtimer a
  guest's TSC deadline is), p50 of wake - deadline.

The kernel pays these too, inside its block-path wakes; what it pays beyond them is the entry and
injection a blocked vCPU needs, which the emulator spends on its own block path (vcpu/emu/costs.py).
"""
from __future__ import annotations

import mmap
import os
import select
import struct
import time

from vcpu import abi

GAP_S = 0.0004  # between wakes: long enough for the waiter's CPU to go idle, as a halted vCPU's does


def _p50(values: list[int]) -> int:
    return sorted(values)[len(values) // 2]


def wake(samples: int, waker_cpu: int, waiter_cpu: int) -> int:
    wake_r, wake_w = os.pipe()
    ack_r, ack_w = os.pipe()
    stamp = mmap.mmap(-1, mmap.PAGESIZE)
    pid = os.fork()
    if pid == 0:  # the waker: one wake in flight, the next only after the waiter said it ran
        try:
            os.close(ack_w)
            os.close(wake_r)
            os.sched_setaffinity(0, [waker_cpu])
            abi.set_timer_slack_ns(1)
            while os.read(ack_r, 1):
                time.sleep(GAP_S)
                struct.pack_into("q", stamp, 0, time.monotonic_ns())
                os.write(wake_w, b"w")
        finally:
            os._exit(0)
    os.close(ack_r)
    os.close(wake_w)
    lat = []
    try:
        os.sched_setaffinity(0, [waiter_cpu])
        for _ in range(samples):
            os.write(ack_w, b"a")
            os.read(wake_r, 1)
            lat.append(time.monotonic_ns() - struct.unpack_from("q", stamp, 0)[0])
    finally:
        os.close(ack_w)  # the waker's read sees the end
        os.waitpid(pid, 0)
        os.close(wake_r)
        os.sched_setaffinity(0, [waker_cpu, waiter_cpu])
    return _p50(lat)


def timer(samples: int, cpu: int) -> int:
    """A process of ours sleeping to deadlines on `cpu` (in a child: the slack and pinning are its own)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.sched_setaffinity(0, [cpu])
            abi.set_timer_slack_ns(1)
            lat = []
            for _ in range(samples):
                deadline = time.monotonic_ns() + int(GAP_S * 1e9)
                while (left := deadline - time.monotonic_ns()) > 0:
                    select.select([], [], [], left / 1e9)
                lat.append(time.monotonic_ns() - deadline)
            os.write(w, struct.pack("q", _p50(lat)))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 8)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return struct.unpack("q", data)[0]
