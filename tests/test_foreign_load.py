"""host_cpus.foreign_load against an outside spinner whose own CPU time we read: the figure a
reader uses to tell a quiet run from a disturbed one must agree with what the neighbour ran."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

# Spins from each period's start for DUTY of it, then sleeps to the next start (absolute
# clock_nanosleep): a 2 ms period divides the 4 ms tick of HZ=250, which tick-sampled
# accounting sees always or never running.
SPINNER = """
import ctypes, os, sys, time
cpu, duty, period = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {cpu})
libc = ctypes.CDLL(None)
class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
ts = Timespec()
on = int(duty * period)
t = time.monotonic_ns()
while True:
    while time.monotonic_ns() < t + on:
        pass
    t += period
    ts.tv_sec, ts.tv_nsec = divmod(t, 1_000_000_000)
    libc.clock_nanosleep(time.CLOCK_MONOTONIC, 1, ctypes.byref(ts), None)  # TIMER_ABSTIME
"""


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


class _CpuSamples(threading.Thread):
    """A process's CPU seconds against time.monotonic_ns(), every 100 ms, so its rate can be taken
    over exactly the run's window (host_cpus.window_ns). Over the whole run it is not the same
    figure: the VM's processes start on the spinner's CPU and take their share of it first (CI read
    0.395 core for a 0.5 duty that way, beside a foreign_load of 0.435 in the window). Not more
    often: this thread is a load on our CPUs too (every 10 ms it read as 0.02-0.03 core more)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.t, self.cpu = pid, [], []
        self.done = threading.Event()

    def run(self) -> None:
        self.sample()
        while not self.done.wait(0.1):
            self.sample()
        self.sample()  # after the run, so its window lies within the samples

    def sample(self) -> None:
        self.t.append(time.monotonic_ns())
        self.cpu.append(_cpu_s(self.pid))

    def rate(self, t0_ns: int, t1_ns: int) -> float:
        c0, c1 = np.interp([t0_ns, t1_ns], self.t, self.cpu)
        return (c1 - c0) / ((t1_ns - t0_ns) / 1e9)


def _measure(hostd, workload, duty, period_ns, device_cpu, vcpu_cpu) -> tuple[float, float]:
    """(the spinner's own CPU, host_cpus.foreign_load), in cores, over the same window."""
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER, str(vcpu_cpu), str(duty), str(period_ns)])
    samples = _CpuSamples(spinner.pid)
    samples.start()
    try:
        r = hostd.run_json("run", "--vcpus", "1", "--workload", workload, "--policy", "none",
                           "--cpus", str(vcpu_cpu), "--device-cpu", str(device_cpu), "--duration", "3")
    finally:
        samples.done.set()
        samples.join()
        spinner.kill()
        spinner.wait()
    window = r["host_cpus"]["window_ns"]
    return samples.rate(window["t0"], window["t1"]), r["host_cpus"]["foreign_load"]


@pytest.mark.parametrize("workload,duty,period_ns", [("idle", 0.5, 2_000_000), ("timer", 0.3, 10_000_000)])
def test_foreign_load_matches_an_outside_spinners_own_cpu_time(hostd, workload, duty, period_ns):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs: one for the device, one for the vCPU and the spinner")
    runs = []
    for _ in range(2):  # a second run only if others' load (theirs, not the spinner's) inflated the first
        own, foreign = _measure(hostd, workload, duty, period_ns, cpus[0], cpus[-1])
        print(f"{workload}: spinner's own {own:.3f} core, foreign_load {foreign:.3f} core")
        # The spinner was a load to be seen, or the check means nothing. It never runs more than its
        # duty (it spins to a clock, not for an amount of CPU), and less when preempted.
        assert duty / 2 <= own <= duty + 0.01
        assert foreign >= own - 0.05  # never less than the spinner: that is the miscount this catches
        runs.append(foreign - own)
        if foreign <= own + 0.05:
            break
    if min(runs) > 0.05:
        # Ours to answer only if the machine is quiet without the spinner: others' load that lasts
        # through both runs (a 60% stress-ng on both cores read 0.99-1.11 core more) is theirs.
        hostd.skip_if_others_load("without the spinner too")
    assert min(runs) <= 0.05, f"foreign_load exceeded the spinner's own CPU by {runs} core in each run"
