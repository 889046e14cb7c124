"""Latency by path on kvm: each wake is given the halt the kernel's tracepoint says ended just before it."""
import numpy as np

from vcpu.kvm.kvm_trace import CAPACITY, WakeupTrace


def _trace(events: list[tuple[int, bool]]) -> WakeupTrace:
    """The matching half of a WakeupTrace, filled as drain() fills it from the kernel's lines."""
    t = WakeupTrace.__new__(WakeupTrace)
    t.tsc, t.waited = np.zeros(CAPACITY, np.int64), np.zeros(CAPACITY, np.bool_)
    t.n = len(events)
    for i, (tsc, waited) in enumerate(events):
        t.tsc[i], t.waited[i] = tsc, waited
    return t


def test_each_wake_takes_the_halt_that_ended_before_it_and_no_halt_twice():
    t = _trace([(100, False), (200, True), (300, False)])
    wakes = np.array([50, 150, 160, 250, 400])  # before any halt; after poll; no new halt; after wait; after poll
    assert t.paths(wakes).tolist() == [-1, 0, -1, 1, 0]


def test_a_wake_at_the_same_tsc_as_the_event_is_that_halts():
    t = _trace([(100, True)])
    assert t.paths(np.array([100])).tolist() == [1]
