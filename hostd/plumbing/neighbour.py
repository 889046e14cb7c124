"""The neighbour: a CPU-bound process of ours pinned to a vCPU's CPU, spinning a duty cycle (DESIGN §5).

It shows what polling buys and what it costs the host's other tasks: the kernel's poll stops when
another task is runnable on its CPU, a guest's poll does not, and the CPU a polling vCPU takes is
CPU this neighbour does not get. Each period (CLOCK_MONOTONIC, absolute) it spins until DUTY x PERIOD
of wall time has passed since the period began, then sleeps to the next period's start with an
absolute clock_nanosleep. Preempted while spinning, it gets less than its duty: that is the figure.

This module is both the option (`--neighbour DUTY[:PERIOD]`: NeighbourSpec, parse_neighbour,
add_neighbour_option) and the process, started by hostd (plumbing/vm.py) as
`python -m hostd.plumbing.neighbour --cpu N --duty-ns D --period-ns P [--name NAME] [--run-dir DIR]`.
Like every child it names itself, dies with hostd (the parent-death signal) and reports ready on the
run's control socket; SIGTERM ends it quietly (exit 0).
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import msgpack
import zmq

from hostd.plumbing.errors import UsageError
from hostd.plumbing.units import parse_ns
from vcpu import abi

OPTION = "--neighbour"
DEFAULT_PERIOD = "2ms"
MIN_PERIOD_NS = 100_000
MAX_PERIOD_NS = 1_000_000_000


@dataclass(frozen=True)
class NeighbourSpec:
    duty: float  # share of each period spent spinning, in (0, 1]
    period_ns: int

    @property
    def duty_ns(self) -> int:
        return round(self.duty * self.period_ns)

    def to_dict(self) -> dict:
        return {"duty": self.duty, "period_ns": self.period_ns}


def label(duty: float, period_ns: int) -> str:
    """`50% of 2 ms`: a neighbour as a user would say it (from a spec or a result's block)."""
    period = f"{period_ns / 1e6:g} ms" if period_ns >= 1_000_000 else f"{period_ns / 1e3:g} us"
    return f"{100 * duty:g}% of {period}"


def parse_neighbour(text: str, option: str = OPTION) -> NeighbourSpec:
    """DUTY[:PERIOD]: DUTY a fraction in (0, 1] (0.5) or a percentage in (0, 100] (50%), PERIOD a
    duration as tune's --range takes it (2ms, 500us; default 2ms), from 100 us to 1 s."""
    duty_text, sep, period_text = text.strip().partition(":")
    duty_text = duty_text.strip()
    percent = duty_text.endswith("%")
    number = duty_text[:-1] if percent else duty_text
    try:
        duty = float(number)
    except ValueError:
        raise UsageError(f"{option}: expected DUTY[:PERIOD] like 0.5, 50% or 0.5:2ms, got {text!r}") from None
    top = 100.0 if percent else 1.0
    if not 0.0 < duty <= top:  # also refuses nan
        what = "a percentage in (0, 100]" if percent else "a fraction in (0, 1] (or a percentage, 50%)"
        raise UsageError(f"{option}: duty {duty_text!r} is out of range: expected {what}")
    if percent:
        duty /= 100.0
    period_ns = parse_ns(option, period_text if sep else DEFAULT_PERIOD)
    if not MIN_PERIOD_NS <= period_ns <= MAX_PERIOD_NS:
        raise UsageError(f"{option}: period {period_text.strip()!r} is out of range: expected 100us to 1s")
    return NeighbourSpec(duty, period_ns)


def add_neighbour_option(parser, repeatable: bool = False) -> None:
    """--neighbour on a parser or argument group; repeatable: a list of them (compare)."""
    parser.add_argument(
        OPTION, metavar="DUTY[:PERIOD]", action="append" if repeatable else "store",
        help="a neighbour of ours on each vCPU's CPU: a process pinned there that spins DUTY of every PERIOD "
        f"(DUTY 0.5 or 50%%; PERIOD as 2ms or 500us, 100us to 1s, default {DEFAULT_PERIOD}) and sleeps the rest; "
        "the result says what CPU it got beside the VM and alone (not with --no-pin)"
        + ("; may be repeated" if repeatable else ""),
    )


def baseline_ns(period_ns: int, at_least_ns: int) -> int:
    """A whole number of periods, at least at_least_ns: the neighbours' baseline window."""
    return max(1, math.ceil(at_least_ns / period_ns)) * period_ns


# --- the process ----------------------------------------------------------------------------------

class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


CLOCK_MONOTONIC, TIMER_ABSTIME = 1, 1


def run(duty_ns: int, period_ns: int) -> None:
    """Spin DUTY of each period, sleep the rest; forever (SIGTERM ends the process)."""
    # clock_nanosleep through ctypes on a preallocated struct (Python 3.11 has no
    # time.clock_nanosleep); ctypes drops the GIL around it, and a signal ends it with EINTR.
    sleep = ctypes.CDLL(None, use_errno=True).clock_nanosleep
    sleep.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    ts = _Timespec()
    ts_p = ctypes.addressof(ts)
    now = time.monotonic_ns
    t = now()
    while True:
        end = t + duty_ns
        while now() < end:
            pass
        t += period_ns
        behind = now() - t
        if behind > period_ns:  # preempted for more than a period: re-align, do not burst
            t += behind - behind % period_ns
        ts.tv_sec, ts.tv_nsec = divmod(t, 1_000_000_000)
        while sleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ts_p, None) == errno.EINTR:  # on to the same time
            pass


def _ready(run_dir: str, cpu: int) -> None:
    """Tell hostd this neighbour is up and pinned (its control socket), then drop ZeroMQ: its I/O
    thread must not run beside the spin."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    abi.connect(s, abi.control_endpoint(run_dir))
    s.send(msgpack.packb({"kind": "ready", "who": "neighbour", "cpu": cpu, "pid": os.getpid()}))
    s.close(linger=2000)
    ctx.term()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neighbour", description="a CPU-bound neighbour (started by hostd)")
    ap.add_argument("--cpu", type=int, required=True)
    ap.add_argument("--duty-ns", type=int, required=True)
    ap.add_argument("--period-ns", type=int, required=True)
    ap.add_argument("--name", help="the process name, as ps shows it (default neighbour<cpu>)")
    ap.add_argument("--run-dir", help="report ready on this run's control socket")
    args = ap.parse_args(argv)
    abi.child_setup(args.name or f"neighbour{args.cpu}")
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is hostd's to handle
    os.sched_setaffinity(0, {args.cpu})
    abi.set_timer_slack_ns(1)  # wake at each period's start, not up to 50 us after it
    if args.run_dir:
        _ready(args.run_dir, args.cpu)
    run(args.duty_ns, args.period_ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
