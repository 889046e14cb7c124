"""What the host OS says about each vCPU process: CPU time, run-queue wait, switches, migrations."""
from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass

import psutil


@dataclass
class TaskStats:
    cpu_ns: int = 0
    runq_wait_ns: int = 0
    ctx_voluntary: int = 0
    ctx_involuntary: int = 0
    migrations: int = 0
    exit_cpu_ns: int = 0  # threads placed off the vCPU's core: its exits, handled on housekeeping

    def __sub__(self, other: "TaskStats") -> "TaskStats":
        return TaskStats(*(a - b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.cpu_ns, self.runq_wait_ns, self.ctx_voluntary, self.ctx_involuntary, self.migrations,
                self.exit_cpu_ns)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _sched_field(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            return int(float(line.split(":")[1]))
    return 0


def _off_core(task: str, cpu: int | None) -> bool:
    try:
        return cpu is not None and cpu not in os.sched_getaffinity(int(os.path.basename(task)))
    except OSError:
        return False


def process_stats(pid: int, cpu: int | None = None) -> TaskStats:
    """Summed over every thread (ZeroMQ's I/O threads burn host CPU for the vCPU too).

    With `cpu`, the run time of threads that may not run there (a vCPU's request I/O thread,
    placed on the housekeeping CPU) goes to exit_cpu_ns, so cpu_ns is what the vCPU's own core
    burned. /proc/PID/task/TID/schedstat gives ns-precision run time and run-queue wait;
    psutil's tick-based times are the fallback where schedstat is missing.
    """
    total = TaskStats()
    tasks = glob.glob(f"/proc/{pid}/task/*")
    if not tasks:
        raise ProcessLookupError(pid)
    for task in tasks:
        try:
            run_ns, wait_ns, _ = _read(f"{task}/schedstat").split()
            if _off_core(task, cpu):
                total.exit_cpu_ns += int(run_ns)
            else:
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


# --- load from others on our CPUs (so a noisy neighbour is measured, not guessed) -----------
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_s(cpus: list[int]) -> float:
    """Seconds the given CPUs spent busy (any process, any mode) since boot, from /proc/stat."""
    want = {f"cpu{c}" for c in cpus}
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name in want:
                v = [int(x) for x in rest.split()[:8]]
                v += [0] * (8 - len(v))
                # user nice system ... steal: interrupt time is left out (our own I/O's
                # completions land there); steal is in (a hypervisor taking the CPU is a neighbour).
                busy += v[0] + v[1] + v[2] + v[7]
    return busy / _CLK_TCK


def kernel_threads_cpu_s() -> float:
    """CPU seconds of every kernel thread (children of kthreadd): the writeback and journal work
    our own O_DSYNC writes cause runs there, so it is not counted as a neighbour."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == "2" or name == "2":  # ppid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


def own_cpu_s(pids: list[int]) -> float:
    """CPU seconds of this process, the given children, and the kernel's threads."""
    total = time.process_time() + kernel_threads_cpu_s()
    for pid in pids:
        try:
            total += process_stats(pid).cpu_ns / 1e9
        except (ProcessLookupError, OSError):
            pass
    return total


def foreign_load(busy_s: float, own_s: float, window_s: float) -> float:
    """Cores' worth of CPU that anything but us used on our CPUs during the window: 0 on a quiet
    machine, 1 when a busy neighbour ran throughout."""
    return max(0.0, busy_s - own_s) / window_s if window_s > 0 else 0.0
