"""Recording the kernel's halt tracepoints into a tracefs text trace: `hostd record`, and `hostd run
--trace-out` for its own vCPU threads (run_trace).

Tracing is left exactly as it was found, on every exit path:
- if no tracefs is mounted, one is mounted at /sys/kernel/tracing and unmounted after;
- the two events are recorded in a private tracing instance (instances/hostd-record-PID, made and
  removed by vcpu/kvm/tracefs.py), which has its own ring buffer, event switches, filters, buffer
  size and tracing_on: whatever the user traces in the top-level buffer or in other instances goes
  on untouched, and removing the instance removes every setting made in it. Without an instance
  (kernels without them) every file written in the top-level buffer (event enable and filter,
  buffer_size_kb, tracing_on, current_tracer) is saved first and written back after (Settings),
  but the user's top-level trace data is consumed with ours.
The file is the events as trace_pipe prints them (tracefs text), after a one-line JSON header
(header(): "# hostd record: {...}") naming the host, the kernel and the kvm module parameters, so
that a replay elsewhere knows what the kernel's adaptive ran with.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import socket
import sys
import threading
from datetime import datetime, timezone

from hostd.plumbing.errors import UsageError
from hostd.trace.module_params import read_sys_params
from hostd.trace.parse import RECORD_HEADER
from vcpu.kvm import tracefs

EVENTS = ("kvm/kvm_vcpu_wakeup", "kvm/kvm_halt_poll_ns")
INSTANCE_PREFIX = "hostd-record-"
_LOST = re.compile(rb"\[LOST (\d+) EVENTS?\]")
_UNNAMED = re.compile(rb"<\.\.\.>-(\d+)(?= )")


class Settings:
    """Writes tracefs files, remembering what each held before its first write, and puts every one
    back (in reverse order) in restore()."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.saved: list[tuple[str, str]] = []
        self._paths: set[str] = set()

    def read(self, rel: str) -> str:
        with open(os.path.join(self.root, rel)) as f:
            return f.read().strip()

    def write(self, rel: str, value: str) -> None:
        if rel not in self._paths:
            self.saved.append((rel, self._restorable(rel, self.read(rel))))
            self._paths.add(rel)
        self._put(rel, value)

    def _put(self, rel: str, value: str) -> None:
        with open(os.path.join(self.root, rel), "w") as f:
            f.write(value + "\n")

    @staticmethod
    def _restorable(rel: str, text: str) -> str:
        """What to write back to restore `text` as read."""
        name = os.path.basename(rel)
        if name == "filter":
            return "0" if text == "none" else text  # "0" clears a filter
        if name == "enable":
            return text.rstrip("*")  # "1*": soft-disabled by a trigger; the switch itself is 0/1
        if name == "buffer_size_kb":
            m = re.search(r"expanded: (\d+)", text)  # "7 (expanded: 1408)": never allocated yet
            return m.group(1) if m else text.split()[0]
        return text

    def restore(self) -> list[str]:
        """Every saved value back; what could not be restored, in words (empty when all went well)."""
        failed = []
        for rel, value in reversed(self.saved):
            try:
                self._put(rel, value)
            except OSError as exc:
                failed.append(f"{rel}: {exc.strerror or exc}")
        self.saved.clear()
        self._paths.clear()
        return failed


def threads(pids: list[int]) -> list[int]:
    """The given thread ids, a process's pid standing for all its threads (events carry thread ids)."""
    out: list[int] = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                tgid = int(re.search(r"^Tgid:\s*(\d+)", f.read(), re.M).group(1))
            out += [int(t) for t in os.listdir(f"/proc/{pid}/task")] if tgid == pid else [pid]
        except (OSError, AttributeError, ValueError):
            raise UsageError(f"--pid: no process or thread {pid}") from None
    return sorted(set(out))


@contextlib.contextmanager
def signals_held():
    """Ctrl-C, SIGTERM and SIGHUP ignored while tracing is being put back: a second Ctrl-C must
    not leave it half restored. (Signal handlers belong to the main thread; elsewhere a no-op.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class Recording:
    """Set up tracing for the two events, stream them into `out`, and undo everything in close().

    Usable from other commands (a run that records its own trace) as a context manager; drain()
    it now and then (the ring buffer holds a few seconds of a busy vCPU)."""

    def __init__(self, out, pids: list[int] | None, buffer_kb: int | None = None, instance: bool = True) -> None:
        self.out = out
        self.pids = pids
        self.buffer_kb = buffer_kb
        self.use_instance = instance
        self.mounted = False
        self.instance_dir: str | None = None
        self.settings: Settings | None = None
        self.fd: int | None = None
        self.halts = self.decisions = self.lost = 0
        self.warnings: list[str] = []
        self.save_error: OSError | None = None  # the last events could not be written
        self._partial = b""  # a line trace_pipe has not finished yet
        self._names: dict[int, bytes] = {}

    def __enter__(self) -> Recording:
        try:
            self.start()
        except BaseException:
            with signals_held():
                self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        with signals_held():
            failed = self.close()
        if failed and exc[0] is None:
            raise UsageError("could not restore tracing: " + "; ".join(failed))

    def start(self) -> None:
        """Mount if needed, make the instance, set filters and switches, open trace_pipe; a failure
        part way leaves the rest to close()."""
        root = tracefs.mount_point()
        if root is None:
            try:
                tracefs.mount()
            except OSError as exc:
                raise UsageError(f"cannot mount tracefs at {tracefs.MOUNT_POINT}: {exc.strerror}") from None
            self.mounted = True
            root = tracefs.MOUNT_POINT
        if not all(os.path.isdir(os.path.join(root, "events", e)) for e in EVENTS):
            raise UsageError("the kvm tracepoints are not in tracefs: is the kvm module loaded?")
        if self.use_instance:
            tracefs.remove_stale(root, INSTANCE_PREFIX, EVENTS)  # a killed recorder's (SIGKILL skips cleanup)
            try:
                self.instance_dir = tracefs.make_instance(root, INSTANCE_PREFIX)
            except OSError as exc:
                raise UsageError(f"cannot create a tracing instance ({exc.strerror}); "
                                 f"--no-instance records in the top-level buffer") from None
            base = self.instance_dir
        else:
            base = root
        s = self.settings = Settings(base)
        s.write("tracing_on", "0")
        if s.read("current_tracer") != "nop":
            s.write("current_tracer", "nop")
        if self.buffer_kb:
            s.write("buffer_size_kb", str(self.buffer_kb))
        if self.use_instance:
            s._put("trace", "")  # a new instance's buffer is empty; the top-level one is the user's
        flt = " || ".join(f"common_pid == {p}" for p in self.pids) if self.pids else None
        for event in EVENTS:
            if flt is not None:
                s.write(f"events/{event}/filter", flt)
            elif s.read(f"events/{event}/filter") != "none":
                s.write(f"events/{event}/filter", "0")
            s.write(f"events/{event}/enable", "1")
        self.fd = os.open(os.path.join(base, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        s.write("tracing_on", "1")

    def drain(self) -> None:
        """Copy whatever the ring buffer holds into the file, whole lines at a time."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not chunk:
                return
            data = self._partial + chunk
            cut = data.rfind(b"\n") + 1
            self._partial = data[cut:]
            if cut:
                self._write(data[:cut])

    def _write(self, chunk: bytes) -> None:
        # tracefs names a task only if it saw the task switch in while recording; a vCPU thread
        # started before us shows as "<...>", so name it from /proc while it is still alive.
        chunk = _UNNAMED.sub(self._name, chunk)
        self.out.write(chunk)
        self.halts += chunk.count(b" kvm_vcpu_wakeup: ")
        self.decisions += chunk.count(b" kvm_halt_poll_ns: ")
        self.lost += sum(int(n) for n in _LOST.findall(chunk))

    def _name(self, m: re.Match) -> bytes:
        pid = int(m.group(1))
        name = self._names.get(pid)
        if name is None:
            try:
                with open(f"/proc/{pid}/comm", "rb") as f:
                    name = f.read().strip() or b"<...>"
            except OSError:
                name = b"<...>"
            self._names[pid] = name
        return name + b"-" + m.group(1)

    def close(self) -> list[str]:
        """Stop, save the rest, and put everything back; idempotent. Returns what could not be put
        back (save_error says if the rest could not be saved)."""
        failed: list[str] = []
        s = self.settings
        if s is not None:
            if self.fd is not None:
                try:
                    s._put("tracing_on", "0")
                    self.drain()
                    if self._partial:
                        self._write(self._partial)
                        self._partial = b""
                except OSError as exc:  # the file may be the culprit (disk full): keep restoring
                    self.save_error = self.save_error or exc
            failed += s.restore()
            self.settings = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.instance_dir is not None:
            try:
                tracefs.remove_instance(self.instance_dir, EVENTS)
            except OSError as exc:
                failed.append(f"removing {self.instance_dir}: {exc.strerror or exc}")
            self.instance_dir = None
        if self.mounted:
            why = tracefs.unmount()
            if why:
                self.warnings.append(f"tracefs stays mounted at {tracefs.MOUNT_POINT}: {why}")
            self.mounted = False
        return failed


@contextlib.contextmanager
def run_trace(path: str, pids: list[int], duration: float, cap_ns: int):
    """`hostd run --backend kvm --trace-out FILE`: the run's own vCPU threads' halts and the
    kernel's decisions, recorded as `hostd record` would; drain() the recording now and then.
    The header gives the VMs' KVM_CAP_HALT_POLL as halt_poll_ns: the max their adaptive ran with."""
    with open(path, "wb") as out:
        out.write(header(pids, duration, True, cap_ns))
        with Recording(out, threads(pids)) as rec:
            yield rec
        for w in rec.warnings:
            print(f"hostd run: warning: {w}", file=sys.stderr)


def header(pids: list[int] | None, duration: float, instance: bool, cap_ns: int | None = None) -> bytes:
    """The trace's first line: RECORD_HEADER and the recording's JSON (host, kernel, kvm parameters)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
    except OSError:
        boot_id = None
    doc = {"host": socket.gethostname(), "kernel": platform.release(), "boot_id": boot_id,
           "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "duration_s": duration,
           "pids": pids, "instance": instance, "kvm_parameters": read_sys_params()}
    if cap_ns is not None and doc["kvm_parameters"] is not None:
        doc["kvm_parameters"]["halt_poll_ns"] = cap_ns
    return (RECORD_HEADER + json.dumps(doc) + "\n").encode()
