"""`hostd record`: the kernel's halt tracepoints into a tracefs text trace for `hostd replay --trace`.

Root only. The recording itself (hostd.trace.recording) runs in a private tracing instance and
leaves tracing exactly as it found it on every exit path (the end of --duration, Ctrl-C, SIGTERM,
SIGHUP, an error); --no-instance records in the top-level buffer, its settings saved and restored.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time

from hostd.plumbing.errors import UsageError
from hostd.plumbing.output import check_out_file
from hostd.trace import recording

DRAIN_S = 0.1  # how often the ring buffer is drained into the file


class _Stop(Exception):
    """SIGTERM or SIGHUP: end the recording early, as Ctrl-C does."""


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
        pids = recording.threads(given)
    check_out_file(args.file, "FILE")
    try:
        out = open(args.file, "wb")  # noqa: SIM115 - closed below on every path
    except OSError as exc:  # e.g. its folder missing: record, unlike the others, does not create one
        raise UsageError(f"FILE: cannot write {args.file!r}: {exc.strerror or exc}") from None

    stopped = None
    error: OSError | None = None
    refused: UsageError | None = None
    rec = recording.Recording(out, pids, buffer_kb, instance=not args.no_instance)
    old = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    start = time.monotonic()
    try:
        out.write(recording.header(pids, duration, not args.no_instance))
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
    except BrokenPipeError:  # FILE a pipe (/dev/stdout | head) whose reader went: hostd.cli ends it, tracing restored
        raise
    except OSError as exc:
        error = exc
    finally:
        with recording.signals_held():
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
