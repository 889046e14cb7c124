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

    def __add__(self, other: "TaskStats") -> "TaskStats":
        return TaskStats(*(a + b for a, b in zip(self.astuple(), other.astuple())))

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


def own_idle() -> dict:
    """This machine's own cpuidle driver, and where it is itself a KVM guest with cpuidle-haltpoll,
    that driver's poll budget (guest_halt_poll_ns): it sets how fast an idle CPU here wakes, so
    every cross-CPU wake of ours. At 0 (a boot parameter some clouds set) each one goes out to
    the outer host; a bare-metal laptop has no such driver."""
    out: dict = {"cpuidle_driver": None, "guest_halt_poll_ns": None}
    try:
        out["cpuidle_driver"] = _read("/sys/devices/system/cpu/cpuidle/current_driver").strip()
        out["guest_halt_poll_ns"] = int(_read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"))
    except (OSError, ValueError):
        pass
    return out


# --- load from others on our CPUs (so a noisy neighbour is measured, not guessed) -----------
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_s(cpus: list[int]) -> float:
    """Seconds the given CPUs spent busy (any process, any mode) since the monotonic clock's zero:
    only differences mean anything.

    Busy is elapsed time less idle and iowait, not the user/system columns: those are sampled at
    the scheduler tick (4 ms at HZ=250), and a neighbour whose period divides evenly into the
    tick's is seen always or never running (a 1 ms-on/1 ms-off spinner read 0.01 or 1.0 core
    across runs here), while idle time is clocked at each idle entry and exit (NO_HZ idle).
    Interrupt time is left out (our own I/O's completions land there); steal is in (a
    hypervisor taking the CPU is a neighbour)."""
    want = {f"cpu{c}" for c in cpus}
    idle = 0
    now = time.monotonic()
    with open("/proc/stat") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name in want:
                v = [int(x) for x in rest.split()[:7]]
                v += [0] * (7 - len(v))
                idle += v[3] + v[4] + v[5] + v[6]  # idle, iowait, irq, softirq
    return len(want) * now - idle / _CLK_TCK


def kernel_threads_cpu_s() -> dict[int, float]:
    """CPU seconds of each kernel thread (children of kthreadd), by pid: the writeback and journal
    work our own O_DSYNC writes cause runs there, so it is not counted as a neighbour. Their
    schedstat run time where the kernel has it: their tick-sampled utime/stime alias as the CPUs' do."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[1] != "2" and name != "2":  # ppid: kthreadd's children
                continue
            try:
                with open(f"/proc/{name}/schedstat") as f:
                    out[int(name)] = int(f.read().split()[0]) / 1e9
            except FileNotFoundError:
                out[int(name)] = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
        except OSError:
            continue
    return out


def own_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds by pid of this process, the given children, and the kernel's threads."""
    out = kernel_threads_cpu_s()
    out[os.getpid()] = time.process_time()
    for pid in pids:
        try:
            out[pid] = process_stats(pid).cpu_ns / 1e9
        except (ProcessLookupError, OSError):
            pass
    return out


def own_cpu_s_since(before: dict[int, float], pids: list[int]) -> float:
    """Our CPU seconds since `before` (an own_cpu() snapshot), task by task: kernel workers come and
    go, and a sum's difference would lose a whole lifetime's CPU with each one that exits (a run
    read 2.1 cores of others' load on 2 CPUs that way). One born since counts from zero; one gone
    since counts nothing (what it ran in between is unknown)."""
    return sum(s - before.get(pid, 0.0) for pid, s in own_cpu(pids).items())


def foreign_load(busy_s: float, own_s: float, window_s: float) -> float:
    """Cores' worth of CPU that anything but us used on our CPUs during the window: 0 on a quiet
    machine, 1 when a busy neighbour ran throughout."""
    return max(0.0, busy_s - own_s) / window_s if window_s > 0 else 0.0
