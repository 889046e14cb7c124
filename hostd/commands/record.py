"""`hostd record`: the kernel's halt tracepoints into a tracefs text trace for `hostd replay --trace`.

Root only. Tracing is left exactly as it was found, on every exit path (the end of --duration,
Ctrl-C, SIGTERM, SIGHUP, an error):
- if no tracefs is mounted, one is mounted at /sys/kernel/tracing and unmounted after;
- the two events are recorded in a private tracing instance (instances/hostd-record-PID), which
  has its own ring buffer, event switches, filters, buffer size and tracing_on: whatever the user
  traces in the top-level buffer or in other instances goes on untouched, and removing the
  instance removes every setting made in it. --no-instance records in the top-level buffer (for
  kernels without instances): every file written there (event enable and filter, buffer_size_kb,
  tracing_on, current_tracer) is saved first and written back after, but the user's top-level
  trace data is consumed with ours.
The file is the events as trace_pipe prints them (tracefs text), after a one-line JSON header
("# hostd record: {...}") naming the host, the kernel and the kvm module parameters, so that a
replay elsewhere knows what the kernel's adaptive ran with.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone

from hostd.trace.parse import RECORD_HEADER
from hostd.replay.trace_replay import read_sys_params
from hostd.plumbing.errors import UsageError

MOUNT_POINT = "/sys/kernel/tracing"
EVENTS = ("kvm/kvm_vcpu_wakeup", "kvm/kvm_halt_poll_ns")
INSTANCE_PREFIX = "hostd-record-"
DRAIN_S = 0.1  # how often the ring buffer is drained into the file
_LOST = re.compile(rb"\[LOST (\d+) EVENTS?\]")
_UNNAMED = re.compile(rb"<\.\.\.>-(\d+)(?= )")


class _Stop(Exception):
    """SIGTERM or SIGHUP: end the recording early, as Ctrl-C does."""


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def tracefs_mount() -> str | None:
    """Where tracefs is mounted, the standard place first; None if nowhere."""
    points = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "tracefs":
                    points.append(parts[1].replace("\\040", " "))
    except OSError:
        return None
    return MOUNT_POINT if MOUNT_POINT in points else (points[0] if points else None)


def mount_tracefs() -> None:
    if _libc().mount(b"nodev", MOUNT_POINT.encode(), b"tracefs", 0, None) != 0:
        e = ctypes.get_errno()
        raise UsageError(f"cannot mount tracefs at {MOUNT_POINT}: {os.strerror(e)}")


def unmount_tracefs() -> str | None:
    """Unmount what we mounted; a reason if it stays (someone else started using it, e.g. a kvm
    backend vCPU's own instance, vcpu/kvm/kvm_trace.py). Never lazily (MNT_DETACH): a user of the
    mount would lose the paths it needs to switch its own events off."""
    if _libc().umount2(MOUNT_POINT.encode(), 0) != 0:
        return os.strerror(ctypes.get_errno())
    return None


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


def _threads(pids: list[int]) -> list[int]:
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


def _remove_stale_instances(root: str) -> None:
    """Instances left by a `hostd record` that was killed outright (SIGKILL skips every cleanup)."""
    try:
        names = os.listdir(os.path.join(root, "instances"))
    except OSError:
        return
    for name in names:
        if not name.startswith(INSTANCE_PREFIX):
            continue
        try:
            owner = int(name[len(INSTANCE_PREFIX):])
        except ValueError:
            continue
        if os.path.exists(f"/proc/{owner}"):
            continue
        inst = os.path.join(root, "instances", name)
        for event in EVENTS:
            with contextlib.suppress(OSError), open(os.path.join(inst, "events", event, "enable"), "w") as f:
                f.write("0\n")
        with contextlib.suppress(OSError):
            os.rmdir(inst)


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
        root = tracefs_mount()
        if root is None:
            mount_tracefs()
            self.mounted = True
            root = MOUNT_POINT
        if not all(os.path.isdir(os.path.join(root, "events", e)) for e in EVENTS):
            raise UsageError("the kvm tracepoints are not in tracefs: is the kvm module loaded?")
        if self.use_instance:
            _remove_stale_instances(root)
            self.instance_dir = os.path.join(root, "instances", f"{INSTANCE_PREFIX}{os.getpid()}")
            try:
                os.mkdir(self.instance_dir)
            except OSError as exc:
                self.instance_dir = None
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
                os.rmdir(self.instance_dir)
            except OSError as exc:
                failed.append(f"removing {self.instance_dir}: {exc.strerror or exc}")
            self.instance_dir = None
        if self.mounted:
            why = unmount_tracefs()
            if why:
                self.warnings.append(f"tracefs stays mounted at {MOUNT_POINT}: {why}")
            self.mounted = False
        return failed


@contextlib.contextmanager
def run_trace(path: str, pids: list[int], duration: float, cap_ns: int):
    """`hostd run --backend kvm --trace-out FILE`: the run's own vCPU threads' halts and the
    kernel's decisions, recorded as `hostd record` would; drain() the recording now and then.
    The header gives the VMs' KVM_CAP_HALT_POLL as halt_poll_ns: the max their adaptive ran with."""
    with open(path, "wb") as out:
        out.write(header(pids, duration, True, cap_ns))
        with Recording(out, _threads(pids)) as rec:
            yield rec
        for w in rec.warnings:
            print(f"hostd run: warning: {w}", file=sys.stderr)


def header(pids: list[int] | None, duration: float, instance: bool, cap_ns: int | None = None) -> bytes:
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


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UsageError("hostd record needs root (tracefs and the kvm tracepoints are root's); run it with sudo")
    duration = _duration(args.duration)
    buffer_kb = None
    if args.buffer_kb is not None:
        try:
            buffer_kb = int(args.buffer_kb)
        except ValueError:
            buffer_kb = 0
        if buffer_kb <= 0:
            raise UsageError(f"--buffer-kb: must be a whole number > 0, got {args.buffer_kb!r}")
    pids = None
    if args.pid is not None:
        try:
            given = [int(p) for p in args.pid.split(",") if p.strip()]
        except ValueError:
            given = []
        if not given or min(given) <= 0:
            raise UsageError(f"--pid: expected PID[,PID...], got {args.pid!r}")
        pids = _threads(given)
    try:
        out = open(args.file, "wb")  # noqa: SIM115 - closed below on every path
    except OSError as exc:
        raise UsageError(f"cannot write {args.file}: {exc.strerror or exc}") from None

    stopped = None
    error: OSError | None = None
    refused: UsageError | None = None
    rec = Recording(out, pids, buffer_kb, instance=not args.no_instance)
    old = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    start = time.monotonic()
    try:
        out.write(header(pids, duration, not args.no_instance))
        rec.start()
        end = start + duration
        while (left := end - time.monotonic()) > 0:
            rec.drain()
            time.sleep(min(DRAIN_S, left))
    except KeyboardInterrupt:
        stopped = "interrupted"
    except _Stop:
        stopped = "terminated"
    except UsageError as exc:
        refused = exc
    except OSError as exc:
        error = exc
    finally:
        with signals_held():
            failed = rec.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)
            try:
                out.close()
            except OSError as exc:
                error = error or exc
            error = error or rec.save_error
    took = time.monotonic() - start
    for w in rec.warnings:
        print(f"hostd record: warning: {w}", file=sys.stderr)
    if failed:
        raise UsageError("could not restore tracing: " + "; ".join(failed))
    if refused is not None:
        with contextlib.suppress(OSError):
            os.unlink(args.file)  # nothing was recorded
        raise refused
    if error is not None:
        raise UsageError(f"recording into {args.file} failed: {error.strerror or error} (tracing restored)")
    lost = f", {rec.lost:,} lost (ring buffer full: try --buffer-kb)" if rec.lost else ""
    what = f"{rec.halts:,} halts and {rec.decisions:,} halt_poll_ns decisions{lost}"
    if stopped:
        print(f"hostd record: {stopped} after {took:.1f} s; {args.file} holds the {what} recorded so far "
              f"(tracing restored)", file=sys.stderr)
        return 130 if stopped == "interrupted" else 143
    print(f"hostd record: {took:.1f} s, {what} -> {args.file}; replay it with "
          f"`hostd replay --trace {args.file}`", file=sys.stderr)
    return 0


def _raise_stop(signum, frame) -> None:
    raise _Stop


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"--duration: must be a number of seconds > 0, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="root: record the kernel's halt tracepoints for `hostd replay --trace`",
        description="Record kvm:kvm_vcpu_wakeup (every halt: its duration, poll or wait) and "
        "kvm:kvm_halt_poll_ns (every grow/shrink of the kernel's adaptive halt polling) for --duration "
        "seconds into FILE, as tracefs text. Runs in a private tracing instance and puts every tracing "
        "setting back on any exit (Ctrl-C included); mounts tracefs if needed and unmounts it after.")
    p.add_argument("file", metavar="FILE", help="the trace to write")
    p.add_argument("--duration", default="10", metavar="SECONDS", help="how long to record (default 10)")
    p.add_argument("--pid", metavar="PID[,PID...]",
                   help="only these vCPU threads (a process's pid stands for all its threads). Default: "
                   "every vCPU thread on the host")
    p.add_argument("--buffer-kb", metavar="KB",
                   help="per-CPU ring buffer size of the recording (default: the kernel's for a new "
                   "instance); raise it if the summary reports lost events")
    p.add_argument("--no-instance", action="store_true",
                   help="record in the top-level trace buffer (kernels without tracing instances); its "
                   "settings are restored, but other top-level tracing loses its buffered events to ours")
    p.set_defaults(func=main)
