"""Halt emulation: the kvm_vcpu_halt analogue, run inside the vCPU process.

One idle period of the guest is: an optional guest poll (cpuidle-haltpoll), then HLT, which
exits to the "host": poll the pending word for the policy's budget, then drain stale kicks,
re-check, and block on the ZeroMQ kick socket (until the guest's deadline, if one is armed).
A calibration profile's costs are spun where the kernel pays them (vcpu/emu/costs.py). The device kicks a vCPU whose state shows
BLOCKED after every injection (irqsrc/emu/inject.py); a fence on each side between its store and its
load of the other's word, plus drain-before-recheck here, is what makes the protocol free of lost
wakeups: either the re-check sees the interrupt or the device saw BLOCKED and kicked; a kick that
arrives after the drain stays queued and wakes the block; one that arrived before it was sent
after its interrupt was published, so the re-check sees that interrupt. A running or polling
vCPU is never kicked, so nothing of ours preempts its poll.

Everything on the poll and wake paths works on preallocated words and arrays: no lists,
dicts or logging per halt.
"""
from __future__ import annotations

import ctypes
import os
import resource
import time
from array import array

import zmq

from vcpu import abi
from vcpu.abi import PATH_BLOCK, PATH_GUEST_POLL, PATH_POLL
from vcpu.emu.costs import Costs, spin_ns, spin_until
from vcpu.emu.guest_haltpoll import GuestHaltPoll
from vcpu.policy import HostPolicy
from vcpu.emu.single_task import RunQueue

# Why a wait ended.
NONE, IRQ, TIMER, STOPPED = 0, 1, 2, 3
# Why a poll ended without an event.
EXPIRED, PREEMPTED = 4, 5

# kvm_vcpu_can_poll() polls only while single_task_running() && !need_resched(). Our stand-ins:
# every few passes, whether tasks not ours are runnable (vcpu/emu/single_task.py: then the poll ends and
# the vCPU blocks, to be woken as the kernel's is) or a vCPU sharing our CPU is; and a gap this
# long between two passes means we were off the CPU: preempted by a task that woke here if our
# involuntary switches rose, merely descheduled by a hypervisor if not.
PREEMPT_GAP_NS = 8_000  # a pass takes ~1 us; a switch away and back, more than 8
LOOKS = 16  # looks at the pending word per pass; the clock and the rest once per pass
STOP_CHECK_MASK = 63  # the stop word every 64 passes
SIBLING_CHECK_MASK = 3  # vCPUs sharing our CPU every 4 passes (~5 us)
RUNQUEUE_CHECK_MASK = 7  # others' tasks every 8 passes (~10 us; ~1.5 us a look)


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


# ppoll(2) through ctypes on preallocated structs: a timed block that allocates nothing per wake
# (select.select and zmq.Poller build lists); ctypes drops the GIL around it.
_ppoll = ctypes.CDLL(None, use_errno=True).ppoll
_ppoll.argtypes = (ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p)
POLLIN = 1
_SPACE, _ZERO, _NINE = ord(" "), ord("0"), ord("9")


class Recorder:
    """Fixed-capacity wake samples: latency, path and halt duration, filled in place."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.latency_ns = array("q", bytes(8 * capacity))
        self.halt_ns = array("q", bytes(8 * capacity))
        self.path = bytearray(capacity)
        self.n = 0

    def payload(self) -> dict:
        n = self.n
        return {
            "latency_ns": self.latency_ns[:n].tobytes(),
            "halt_ns": self.halt_ns[:n].tobytes(),
            "path": bytes(self.path[:n]),
        }


class VCpu:
    def __init__(
        self,
        words: memoryview,
        index: int,
        kick: zmq.Socket,
        host: HostPolicy,
        guest: GuestHaltPoll | None,
        idle_poll: bool,
        costs: Costs,
        recorder: Recorder,
        safety_timeout_ms: int,
        siblings: tuple[int, ...] = (),
        runqueue: RunQueue | None = None,
    ) -> None:
        self.w = words
        self.kick = kick
        self.host = host
        self.guest = guest
        self.idle_poll = idle_poll
        self.costs = costs
        self.spends = any(costs)  # the raw emulator's wake path stays as it was
        self.rec = recorder
        self.safety_ns = safety_timeout_ms * 1_000_000
        kick.setsockopt(zmq.RCVTIMEO, safety_timeout_ms)
        self.kick_buf = bytearray(8)  # kicks land here: one frame, no allocation per wake
        self.pollfd = _PollFd(kick.getsockopt(zmq.FD), POLLIN, 0)
        self.timeout = _Timespec()
        self.pollfd_p, self.timeout_p = ctypes.addressof(self.pollfd), ctypes.addressof(self.timeout)
        b = abi.slot_base(index)
        self.i_seq = b + abi.IRQ_SEQ
        self.i_inject = b + abi.INJECT_NS
        self.i_ack = b + abi.IRQ_ACK
        self.i_state = b + abi.STATE
        self.i_deadline = b + abi.TIMER_DEADLINE_NS
        self.i_param_gen = b + abi.PARAM_GEN
        self.i_params = tuple(
            b + off
            for off in (abi.HALT_POLL_NS, abi.HALT_POLL_NS_GROW, abi.HALT_POLL_NS_GROW_START, abi.HALT_POLL_NS_SHRINK)
        )
        self.c = {name: b + off for name, off in abi.C.items()}
        self.h = {name: b + off for name, off in abi.HIST.items()}
        self.i_ops = self.c["ops"]
        self.h_wake_poll = self.h["wake_latency_poll_hist"]
        self.h_wake_block = self.h["wake_latency_block_hist"]
        # Slot bases of the other vCPUs pinned to our CPU: if one of them is runnable, it is
        # waiting for this core, which is exactly when the kernel sets need_resched().
        self.siblings = tuple(abi.slot_base(i) for i in siblings)
        self.runqueue = runqueue
        self.ack = words[self.i_ack]
        self.deadline = 0
        self.hit_ns = 0  # when _spin saw the interrupt
        self.stop_ns = 0  # when a poll _spin ended as PREEMPTED stopped
        self.off_cpu = False  # ...and whether another task had the CPU since (not a sibling's wish)
        self.nivcsw = 0
        self.settled_ns = 0  # idle(): the guest's way from its ISR ends no earlier than this
        # Our time runnable but waiting for the CPU across a block (schedstat's run_delay): the
        # scheduler's part of a wake, which the kernel's vCPU waits out too (_resumed).
        self.schedstat = -1
        if costs.resume_ns or costs.timer_resume_ns:
            self.schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        self.schedstat_bufs = [bytearray(96)]
        self.run_delay = 0
        self.param_gen = -1
        self._load_params()

    # --- live parameters -------------------------------------------------------------
    def _load_params(self) -> None:
        w = self.w
        self.param_gen = w[self.i_param_gen]
        self.host.set_params(*(w[i] for i in self.i_params))

    # --- the guest's timer -------------------------------------------------------------
    def arm_timer(self, deadline_ns: int) -> None:
        """The guest's wrmsr to IA32_TSC_DEADLINE: an exit round trip, spent before the deadline runs."""
        spin_ns(self.costs.arm_ns)
        self.deadline = deadline_ns
        self.w[self.i_deadline] = deadline_ns

    # --- pending checks ----------------------------------------------------------------
    def _pending(self) -> int:
        if self.w[self.i_seq] != self.ack:
            return IRQ
        if self.deadline and time.monotonic_ns() >= self.deadline:
            return TIMER
        if self.w[abi.H_STOP]:
            return STOPPED
        return NONE

    def _spin(self, until_ns: int, watch_preempt: bool) -> int:
        """Busy-poll the pending word and the armed deadline until one holds or time is up."""
        w = self.w
        i_seq = self.i_seq
        deadline = self.deadline
        now = time.monotonic_ns
        last = now()
        n = 0
        ack = self.ack
        inner = range(LOOKS)
        rq = self.runqueue if watch_preempt else None
        while True:
            # Tight inner loop on the pending word alone; the clock once per pass.
            for _ in inner:
                if w[i_seq] != ack:
                    self.hit_ns = now()
                    return IRQ
            t = now()
            if deadline and t >= deadline:
                return TIMER
            if t >= until_ns:
                return EXPIRED
            if watch_preempt:
                if t - last > PREEMPT_GAP_NS and self._switched():
                    self.stop_ns, self.off_cpu = last, True
                    return PREEMPTED
                if self.siblings and not n & SIBLING_CHECK_MASK and self._sibling_runnable():
                    self.stop_ns, self.off_cpu = t, False
                    return PREEMPTED
                if rq is not None and not n & RUNQUEUE_CHECK_MASK and rq.others_runnable():
                    if not rq.device_awake() and not self.siblings:
                        self.stop_ns, self.off_cpu = t, False
                        return PREEMPTED
                    # The count may be the kernel's threads doing the device's write elsewhere, or,
                    # where vCPUs share this core, their kick threads gone to sleep but still queued
                    # here (vcpu/process.py): ask this CPU itself. A yield hands it to a task waiting
                    # here; none, it returns at once, and a sleeper still queued is dequeued.
                    os.sched_yield()
                    last, t = t, now()
                    if t - last > PREEMPT_GAP_NS and self._switched():
                        self.stop_ns, self.off_cpu = last, True
                        return PREEMPTED
            last = t
            n += 1
            if not n & STOP_CHECK_MASK and w[abi.H_STOP]:
                return STOPPED

    def _run_delay(self) -> int:
        """schedstat's second field: ns this thread spent runnable, waiting for a CPU."""
        n = os.preadv(self.schedstat, self.schedstat_bufs, 0)
        buf = self.schedstat_bufs[0]
        i = buf.find(_SPACE, 0, n) + 1
        value = 0
        while i < n and _ZERO <= buf[i] <= _NINE:
            value = value * 10 + buf[i] - _ZERO
            i += 1
        return value

    def _switched(self) -> bool:
        """Did the scheduler switch us out for another task since the poll began?"""
        nivcsw = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
        if nivcsw == self.nivcsw:
            return False
        self.nivcsw = nivcsw
        return True

    def _sibling_runnable(self) -> bool:
        w = self.w
        for b in self.siblings:
            if w[b + abi.STATE] != abi.BLOCKED or w[b + abi.IRQ_SEQ] != w[b + abi.IRQ_ACK]:
                return True
        return False

    def _block(self) -> tuple[int, bool]:
        """Drain stale kicks, re-check, then sleep in the socket. Returns (why, waited).

        The caller stored BLOCKED; the fence puts that store before the re-check's load of
        irq_seq, pairing with the device's fence between its bump and its read of our state."""
        w, kick, c, buf = self.w, self.kick, self.c, self.kick_buf
        abi.full_fence()
        while kick.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            kick.recv_into(buf)
        why = self._pending()
        if why:
            return why, False  # kvm_vcpu_block's first check: never scheduled out
        while True:
            if not self._sleep():  # the deadline, or the safety net: a wake nobody kicked us for
                why = self._pending()
                if why:
                    event = w[self.i_inject] if why == IRQ else self.deadline
                    if time.monotonic_ns() - event > self.safety_ns:
                        self._lost_or_late()
                    return why, True
                continue
            why = self._pending()
            if why:
                w[self.i_state] = abi.RUNNING  # no more kicks: one now would hit our next poll
                w[c["halt_wakeup"]] += 1
                return why, True
            w[c["spurious_wakeup"]] += 1

    def _sleep(self) -> bool:
        """Block until a kick (True), or until the armed deadline or the safety net (False).

        With a deadline armed the wait ends on this CPU's own hrtimer, as KVM's LAPIC timer (a
        host hrtimer where the vCPU runs) wakes a blocked vCPU: ppoll on the socket's fd, timed
        out at the deadline. The device does not kick for timer expiries: its kick from the other
        CPU, through two ZeroMQ I/O threads, made a blocked timer wake ~14 us slower here (README)."""
        kick = self.kick
        if not self.deadline:
            try:
                kick.recv_into(self.kick_buf)
                return True
            except zmq.Again:
                return False
        ts = self.timeout
        until = min(self.deadline, time.monotonic_ns() + self.safety_ns)  # the safety net holds here too
        # ZeroMQ's fd is edge-like: wait on it only after EVENTS said nothing is queued.
        while not kick.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            left = until - time.monotonic_ns()
            if left <= 0:
                return False
            ts.tv_sec, ts.tv_nsec = divmod(left, 1_000_000_000)
            _ppoll(self.pollfd_p, 1, self.timeout_p, None)
        kick.recv_into(self.kick_buf)
        return True

    def _lost_or_late(self) -> None:
        """An interrupt pending for longer than the safety net, and no kick seen for it.

        Under heavy overcommit our I/O thread can be starved of CPU for that long, leaving the
        kick in the socket: that wake is late, not lost. Only a kick that never comes is lost.
        """
        c = self.c
        try:
            self.kick.recv_into(self.kick_buf)
            self.w[c["late_wakeup"]] += 1
        except zmq.Again:
            self.w[c["lost_wakeup"]] += 1

    # --- one halt that reached the host (kvm_vcpu_halt) ----------------------------------
    def _halt(self) -> tuple[int, int, int, int]:
        """Returns (why, path, when the host saw the wake: the guest resumes after _enter, and when
        the kernel's would have: the halt's end as the policies are shown it)."""
        w, c, h = self.w, self.c, self.h
        now = time.monotonic_ns
        w[c["halt_exits"]] += 1
        spin_ns(self.costs.exit_ns)
        if w[self.i_param_gen] != self.param_gen:
            self._load_params()
        budget = self.host.begin_halt()
        start = poll_end = now()
        why = NONE
        off_cpu = False
        if budget:
            w[self.i_state] = abi.POLLING
            # Baseline for the preemption check: only switches during this poll count.
            self.nivcsw = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
            why = self._spin(start + budget, True)
            if why == IRQ:
                poll_end = self.hit_ns
            elif why == PREEMPTED:  # a failed poll, as kvm_vcpu_can_poll() makes it; counted apart
                poll_end, off_cpu = self.stop_ns, self.off_cpu
                w[c["halt_poll_preempted"]] += 1
            else:
                poll_end = now()
            if why >= EXPIRED:
                why = NONE
        waited = False
        cur = seen = poll_end
        if not why:
            w[self.i_state] = abi.BLOCKED
            if self.schedstat >= 0:
                self.run_delay = self._run_delay()
            why, waited = self._block()
            cur = seen = now()
            if waited:
                seen = self._resumed(why, poll_end, cur)
            elif off_cpu:
                # The kernel's vCPU would have slept from the poll's end while the other task ran,
                # and been woken for this event: a wait, and a failed poll, as there.
                w[self.i_state] = abi.RUNNING
                w[c["halt_wakeup"]] += 1
                waited = True
            if waited:
                wait_ns = cur - poll_end
                w[c["halt_wait_ns"]] += wait_ns
                w[h["halt_wait_hist"] + abi.hist_bucket(wait_ns)] += 1
        if budget:
            # KVM counts a poll successful when the vCPU never got scheduled out, even if
            # the event landed just after the loop (update_halt_poll_stats).
            poll_ns = poll_end - start
            w[c["halt_attempted_poll"]] += 1
            if not waited:
                w[c["halt_successful_poll"]] += 1
                w[c["halt_poll_success_ns"]] += poll_ns
                w[h["halt_poll_success_hist"] + abi.hist_bucket(poll_ns)] += 1
            else:
                w[c["halt_poll_fail_ns"]] += poll_ns
                w[h["halt_poll_fail_hist"] + abi.hist_bucket(poll_ns)] += 1
        # Every wakeup is valid on x86 (vcpu_valid_wakeup), so halt_poll_invalid stays 0 as in KVM.
        self.host.end_halt(seen - start, waited, True)
        w[c["halt_poll_ns"]] = self.host.halt_poll_ns
        # As KVM counts it: a poll hit needs a poll; with no budget every wake is the block path.
        return why, PATH_POLL if budget and not waited else PATH_BLOCK, cur, seen

    def _resumed(self, why: int, poll_end: int, cur: int) -> int:
        """When the kernel's vCPU would have run again after this blocked wake: its interrupt plus
        the kernel's wake (the profile's) plus any time we waited for the CPU (another task had it:
        the kernel's vCPU waits that out too), or `cur` if ours was no slower. Our kick crosses two
        ZeroMQ I/O threads (DESIGN §3), tens of us more than the kernel's wake here; a policy shown
        that transport would decide on it (an io halt of 150 us is the kernel's 190 and our 220,
        either side of the 200 us default cap). The latency recorded stays ours."""
        k = self.costs
        if why == TIMER:
            at = self.deadline + k.timer_resume_ns if k.timer_resume_ns else cur
        else:
            at = self.w[self.i_inject] + k.resume_ns if k.resume_ns else cur
        if self.schedstat >= 0:
            at += self._run_delay() - self.run_delay
        if poll_end < at < cur:
            self.w[self.c["block_wake_excess_ns"]] += cur - at
            return at
        return cur

    # --- one idle period of the guest ------------------------------------------------------
    def idle(self) -> bool:
        """Wait for the next interrupt or timer as the guest would; False once told to stop."""
        w, c = self.w, self.c
        if w[abi.H_STOP]:  # a guest that never blocks would otherwise never look
            return False
        now = time.monotonic_ns
        t0 = now()
        w[c["idle_periods"]] += 1
        why = NONE
        path = PATH_GUEST_POLL
        if self.idle_poll:
            w[self.i_state] = abi.GUEST_POLLING
            while not why:
                why = self._spin(t0 + 1_000_000_000, False)
                why = NONE if why >= EXPIRED else why
            t = self.hit_ns if why == IRQ else now()
        elif self.guest is not None:
            budget = self.guest.poll_budget()
            if budget:
                w[self.i_state] = abi.GUEST_POLLING
                why = self._spin(t0 + budget, False)
                t = self.hit_ns if why == IRQ else now()
                why = NONE if why >= EXPIRED else why
                w[c["guest_poll_ns"]] += t - t0
                w[c["guest_halt_poll_success" if why else "guest_halt_poll_fail"]] += 1
            if why:
                self.guest.reflect(False, 0)
            else:
                hlt = now()
                why, path, t, seen = self._halt()
                self.guest.reflect(True, seen - hlt)
            w[c["guest_halt_poll_ns"]] = self.guest.poll_limit_ns
        else:
            why, path, t, _ = self._halt()
        w[self.i_state] = abi.RUNNING
        if why == STOPPED:
            return False
        if not self.spends:
            self._wake(t, t0, why, path)
            return True
        t = self._enter(t, path)
        self._wake(t, t0, why, path)
        # The ISR's EOI, and the guest's way on to its next exit, take what the kernel's guest took
        # (calibrated from its ISR to its next halt): our own steps since the ISR are inside that
        # time, as a real guest's instructions are inside the kernel's; settle() spends the rest.
        self.settled_ns = t + (self.costs.timer_eoi_ns if why == TIMER else self.costs.eoi_ns)
        return True

    def settle(self) -> None:
        """Before the guest's next exit (a submit, an arm, a halt): the rest of its way from its last ISR."""
        spin_until(self.settled_ns)

    def _enter(self, t: int, path: int) -> int:
        """Spend what the kernel pays from noticing the wake at `t` to the guest's ISR; returns
        when the guest runs. Our own bookkeeping since `t` is inside that cost, not added to it."""
        k = self.costs
        timer = self.deadline and t >= self.deadline
        if path == PATH_GUEST_POLL:  # the guest was in guest mode: the interrupt kicks it out and in
            ns = k.running_ns
        elif path == PATH_POLL:
            # Our poll read the clock; the kernel's needs its hrtimer's interrupt first: inside timer_entry_ns.
            ns = k.timer_entry_ns if timer else k.entry_ns
        else:
            ns = k.timer_block_entry_ns if timer else k.block_entry_ns
        if not ns:
            return t
        spin_until(t + ns)
        return t + ns

    def _wake(self, t: int, t0: int, why: int, path: int) -> None:
        """Consume what woke us, exactly once, and record the sample."""
        w, c = self.w, self.c
        if why == IRQ:
            seq = w[self.i_seq]
            n = seq - self.ack
            self.ack = seq
            w[self.i_ack] = seq
            w[c["irq_delivered"]] += 1
            if n > 1:
                w[c["irq_coalesced"]] += n - 1
            event = w[self.i_inject]
        else:
            event = 0
        if self.deadline and t >= self.deadline:
            # The guest timer expired: its latency counts from the deadline itself.
            event = self.deadline
            if why == TIMER:
                w[c["timer_local"]] += 1
            self.deadline = 0
            w[self.i_deadline] = 0
        w[self.i_ops] += 1
        # An injection that coalesced after we noticed the first one was served at once.
        lat = t - event if t > event else 0
        bucket = lat.bit_length()  # abi.hist_bucket, inlined: this runs on every wake
        if bucket >= abi.HIST_BUCKETS:
            bucket = abi.HIST_BUCKETS - 1
        w[(self.h_wake_block if path == PATH_BLOCK else self.h_wake_poll) + bucket] += 1
        rec = self.rec
        i = rec.n
        if i < rec.capacity:
            rec.latency_ns[i] = lat
            rec.halt_ns[i] = event - t0 if event > t0 else 0
            rec.path[i] = path
            rec.n = i + 1
        else:
            w[c["samples_dropped"]] += 1
