"""The emulator's stand-in for kvm_vcpu_can_poll()'s single_task_running(), measured: the options a
user without root has, side by side on the vCPU's CPU.

    python -m bench.need_resched [--cpu N] [--json]

Per option: what one check costs with the CPU to ourselves; how long a task that wakes on our CPU
waits for it while we poll with that check every ~10 us (the kernel's poll ends at once: the task
runs as soon as the scheduler lets it); and what the poller's own wake is worth when its event
lands while that task runs: a poller that gave the CPU away and stays runnable (yield), against
one asleep and woken (the kernel's blocked vCPU). The options:

  none      no check: the poll runs until its budget is spent or the scheduler preempts it
  yield     sched_yield(): hands the CPU to any task runnable on it, returns at once if none
  loadavg   /proc/loadavg's running count: every CPU's, not this one's
  pressure  /proc/pressure/cpu's "some" total: every CPU's stall time (where PSI is on)

What the emulator runs (vcpu/emu/single_task.py, README "Beside a neighbour"): loadavg, less its own
tasks on other CPUs, seen twice in a row, then the block path, so that it is woken as the kernel's
blocked vCPU is; while its device works (the kernel's I/O threads then run on other CPUs) a yield
decides instead.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CHECK_EVERY_NS = 10_000
ROUNDS = 40
BURST_NS = 1_000_000  # the neighbour's run once it wakes
TIMER_ABSTIME = 1

# A neighbour: wake at each absolute time read from stdin, write the time it first ran, spin BURST.
NEIGHBOUR = f"""
import ctypes, os, sys, time
os.sched_setaffinity(0, {{int(sys.argv[1])}})
libc = ctypes.CDLL(None)
class Ts(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
ts = Ts()
libc.prctl(29, 1, 0, 0, 0)
for line in sys.stdin:
    at = int(line)
    ts.tv_sec, ts.tv_nsec = divmod(at, 1_000_000_000)
    libc.clock_nanosleep(time.CLOCK_MONOTONIC, {TIMER_ABSTIME}, ctypes.byref(ts), None)
    ran = time.monotonic_ns()
    while time.monotonic_ns() < ran + {BURST_NS}:
        pass
    print(ran - at, flush=True)
"""

_libc = ctypes.CDLL(None, use_errno=True)


class _Ts(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _sleep_until(ts: _Ts, t: int) -> None:
    ts.tv_sec, ts.tv_nsec = divmod(t, 1_000_000_000)
    _libc.clock_nanosleep(time.CLOCK_MONOTONIC, TIMER_ABSTIME, ctypes.byref(ts), None)


def _checks() -> dict:
    """Each option as a function returning True when it says another task wants the CPU."""
    la = os.open("/proc/loadavg", os.O_RDONLY)

    def loadavg() -> bool:
        return int(os.pread(la, 64, 0).split()[3].split(b"/")[0]) > 1

    out = {"none": lambda: False, "yield": None, "loadavg": loadavg}
    try:
        psi = os.open("/proc/pressure/cpu", os.O_RDONLY)
        os.pread(psi, 128, 0)
        last = [0]

        def pressure() -> bool:
            total = int(os.pread(psi, 128, 0).split(b"\n")[0].rsplit(b"=", 1)[1])
            moved, last[0] = total != last[0], total
            return moved

        out["pressure"] = pressure
    except OSError:
        pass  # PSI off (psi=0) or not built: that option is not one here
    return out


def _yielded() -> bool:
    """sched_yield, then: did another task run meanwhile? (the involuntary switch count moved)"""
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
    os.sched_yield()
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw != before


def cost_ns(check, n: int = 20_000) -> float:
    now = time.monotonic_ns
    t0 = now()
    for _ in range(n):
        check()
    return (now() - t0) / n


def _poll(check, until: int) -> int:
    """Poll until `until`, checking every ~10 us; returns when the check said yes (or at `until`)."""
    now = time.monotonic_ns
    nxt = now()
    while (t := now()) < until:
        if t >= nxt:
            nxt = t + CHECK_EVERY_NS
            if check():
                return t
    return 0


def neighbour_wait(name: str, check, cpu: int) -> dict:
    """A task wakes on our CPU while we poll: how long until it runs, and did the check see it."""
    nb = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(cpu)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    waits, seen = [], 0
    try:
        time.sleep(0.2)
        for _ in range(ROUNDS):
            at = time.monotonic_ns() + 2_000_000
            nb.stdin.write(f"{at}\n")
            nb.stdin.flush()
            # Poll from before its wake to well past its burst, as a 4 ms poll budget would.
            if _poll(check, at + 4_000_000):
                seen += 1
                _sleep_until(_Ts(), at + BURST_NS + 1_000_000)  # blocked until its burst is over
            waits.append(int(nb.stdout.readline()))
    finally:
        nb.kill()
        nb.wait()
    return {"wait_us_p50": round(statistics.median(waits) / 1e3, 1),
            "wait_us_max": round(max(waits) / 1e3, 1), "seen": f"{seen}/{ROUNDS}"}


def wake_in_burst(cpu: int, asleep: bool) -> float:
    """Our event lands 300 us into a neighbour's 1 ms burst: how late do we run (median, us)?"""
    nb = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(cpu)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    late, ts = [], _Ts()
    try:
        time.sleep(0.2)
        for _ in range(ROUNDS):
            at = time.monotonic_ns() + 2_000_000
            event = at + 300_000
            nb.stdin.write(f"{at}\n")
            nb.stdin.flush()
            if asleep:
                _sleep_until(ts, event)
            else:
                _sleep_until(ts, at - 200_000)
                while time.monotonic_ns() < at:  # polling when it wakes: yield to it, stay runnable
                    os.sched_yield()
                while time.monotonic_ns() < event:
                    os.sched_yield()
            late.append(time.monotonic_ns() - event)
            nb.stdout.readline()
    finally:
        nb.kill()
        nb.wait()
    return round(statistics.median(late) / 1e3, 1)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.need_resched", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)), help="the vCPU's CPU (default: the last)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    os.sched_setaffinity(0, {a.cpu})
    checks = _checks()
    checks["yield"] = _yielded
    rows = {}
    for name, check in checks.items():
        rows[name] = {"check_ns": round(cost_ns(check)), **neighbour_wait(name, check, a.cpu)}
    wake = {"asleep_woken_us": wake_in_burst(a.cpu, True), "yielded_runnable_us": wake_in_burst(a.cpu, False)}
    if a.json:
        json.dump({"cpu": a.cpu, "options": rows, "wake_in_burst": wake}, sys.stdout)
        print()
        return 0
    print(f"on CPU {a.cpu}: a task waking while we poll (check every {CHECK_EVERY_NS // 1000} us), {ROUNDS} rounds")
    print(f"{'option':10} {'one check':>10} {'its wait p50':>13} {'max':>9} {'seen':>7}")
    for name, r in rows.items():
        print(f"{name:10} {r['check_ns']:>8} ns {r['wait_us_p50']:>10} us {r['wait_us_max']:>6} us {r['seen']:>7}")
    print(f"our event 300 us into its 1 ms burst, we run p50: {wake['asleep_woken_us']} us late asleep and woken "
          f"(the kernel's blocked vCPU), {wake['yielded_runnable_us']} us late yielded and runnable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
