"""The device process: serve the guests' submits and fire the idle tick, on its own CPU.

It sleeps in epoll on the vCPUs' submit eventfds and its control socket together until shortly
before the next tick, then spins the rest of the way, so a tick fires within a few microseconds of
its time (the process timer slack is set to 1 ns for the sleeping part). A submit is an I/O thread's
work in a VMM: take the request from the vCPU's ring, do the write, complete through the vCPU's
interrupt (irqfd on kvm). A guest's TSC deadline is not the device's: as the kernel's LAPIC timer is
an hrtimer of the vCPU's own, the emulated vCPU times its deadline itself (vcpu/emu/halt.py).
"""
from __future__ import annotations

import argparse
import collections
import os
import select
import signal
import sys
import time

import msgpack
import psutil
import zmq

from irqsrc.emu.inject import Injector
from irqsrc.kvm.irqfd import IrqfdInjector
from irqsrc.sources import TickSource, WriteDevice
from irqsrc.submits import SubmitRings
from vcpu import abi

SPIN_NS = 150_000  # the final stretch before an event is spun, not slept


class Device:
    def __init__(self, spec: dict, run_dir: str, words: memoryview, ctx: zmq.Context) -> None:
        n = spec["vcpus"]
        self.req = ctx.socket(zmq.PULL)
        self.req.bind(abi.device_endpoint(run_dir))
        self.kicks = []
        for i in range(n):
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 4096)
            abi.connect(s, abi.kick_endpoint(run_dir, i))
            s.send(b"\x02")  # the greeting, queued until the vCPU has bound
            self.kicks.append(s)
        if spec["backend"] == "kvm":
            self.injector = IrqfdInjector(words, spec["irqfds"])
        else:
            self.injector = Injector(words, self.kicks)
        self.ticks = TickSource(words, n) if spec["workload"] == "idle" else None
        # rr's answers are io's modelled completions: spec.io_service_ns carries --rr-service-us.
        # hostd sets io_file for io (by default on a disk-backed filesystem: spec.default_io_dir);
        # rr's answers are modelled, it never opens a file.
        self.io = WriteDevice(spec["io_file"], spec["io_service_ns"]) if spec["workload"] in ("io", "rr") else None
        self.io_queue: collections.deque[int] = collections.deque()
        self.kernel_counts = spec["backend"] == "kvm"  # the submit eventfds are the kernel's counts
        self.rings = SubmitRings(words, n)
        self.words = words
        words[abi.H_DEVICE_AWAKE] = 1
        # One epoll over the control socket and every submit eventfd: a VMM's I/O thread's wait.
        self.epoll = select.epoll()
        self.epoll.register(self.req.getsockopt(zmq.FD), select.EPOLLIN)
        self.submit_of: dict[int, int] = {}
        for i, fd in enumerate(spec["submit_fds"] or ()):
            os.set_blocking(fd, False)  # read only after epoll said so; never block on a stale signal
            self.epoll.register(fd, select.EPOLLIN)
            self.submit_of[fd] = i
        # compare's bare-metal reference: the same writes back to back, no vCPU in the loop.
        self.bare_io = bool(spec["extra"].get("bare_io"))
        self.bare_writes = 0
        self.bare_ns = [0, 0]  # first write's start, last write's end: the rate's own window
        self.running = False
        self.stopping = False
        self.greeted: set[int] = set()

    def _handle(self, msg: list) -> None:
        kind = msg[0]
        if kind == abi.REQ_GO:
            self.running = True
            if self.ticks is not None:
                self.ticks.start(time.monotonic_ns())
        elif kind == abi.REQ_STOP:
            self.stopping = True
        elif kind == abi.REQ_HELLO:
            self.greeted.add(msg[1])

    def await_greetings(self, n: int) -> None:
        """Ready only once every vCPU's greeting reached us: its control path is connected."""
        self.req.setsockopt(zmq.RCVTIMEO, abi.HELLO_TIMEOUT_MS)
        while len(self.greeted) < n:
            self._handle(msgpack.unpackb(self.req.recv()))
        self.req.setsockopt(zmq.RCVTIMEO, -1)

    def _drain(self) -> None:
        req = self.req
        while req.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._handle(msgpack.unpackb(req.recv()))

    def _wait(self, timeout_s: float) -> None:
        """Sleep until a submit or a control message (or the timeout); take every submit signalled.

        ZeroMQ's fd is edge-like: safe to wait on only once _drain found the socket empty, and it
        then stays readable until the next _drain. So the socket is drained only when epoll names
        it: a ZEVENTS look costs ~2.6 us here, which every write would otherwise pay twice."""
        w = self.words
        w[abi.H_DEVICE_AWAKE] = 0  # a vCPU's poll must not count us as another task wanting a CPU
        events = self.epoll.poll(timeout_s)
        w[abi.H_DEVICE_AWAKE] = 1
        for fd, _ in events:
            index = self.submit_of.get(fd)
            if index is None:
                self._drain()
                continue
            try:
                os.eventfd_read(fd)  # the signal's reset; the ring says how many
            except BlockingIOError:
                continue
            self.rings.take(index, self.io_queue)

    def _serve_kernel_counted(self) -> None:
        """kvm io and rr: each vCPU's submit eventfd is the kernel's count of its guest's port
        writes, and one request is in flight per vCPU (DESIGN §3). So a signalled vCPU's write is
        done and completed first, and its eventfd read after, off the guest's way: the count
        includes that one, and any beyond it (only a protocol bug makes them) are served then.
        None of the emulator's bookkeeping (rings, H_DEVICE_AWAKE) is on this way: from our wake
        to the write was ~8 us more of cold Python than the minimal VMM's blocking read here."""
        poll, submit_of, read = self.epoll.poll, self.submit_of, os.eventfd_read
        write, record, inject = self.io.write, self.io.record, self.injector.inject
        taken = self.rings.taken
        while not self.stopping:
            for fd, _ in poll():
                index = submit_of.get(fd)
                if index is None:
                    self._drain()
                    continue
                took = write()
                inject(index)
                record(took)
                signalled = read(fd)  # >= 1: epoll said so, and we are its only reader
                for _ in range(signalled - 1):
                    took = write()
                    inject(index)
                    record(took)
                taken[index] += signalled

    def serve(self) -> None:
        if self.kernel_counts and self.io is not None and self.ticks is None and not self.bare_io:
            self._drain()
            self._serve_kernel_counted()
            return
        now = time.monotonic_ns
        inject = self.injector.inject
        queue = self.io_queue
        if self.io is not None:
            write, record = self.io.write, self.io.record
        self._drain()
        while True:
            if queue:  # first: between a submit's wake and its write, as little as a VMM's I/O thread
                index = queue.popleft()
                took = write()
                inject(index)
                record(took)
                continue
            if self.stopping:
                return
            if self.bare_io and self.running:
                self._drain()  # it never waits: look for the stop on every write
                if not self.bare_writes:
                    self.bare_ns[0] = now()
                record(write())
                self.bare_writes += 1
                self.bare_ns[1] = now()
                continue
            due = self.ticks.next_ns() if self.running and self.ticks is not None else None
            t = now()
            if due is None or due - t > SPIN_NS:
                self._wait(-1 if due is None else (due - t - SPIN_NS) / 1e9)
                continue
            while now() < due:
                pass
            for index in self.ticks.pop_due(now()):
                inject(index)
            self._drain()  # ticks due this close together never let us wait: look for the stop here

    def report(self) -> dict:
        return {
            "kind": "report",
            "who": "irqsrc",
            "injected": self.injector.injected,
            "kicks_dropped": self.injector.kicks_dropped,
            "submits": self.rings.taken,
            "submit_wait_ns": self.rings.wait_ns.payload(),
            "io_service_ns": self.io.service_times_ns.payload() if self.io else b"",
            "bare_writes": self.bare_writes,
            "bare_span_ns": self.bare_ns[1] - self.bare_ns[0],
        }

    def close(self) -> None:
        self.epoll.close()
        if self.io is not None:
            self.io.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="irqsrc", description="the device process (started by hostd)")
    ap.add_argument("--run-dir", required=True)
    args = ap.parse_args(argv)
    with open(os.path.join(args.run_dir, abi.SPEC_FILE), "rb") as f:
        spec = msgpack.unpackb(f.read())
    abi.child_setup(f"{spec['vm']}/irqsrc")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is hostd's to handle
    abi.set_timer_slack_ns(1)
    if spec["device_cpu"] is not None:
        psutil.Process().cpu_affinity([spec["device_cpu"]])
    words = abi.attach(spec["shm"])
    ctx = zmq.Context()
    ctl = ctx.socket(zmq.PUSH)
    abi.connect(ctl, abi.control_endpoint(args.run_dir))
    device = None
    try:
        device = Device(spec, args.run_dir, words, ctx)
        device.await_greetings(spec["vcpus"])
        ctl.send(msgpack.packb({"kind": "ready", "who": "irqsrc", "pid": os.getpid()}))
        device.serve()
        ctl.send(msgpack.packb(device.report()))
    except Exception as exc:
        sys.stderr.write(f"irqsrc: {type(exc).__name__}: {exc}\n")
        return 1
    finally:
        if device is not None:
            device.close()
        ctx.destroy(linger=2000)
    return 0
