"""Recording cost: ns per wake sample, timing the vCPU's own wake path (VCpu._wake: the
exactly-once bookkeeping, the live wake-latency histogram and the Recorder writes) on a real
VCpu over a private copy of the slot layout.

Each loop runs the same harness (a for loop over range, the same locals); the figure is the
wake path's time minus the empty harness's, per sample. The floor is the least a Python
recorder can do: one store of one value into a preallocated array('q'), minus the same harness.
"""
from __future__ import annotations

import time

import zmq

from vcpu import abi
from vcpu.emu.costs import Costs
from vcpu.abi import PATH_POLL
from vcpu.emu.halt import NONE, Recorder, VCpu
from vcpu.policy import PolicySpec, make_host_policy


def _vcpu(rec: Recorder, ctx: zmq.Context) -> VCpu:
    words = memoryview(bytearray(abi.segment_size(1))).cast("Q")
    host = make_host_policy(PolicySpec("none", "none", 0))
    return VCpu(words, 0, ctx.socket(zmq.PULL), host, None, False, Costs(), rec, 1000)


def _empty(v: VCpu, n: int, t: int, t0: int) -> None:
    for _ in range(n):
        pass


def _wake(v: VCpu, n: int, t: int, t0: int) -> None:
    wake = v._wake  # noqa: SLF001 - the hot path itself is what is measured
    for _ in range(n):
        wake(t, t0, NONE, PATH_POLL)


def _store(v: VCpu, n: int, t: int, t0: int) -> None:
    a = v.rec.latency_ns
    i = 0
    for _ in range(n):
        a[i] = t


def _time(fn, v: VCpu, n: int, repeats: int) -> list[float]:
    """ns per iteration of each repeat (the figures take the best; the spread takes them all)."""
    out = []
    t, t0 = 2_000_000_500, 1_999_000_000
    for _ in range(repeats):
        v.rec.n = 0
        s = time.perf_counter_ns()
        fn(v, n, t, t0)
        out.append((time.perf_counter_ns() - s) / n)
    return out


def measure(n: int = 1_000_000, repeats: int = 5) -> dict:
    ctx = zmq.Context()
    try:
        v = _vcpu(Recorder(n), ctx)  # room for every sample: each iteration really records
        empties = _time(_empty, v, n, repeats)
        fulls = _time(_wake, v, n, repeats)
        assert v.rec.n == n  # the wake path really recorded every sample
        stores = _time(_store, v, n, repeats)
    finally:
        ctx.destroy(linger=0)
    empty, full, store = min(empties), min(fulls), min(stores)
    return {
        "ns_per_sample": max(0.0, full - empty),
        "floor_ns_per_store": max(0.01, store - empty),
        "empty_loop_ns": empty,
        "samples": n,
        "repeats": repeats,
        # Repeat i of each loop, less repeat i of the empty harness: the spread of the ratio.
        "repeat_ns_per_sample": [max(0.0, f - e) for f, e in zip(fulls, empties)],
        "repeat_floor_ns_per_store": [max(0.01, s - e) for s, e in zip(stores, empties)],
    }
