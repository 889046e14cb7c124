"""Recording cost: ns per wake sample, the exact recording sequence of VCpu._wake (the live
wake-latency histogram bump, where the core has one, and the Recorder writes).

Each loop runs the same harness (a for loop over range, the same locals); the figure is the
sequence's time minus the empty harness's, per sample. The floor is the least a Python
recorder can do: one store of one value into a preallocated array('q'), minus the same harness.
"""
from __future__ import annotations

import time

from vcpu import abi
from vcpu.halt import PATH_BLOCK, PATH_POLL, Recorder

# The live wake-latency histograms (vcpu/abi.py HIST) that _wake bumps per sample, if this core has them.
_HIST_POLL = abi.HIST.get("wake_latency_poll_hist")
_HIST_BLOCK = abi.HIST.get("wake_latency_block_hist")


class _VCpuLike:
    """The attributes _wake reads through `self`, over a real slot layout in private memory."""

    def __init__(self, rec: Recorder) -> None:
        self.w = memoryview(bytearray(abi.segment_size(1))).cast("Q")
        self.rec = rec
        self.h_wake_poll = abi.slot_base(0) + (_HIST_POLL or 0)
        self.h_wake_block = abi.slot_base(0) + (_HIST_BLOCK or 0)


def _empty(v: _VCpuLike, n: int, t: int, event: int, t0: int, path: int) -> None:
    for _ in range(n):
        pass


def _record(v: _VCpuLike, n: int, t: int, event: int, t0: int, path: int) -> None:
    # Copied from vcpu/halt.py VCpu._wake, from the latency on (`self` is `v`).
    w = v.w
    for _ in range(n):
        lat = t - event
        w[(v.h_wake_block if path == PATH_BLOCK else v.h_wake_poll) + abi.hist_bucket(lat)] += 1
        rec = v.rec
        i = rec.n
        if i < rec.capacity:
            rec.latency_ns[i] = lat
            rec.halt_ns[i] = event - t0 if event > t0 else 0
            rec.path[i] = path
            rec.n = i + 1
        else:
            pass


def _record_no_hist(v: _VCpuLike, n: int, t: int, event: int, t0: int, path: int) -> None:
    # The same for a core without the live histograms.
    for _ in range(n):
        lat = t - event
        rec = v.rec
        i = rec.n
        if i < rec.capacity:
            rec.latency_ns[i] = lat
            rec.halt_ns[i] = event - t0 if event > t0 else 0
            rec.path[i] = path
            rec.n = i + 1
        else:
            pass


def _store(v: _VCpuLike, n: int, t: int, event: int, t0: int, path: int) -> None:
    a = v.rec.latency_ns
    i = 0
    for _ in range(n):
        a[i] = t


def _time(fn, v: _VCpuLike, n: int, repeats: int) -> float:
    best = float("inf")
    t, event, t0 = 2_000_000_500, 2_000_000_000, 1_999_000_000
    for _ in range(repeats):
        v.rec.n = 0
        s = time.perf_counter_ns()
        fn(v, n, t, event, t0, PATH_POLL)
        best = min(best, time.perf_counter_ns() - s)
    return best / n


def measure(n: int = 1_000_000, repeats: int = 5) -> dict:
    v = _VCpuLike(Recorder(n))  # room for every sample: each iteration really records
    empty = _time(_empty, v, n, repeats)
    full = _time(_record if _HIST_POLL is not None else _record_no_hist, v, n, repeats)
    store = _time(_store, v, n, repeats)
    return {
        "ns_per_sample": max(0.0, full - empty),
        "floor_ns_per_store": max(0.01, store - empty),
        "empty_loop_ns": empty,
        "without_histogram_ns": max(0.0, _time(_record_no_hist, v, n, repeats) - empty),
        "samples": n,
        "includes_wake_histogram": _HIST_POLL is not None,
        "repeats": repeats,
    }
