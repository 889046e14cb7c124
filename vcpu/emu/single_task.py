"""kvm_vcpu_can_poll()'s single_task_running(), for a user without root: does a task not ours
want this CPU?

No per-CPU run-queue length is readable unprivileged (/proc/schedstat needs CONFIG_SCHEDSTATS,
sched_debug is root's). The one per-CPU probe that is, sched_yield(), hands the CPU over and leaves
the poller runnable with its deadline pushed back, so an event that lands while the other task runs
is served when that task sleeps: 741 us late, against 78 us for a blocked waiter that is woken
(`python -m bench.need_resched`). The kernel's vCPU is such a waiter. So the poll looks at
/proc/loadavg's running count (every CPU's nr_running() summed), less this vCPU and the tasks of
ours it knows run on other CPUs: our vCPUs there that are not blocked, and the device while it is
awake. What remains is someone else's task, on this CPU or on another (which the kernel would not
count; README, "Beside a neighbour"). It must be seen by two looks in a row: a task waiting for our
CPU stays runnable until it gets it, while wake-ups of ours (the device leaving epoll, a ZeroMQ I/O
thread) and others' short runs elsewhere come and go. Then the vCPU takes the block path.

While the device is awake, the kernel's own threads working for its write (the journal, the block
layer's completions) are runnable on other CPUs, and the count cannot tell them from a task here:
there a sched_yield() decides (vcpu/emu/halt.py). A look costs ~1.5 us and allocates nothing.
"""
from __future__ import annotations

import os

from vcpu import abi

_SLASH, _ZERO, _NINE = ord("/"), ord("0"), ord("9")


class RunQueue:
    def __init__(self, words: memoryview, elsewhere: tuple[int, ...], device_elsewhere: bool) -> None:
        """elsewhere: indices of our vCPUs on other CPUs; device_elsewhere: the device is not on ours."""
        self.w = words
        self.states = tuple(abi.slot_base(i) + abi.STATE for i in elsewhere)
        self.device = device_elsewhere
        self.fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        self.buf = bytearray(128)
        self.bufs = [self.buf]
        # Looks in a row that saw another task, across polls: a task still waiting when the next
        # halt begins ends that poll at its first look, as the kernel's would at once.
        self.streak = 0

    def others_runnable(self) -> bool:
        """True once two looks in a row saw more runnable tasks than this vCPU and ours elsewhere."""
        n = os.preadv(self.fd, self.bufs, 0)
        buf = self.buf
        i = buf.find(_SLASH, 0, n) - 1  # "0.10 0.43 0.82 2/111 4523": the 2 before the slash
        running, scale = 0, 1
        while i >= 0 and _ZERO <= buf[i] <= _NINE:
            running += (buf[i] - _ZERO) * scale
            scale *= 10
            i -= 1
        ours = 1
        w = self.w
        for s in self.states:
            if w[s] != abi.BLOCKED:
                ours += 1
        if self.device_awake():
            ours += 1
        if running <= ours:
            self.streak = 0
            return False
        self.streak += 1
        return self.streak >= 2

    def device_awake(self) -> bool:
        """The device, on another CPU, is not asleep in epoll (it says so in the segment)."""
        return self.device and self.w[abi.H_DEVICE_AWAKE] != 0
