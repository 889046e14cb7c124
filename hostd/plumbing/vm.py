"""One VM-like process group: segment, device, vCPUs; started, measured, stopped, torn down.

`close()` is the one teardown path and runs on every exit (normal, error, signal, a dead
child): it kills what still runs, reaps it, unlinks the segment and removes the run dir (and the default
io file's directory, which lives on a disk-backed filesystem, not in the run dir: see spec.default_io_dir).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing import shared_memory

import msgpack
import psutil
import zmq

from hostd.plumbing import hoststats, signals
from hostd.plumbing.backend import KVM_UNKNOWN
from hostd.plumbing.neighbour import baseline_ns
from hostd.plumbing.spec import VmSpec, default_io_dir, fs_type
from vcpu import abi
from vcpu.kvm import kvm_trace

READY_TIMEOUT_S = 20.0
REPORT_TIMEOUT_S = 10.0
EXIT_GRACE_S = 2.0
NEIGHBOUR_BASELINE_NS = 300_000_000  # the neighbours alone, before the vCPUs run: at least this long

# What a child is. Only vCPUs have an index; the neighbours are ours but no part of the VM.
VCPU, DEVICE, NEIGHBOUR = "vcpu", "device", "neighbour"


class ChildDied(RuntimeError):
    """A process of the group exited on its own; the message names it."""


@dataclass
class Child:
    name: str  # "vcpu0", "irqsrc", "neighbour1" (the neighbour on CPU 1)
    proc: subprocess.Popen
    index: int | None = None  # a vCPU's index
    role: str = VCPU  # VCPU, DEVICE or NEIGHBOUR
    cpu: int | None = None  # a neighbour's CPU

    @property
    def pid(self) -> int:
        return self.proc.pid

    def death(self) -> str | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        return f"{self.name} (pid {self.pid}) died: {how}"


@dataclass
class Window:
    """The measurement window: host stats per vCPU and idle-state entries per CPU, at start."""

    t0_ns: int
    tasks: dict[int, hoststats.TaskStats]
    idle: dict[int, dict[str, int]]
    busy_s: float = 0.0  # the VM's CPUs' busy time and our own CPU time, at the start
    own: dict[int, float] = field(default_factory=dict)  # hoststats.own_cpu() at the start
    t1_ns: int = 0
    delta: dict[int, hoststats.TaskStats] = field(default_factory=dict)
    idle_delta: dict[int, dict[str, int]] = field(default_factory=dict)
    foreign_load: float = 0.0
    # The neighbours' CPU time and run-queue wait, summed: at the start, then over the window.
    neighbour: hoststats.TaskStats = field(default_factory=hoststats.TaskStats)


@dataclass
class NeighbourAlone:
    """The neighbours' baseline: their CPU time over a whole number of periods with the VM's vCPUs
    started but not yet running (blocked, waiting for H_RUN)."""

    stats: hoststats.TaskStats
    window_ns: int

    @property
    def cores(self) -> float:
        """Their CPU over the baseline in cores, summed over the neighbours, to 4 places."""
        return round(self.stats.cpu_ns / max(1, self.window_ns), 4)


class Vm:
    def __init__(self, spec: VmSpec, pin_host: bool = True) -> None:
        """pin_host: keep the calling process on the device CPU while the VM runs (hostd run);
        a daemon owning several VMs places itself."""
        self.spec = spec
        self.pin_host = pin_host
        self.children: list[Child] = []
        self.reports: dict[str, dict] = {}
        self.window: Window | None = None
        self.started_ns = 0
        self._shm: shared_memory.SharedMemory | None = None
        self.words: memoryview | None = None
        self.run_dir = ""
        self.io_dir = ""  # the default io file's private directory, made by start() (io only)
        self._ctx = zmq.Context()
        self._ctl: zmq.Socket | None = None
        self._kicks: list[zmq.Socket] = []
        self._device: zmq.Socket | None = None
        self._closed = False
        self._affinity = os.sched_getaffinity(0)
        self.neighbour_alone: NeighbourAlone | None = None
        self._ready: set[str] = set()  # children that said they are ready

    # --- start ----------------------------------------------------------------------------
    def start(self) -> None:
        spec = self.spec
        spec.shm = abi.segment_name(os.getpid())
        with signals.deferred():  # each exists only once close() can see it
            self.run_dir = tempfile.mkdtemp(prefix=abi.run_dir_prefix(spec.vm, os.getpid()))  # mode 0700
            if spec.real_io() and (spec.io_file is None or spec.io_dir is not None):
                # The default io file: in a directory of its own (mode 0700) on a disk-backed
                # filesystem, named by owner as the run dir is, so the orphan sweep finds it too.
                self.io_dir = tempfile.mkdtemp(prefix=abi.run_dir_prefix(spec.vm, os.getpid()),
                                               dir=default_io_dir())
                spec.io_dir, spec.io_file = self.io_dir, os.path.join(self.io_dir, "disk.img")
            try:
                self._shm = shared_memory.SharedMemory(spec.shm, create=True, size=abi.segment_size(spec.vcpus))
            except BrokenPipeError:
                # Made, then not registered: multiprocessing's resource tracker, a child of this same
                # interpreter, did not start (one this user may not run). Ours to remove, and to say.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join("/dev/shm", spec.shm))
                raise ChildDied(f"cannot start multiprocessing's resource tracker with {sys.executable}") from None
        w = self.words = self._shm.buf.cast("Q")
        w[abi.H_MAGIC] = abi.MAGIC
        w[abi.H_NVCPUS] = spec.vcpus
        p = spec.policy
        for i in range(spec.vcpus):
            b = abi.slot_base(i)
            w[b + abi.HALT_POLL_NS] = p.halt_poll_ns
            w[b + abi.HALT_POLL_NS_GROW] = p.halt_poll_ns_grow
            w[b + abi.HALT_POLL_NS_GROW_START] = p.halt_poll_ns_grow_start
            w[b + abi.HALT_POLL_NS_SHRINK] = p.halt_poll_ns_shrink
            w[b + abi.RATE_MILLIHZ] = round(spec.tick_hz * 1000)
            w[b + abi.PARAM_GEN] = 1
        spec.io_fs = fs_type(spec.io_file) if spec.real_io() else None
        if spec.backend == "kvm":
            # One eventfd per vCPU: that VM's irqfd, written by the device process, which thereby
            # injects into a VM it never opened. Children inherit them under the same numbers.
            spec.irqfds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(spec.vcpus)]
        if spec.workload in ("io", "rr"):
            # One submit eventfd per vCPU (DESIGN §3 Submit): the guest's notify, the device's wait.
            spec.submit_fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(spec.vcpus)]
        with open(os.path.join(self.run_dir, abi.SPEC_FILE), "wb") as f:
            f.write(msgpack.packb(spec.to_wire()))
        self._ctl = self._ctx.socket(zmq.PULL)
        self._ctl.bind(abi.control_endpoint(self.run_dir))
        irqfds, submit_fds = spec.irqfds or [], spec.submit_fds or []
        try:
            self._spawn("irqsrc", ["-m", "irqsrc", "--run-dir", self.run_dir], role=DEVICE,
                        pass_fds=irqfds + submit_fds)
            for i in range(spec.vcpus):
                self._spawn(f"vcpu{i}", ["-m", "vcpu", "--run-dir", self.run_dir, "--index", str(i)], i,
                            pass_fds=irqfds[i:i + 1] + submit_fds[i:i + 1])
        finally:
            for fd in irqfds + submit_fds:  # the children hold their own now
                os.close(fd)
        if self.pin_host and spec.device_cpu is not None:
            # hostd itself stays on the housekeeping CPU, off the vCPUs' cores.
            psutil.Process().cpu_affinity([spec.device_cpu])
        self._await_ready()
        self._device = self._push(abi.device_endpoint(self.run_dir))
        self._kicks = [self._push(abi.kick_endpoint(self.run_dir, i)) for i in range(spec.vcpus)]
        if spec.neighbour is not None:
            self._start_neighbours()
        if spec.vcpu_cpus is not None:
            self._check_pinning()
        if spec.neighbour is not None:
            self._neighbours_baseline()

    def _spawn(self, name: str, argv: list[str], index: int | None = None, pass_fds=(), role: str = VCPU,
               cpu: int | None = None) -> None:
        with signals.deferred():  # a child runs only once close() can see it
            try:
                proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, pass_fds=pass_fds)
            except OSError as exc:  # e.g. an interpreter this user may not run: one line, not a traceback
                raise ChildDied(f"cannot start {name}: {exc.strerror}: {sys.executable}") from None
            self.children.append(Child(name, proc, index, role, cpu))

    def _start_neighbours(self) -> None:
        """One neighbour per vCPU CPU, started once the VM's own processes are up (so it never slows
        their start), the vCPUs blocked waiting for H_RUN."""
        n = self.spec.neighbour
        for cpu in self.spec.neighbour_cpus():
            self._spawn(f"neighbour{cpu}", ["-m", "hostd.plumbing.neighbour", "--cpu", str(cpu),
                                            "--duty-ns", str(n.duty_ns), "--period-ns", str(n.period_ns),
                                            "--name", f"{self.spec.vm}/neighbour{cpu}", "--run-dir", self.run_dir],
                        role=NEIGHBOUR, cpu=cpu)
        self._await_ready()
        # Each said ready through ZeroMQ, whose threads it then ends: once they are gone, its CPU
        # time is its spin's alone (a thread that ends takes its run time out of /proc/PID/task).
        deadline = time.monotonic() + READY_TIMEOUT_S
        while any(len(os.listdir(f"/proc/{c.pid}/task")) > 1 for c in self.neighbours()):
            if time.monotonic() > deadline:
                raise TimeoutError("timed out waiting for the neighbours to start spinning")
            time.sleep(0.002)
            self.check_children()

    def _neighbours_baseline(self) -> None:
        """The CPU the neighbours get alone on their CPUs: a whole number of their periods before
        the vCPUs run (they are blocked on their kick sockets until go())."""
        length = baseline_ns(self.spec.neighbour.period_ns, NEIGHBOUR_BASELINE_NS)
        t0, stats0 = time.monotonic_ns(), self.neighbour_stats()
        while (left := t0 + length - time.monotonic_ns()) > 0:
            time.sleep(min(0.05, left / 1e9))
            self.check_children()
        self.neighbour_alone = NeighbourAlone(self.neighbour_stats() - stats0, time.monotonic_ns() - t0)

    def neighbours(self) -> list[Child]:
        return [c for c in self.children if c.role == NEIGHBOUR]

    def neighbour_stats(self) -> hoststats.TaskStats:
        """The neighbours' CPU time and run-queue wait so far, summed (/proc/PID/task/*/schedstat)."""
        total = hoststats.TaskStats()
        for c in self.neighbours():
            total = total + hoststats.process_stats(c.pid)
        return total

    def _push(self, endpoint: str) -> zmq.Socket:
        s = self._ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, 0)
        abi.connect(s, endpoint)
        return s

    def _recv_ctl(self, deadline: float, watch: set[str] | None = None) -> dict:
        """Next control message; raises ChildDied if a watched child exits while we wait."""
        while True:
            if self._ctl.poll(100):
                return msgpack.unpackb(self._ctl.recv())
            try:
                self.check_children(watch)
            except ChildDied:
                if self._ctl.poll(200):  # its last message may still be in flight
                    continue
                raise
            if time.monotonic() > deadline:
                raise TimeoutError("timed out waiting for the VM's processes")

    def _await_ready(self) -> None:
        """Every child started so far has said it is ready."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = {c.name for c in self.children} - self._ready
        while waiting:
            msg = self._recv_ctl(deadline)
            if msg.get("kind") == "ready":
                self._ready.add(_who(msg))
                waiting.discard(_who(msg))

    def _check_pinning(self) -> None:
        """Each child's main thread on its CPU (the children place their I/O threads themselves)."""
        for c in self.children:
            cpu = (self.spec.vcpu_cpus[c.index] if c.role == VCPU else c.cpu if c.role == NEIGHBOUR
                   else self.spec.device_cpu)
            if os.sched_getaffinity(c.pid) != {cpu}:
                os.sched_setaffinity(c.pid, {cpu})

    # --- run ------------------------------------------------------------------------------
    def go(self) -> None:
        """Start the guests and open the measurement window."""
        cpus = self._cpus()
        self.window = Window(time.monotonic_ns(), self._task_stats(), hoststats.cpuidle_usage(cpus),
                             hoststats.cpu_busy_s(cpus), hoststats.own_cpu(self.child_pids()),
                             neighbour=self.neighbour_stats())
        self.started_ns = self.window.t0_ns
        self.words[abi.H_RUN] = 1
        for k in self._kicks:
            k.send(b"\x00")
        self._device.send(msgpack.packb((abi.REQ_GO,)))

    def _cpus(self) -> list[int]:
        if self.spec.vcpu_cpus is None:
            return sorted(os.sched_getaffinity(0))
        return sorted(set(self.spec.vcpu_cpus) | {self.spec.device_cpu})

    def _task_stats(self) -> dict[int, hoststats.TaskStats]:
        cpus = self.spec.vcpu_cpus
        return {
            c.index: hoststats.process_stats(c.pid, None if cpus is None else cpus[c.index])
            for c in self.children
            if c.role == VCPU
        }

    def check_children(self, names: set[str] | None = None) -> None:
        for c in self.children:
            why = c.death() if names is None or c.name in names else None
            if why:
                raise ChildDied(why)

    def vcpu_pids(self) -> list[int]:
        return [c.pid for c in self.children if c.role == VCPU]

    def device(self) -> Child:
        return next(c for c in self.children if c.role == DEVICE)

    def child_pids(self) -> list[int]:
        """Every process of ours, the neighbours included: none of them is a foreign load."""
        return [c.pid for c in self.children]

    def counters(self, index: int) -> dict[str, int]:
        b = abi.slot_base(index)
        w = self.words
        out = {name: w[b + off] for name, off in abi.C.items()}
        out["irq_injected"] = w[b + abi.IRQ_SEQ]
        if self.spec.backend == "kvm":
            out.update(dict.fromkeys(KVM_UNKNOWN))
            # The guest's ISR count stands for the ack the kernel keeps to itself.
            out["irq_pending"] = w[b + abi.IRQ_SEQ] - out["irq_delivered"]
        else:
            out["irq_pending"] = w[b + abi.IRQ_SEQ] - w[b + abi.IRQ_ACK]
        for name, off in abi.HIST.items():
            out[name] = list(w[b + off : b + off + abi.HIST_BUCKETS])
        return out

    def submitted(self, index: int) -> int:
        """The submits vCPU `index` put in its ring (the ring's head)."""
        return self.words[abi.slot_base(index) + abi.RING_HEAD]

    def set_param(self, name: str, value: int) -> None:
        """Live module parameter: used from the next halt on (the vCPU sees PARAM_GEN move)."""
        abi.set_param(self.words, self.spec.vcpus, name, value)

    # --- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Close the window, stop the device, then the vCPUs, and collect every report."""
        win = self.window
        if win is not None:
            win.t1_ns = time.monotonic_ns()
            win.foreign_load = hoststats.foreign_load(
                hoststats.cpu_busy_s(self._cpus()) - win.busy_s,
                hoststats.own_cpu_s_since(win.own, self.child_pids()),
                (win.t1_ns - win.t0_ns) / 1e9,
            )
            end = self._task_stats()
            win.delta = {i: end[i] - win.tasks[i] for i in end}
            win.neighbour = self.neighbour_stats() - win.neighbour
            idle_end = hoststats.cpuidle_usage(self._cpus())
            win.idle_delta = {
                cpu: {s: n - win.idle.get(cpu, {}).get(s, 0) for s, n in states.items()}
                for cpu, states in idle_end.items()
            }
        # The neighbours end with the window (nobody waits for a report of theirs); one that died
        # before it closed fails the run, as a dead vCPU does.
        self.check_children({c.name for c in self.neighbours()})
        for c in self.neighbours():
            c.proc.terminate()
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        # vCPUs first: a vCPU blocked on a deadline must never wait on a device that has
        # stopped firing (its safety net would call that a lost wakeup). The tallies are read
        # from shared memory once both sides have stopped, so the order cannot skew them.
        self.words[abi.H_STOP] = 1
        for k in self._kicks:
            k.send(b"\x00")
        self._collect({f"vcpu{i}" for i in range(self.spec.vcpus)}, deadline)
        self._device.send(msgpack.packb((abi.REQ_STOP,)))
        self._collect({"irqsrc"}, deadline)
        for c in self.children:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    def _collect(self, names: set[str], deadline: float) -> None:
        while missing := names - self.reports.keys():
            msg = self._recv_ctl(deadline, missing)
            if msg.get("kind") == "report":
                self.reports[_who(msg)] = msg

    # --- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        alive = [c.proc for c in self.children if c.proc.poll() is None]
        for p in alive:
            p.terminate()
        deadline = time.monotonic() + EXIT_GRACE_S
        for p in alive:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._ctx.destroy(linger=0)
        if self.spec.backend == "kvm":
            kvm_trace.remove_stale()  # a killed vCPU's trace instance (its own close never ran)
        if self.words is not None:
            self.words.release()
        if self._shm is not None:
            self._shm.close()
            # FileNotFoundError: someone removed it under us, gone either way. BrokenPipeError: the
            # segment is unlinked, then multiprocessing's resource tracker, a child of the same
            # interpreter, could not be told (it failed to start with it).
            with contextlib.suppress(FileNotFoundError, BrokenPipeError):
                self._shm.unlink()
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.io_dir:
            shutil.rmtree(self.io_dir, ignore_errors=True)
        if self.pin_host:
            os.sched_setaffinity(0, self._affinity)

    def __enter__(self) -> "Vm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _who(msg: dict) -> str:
    """The child a control message is from, by its Child.name."""
    who = msg["who"]
    if who == "irqsrc":
        return "irqsrc"
    if who == "neighbour":
        return f"neighbour{msg['cpu']}"
    return f"vcpu{msg['index']}"
