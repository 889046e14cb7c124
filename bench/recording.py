"""Recording cost: ns per wake sample, the exact Recorder write sequence of VCpu._wake.

Each loop runs the same harness (a for loop over range, the same locals); the figure is the
sequence's time minus the empty harness's, per sample. The floor is the least a Python
recorder can do: one store of one value into a preallocated array('q'), minus the same harness.
"""
from __future__ import annotations

import time
from array import array

from vcpu.halt import PATH_POLL, Recorder


def _empty(rec: Recorder, n: int, t: int, event: int, t0: int, path: int) -> None:
    for _ in range(n):
        pass


def _record(rec: Recorder, n: int, t: int, event: int, t0: int, path: int) -> None:
    # Copied from vcpu/halt.py VCpu._wake (the part after the statistics counter).
    for _ in range(n):
        i = rec.n
        if i < rec.capacity:
            rec.latency_ns[i] = t - event
            rec.halt_ns[i] = event - t0 if event > t0 else 0
            rec.path[i] = path
            rec.n = i + 1
        else:
            pass


def _store(rec: Recorder, n: int, t: int, event: int, t0: int, path: int) -> None:
    a = rec.latency_ns
    i = 0
    for _ in range(n):
        a[i] = t


def _time(fn, rec: Recorder, n: int, repeats: int) -> float:
    best = float("inf")
    t, event, t0 = 2_000_000_500, 2_000_000_000, 1_999_000_000
    for _ in range(repeats):
        rec.n = 0
        s = time.perf_counter_ns()
        fn(rec, n, t, event, t0, PATH_POLL)
        best = min(best, time.perf_counter_ns() - s)
    return best / n


def measure(n: int = 1_000_000, repeats: int = 5) -> dict:
    rec = Recorder(n)  # room for every sample: each iteration really records
    empty = _time(_empty, rec, n, repeats)
    full = _time(_record, rec, n, repeats)
    store = _time(_store, rec, n, repeats)
    return {
        "ns_per_sample": max(0.0, full - empty),
        "floor_ns_per_store": max(0.01, store - empty),
        "empty_loop_ns": empty,
        "samples": n,
        "repeats": repeats,
    }
