"""What the host OS says about each vCPU process: CPU time, run-queue wait, switches, migrations."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import psutil


@dataclass
class TaskStats:
    cpu_ns: int = 0
    runq_wait_ns: int = 0
    ctx_voluntary: int = 0
    ctx_involuntary: int = 0
    migrations: int = 0

    def __sub__(self, other: "TaskStats") -> "TaskStats":
        return TaskStats(*(a - b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.cpu_ns, self.runq_wait_ns, self.ctx_voluntary, self.ctx_involuntary, self.migrations)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _sched_field(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            return int(float(line.split(":")[1]))
    return 0


def process_stats(pid: int) -> TaskStats:
    """Summed over every thread (ZeroMQ's I/O thread burns host CPU for the vCPU too).

    /proc/PID/task/TID/schedstat gives ns-precision run time and run-queue wait; psutil's
    tick-based times are the fallback where schedstat is missing.
    """
    total = TaskStats()
    tasks = glob.glob(f"/proc/{pid}/task/*")
    if not tasks:
        raise ProcessLookupError(pid)
    for task in tasks:
        try:
            run_ns, wait_ns, _ = _read(f"{task}/schedstat").split()
            total.cpu_ns += int(run_ns)
            total.runq_wait_ns += int(wait_ns)
        except FileNotFoundError:
            try:
                t = psutil.Process(pid).cpu_times()
                total.cpu_ns += int((t.user + t.system) * 1e9)
            except psutil.Error:
                pass
        try:
            status = _read(f"{task}/status")
            total.ctx_voluntary += _sched_field(status, "voluntary_ctxt_switches")
            total.ctx_involuntary += _sched_field(status, "nonvoluntary_ctxt_switches")
            if os.path.exists(f"{task}/sched"):
                total.migrations += _sched_field(_read(f"{task}/sched"), "se.nr_migrations")
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended between listing and reading
    return total


def cpuidle_usage(cpus: list[int]) -> dict[int, dict[str, int]]:
    """Idle-state entries per physical CPU (the seed's "trip to C1"), where the kernel exposes them."""
    out: dict[int, dict[str, int]] = {}
    for cpu in cpus:
        states = {}
        for d in sorted(glob.glob(f"/sys/devices/system/cpu/cpu{cpu}/cpuidle/state*")):
            try:
                states[_read(f"{d}/name").strip()] = int(_read(f"{d}/usage"))
            except (FileNotFoundError, ValueError):
                continue
        if states:
            out[cpu] = states
    return out
