"""The device process: serve guest requests and fire timers and ticks, on its own CPU.

It sleeps in select() on the request socket until shortly before the next due event, then
spins the rest of the way, so timers fire within a few microseconds of their deadline
(the process timer slack is set to 1 ns for the sleeping part).
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

from irqsrc.inject import Injector
from irqsrc.irqfd import IrqfdInjector
from irqsrc.sources import TickSource, TimerSource, WriteDevice
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
        self.timers = TimerSource()
        self.ticks = TickSource(words, n) if spec["workload"] == "idle" else None
        # rr's answers are io's modelled completions: spec.io_service_ns carries --rr-service-us.
        # The default disk file lives in the run's directory, which hostd removes even after a SIGKILL.
        disk = spec["io_file"] or os.path.join(run_dir, "disk.img")
        self.io = WriteDevice(disk, spec["io_service_ns"]) if spec["workload"] in ("io", "rr") else None
        self.io_queue: collections.deque[int] = collections.deque()
        # compare's bare-metal reference: the same writes back to back, no vCPU in the loop.
        self.bare_io = bool(spec["extra"].get("bare_io"))
        self.bare_writes = 0
        self.bare_ns = [0, 0]  # first write's start, last write's end: the rate's own window
        self.running = False
        self.stopping = False
        self.greeted: set[int] = set()

    def _handle(self, msg: list) -> None:
        kind = msg[0]
        if kind == abi.REQ_ARM:
            self.timers.arm(msg[1], msg[2])
        elif kind == abi.REQ_IO:
            self.io_queue.append(msg[1])
        elif kind == abi.REQ_GO:
            self.running = True
            if self.ticks is not None:
                self.ticks.start(time.monotonic_ns())
        elif kind == abi.REQ_STOP:
            self.stopping = True
        elif kind == abi.REQ_HELLO:
            self.greeted.add(msg[1])

    def await_greetings(self, n: int) -> None:
        """Ready only once every vCPU's request path is proven to reach us."""
        self.req.setsockopt(zmq.RCVTIMEO, abi.HELLO_TIMEOUT_MS)
        while len(self.greeted) < n:
            self._handle(msgpack.unpackb(self.req.recv()))
        self.req.setsockopt(zmq.RCVTIMEO, -1)

    def _drain(self) -> None:
        req = self.req
        while req.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._handle(msgpack.unpackb(req.recv()))

    def _next_event(self) -> int | None:
        times = [t for t in (self.timers.next_ns(), self.ticks.next_ns() if self.ticks else None) if t]
        return min(times) if times else None

    def serve(self) -> None:
        fd = self.req.getsockopt(zmq.FD)
        now = time.monotonic_ns
        inject = self.injector.inject
        while True:
            self._drain()
            if self.stopping:
                return
            if self.bare_io and self.running:
                if not self.bare_writes:
                    self.bare_ns[0] = now()
                self.io.write()
                self.bare_writes += 1
                self.bare_ns[1] = now()
                continue
            if self.io_queue:
                index = self.io_queue.popleft()
                self.io.write()
                inject(index)
                continue
            due = self._next_event() if self.running else None
            t = now()
            if due is None or due - t > SPIN_NS:
                # ZeroMQ's fd is edge-like: safe to wait on only right after EVENTS said empty.
                timeout = None if due is None else (due - t - SPIN_NS) / 1e9
                select.select([fd], [], [], timeout)
                continue
            while now() < due:
                pass
            t = now()
            for index in self.timers.pop_due(t):
                inject(index, False)  # the vCPU's own hrtimer wakes it (vcpu/halt.py _sleep)
            if self.ticks is not None:
                for index in self.ticks.pop_due(t):
                    inject(index)

    def report(self) -> dict:
        return {
            "kind": "report",
            "who": "irqsrc",
            "injected": self.injector.injected,
            "kicks_dropped": self.injector.kicks_dropped,
            "timer_late_ns": self.timers.lateness_ns.payload(),
            "io_service_ns": self.io.service_times_ns.payload() if self.io else b"",
            "bare_writes": self.bare_writes,
            "bare_span_ns": self.bare_ns[1] - self.bare_ns[0],
        }

    def close(self) -> None:
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
