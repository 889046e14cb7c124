"""%c0: the share of a window a physical CPU spent busy (in C0), as turbostat's %c0 means it.

Source, per CPU, in order of preference:
- "cpuidle": residency of the cpuidle states (`cpuN/cpuidle/state*/time`, us), POLL left out (a
  CPU polling in the idle loop is executing, i.e. in C0). The kernel adds a state's residency
  when the CPU leaves it, so each reading is taken *from that CPU* (we migrate there first):
  the CPU is then running us, every idle period before the read is closed and counted.
- "/proc/stat": idle + iowait ticks (USER_HZ), where the CPU exposes no cpuidle states; the
  kernel's nohz idle accounting counts an idle period in progress. Resolution 1/USER_HZ s.
"""
from __future__ import annotations

import glob
import os
import time

_TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK")


def _states(cpu: int) -> list[str]:
    out = []
    for d in sorted(glob.glob(f"/sys/devices/system/cpu/cpu{cpu}/cpuidle/state*")):
        try:
            with open(f"{d}/name") as f:
                if f.read().strip() != "POLL":
                    out.append(f"{d}/time")
        except OSError:
            continue
    return out


def _stat_idle_ns(cpu: int) -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = line.split()
                return (int(v[4]) + int(v[5])) * _TICK_NS
    raise ValueError(f"cpu{cpu} not in /proc/stat")


class C0Meter:
    """start() then stop(): %c0 per CPU over the window between them."""

    def __init__(self, cpus: list[int], proc_stat: bool = False) -> None:
        """proc_stat: use /proc/stat even where cpuidle is exposed (to compare the two)."""
        self.cpus = sorted(set(cpus))
        self._files = {c: [] if proc_stat else _states(c) for c in self.cpus}
        self.source = {c: "cpuidle" if self._files[c] else "/proc/stat" for c in self.cpus}
        self._t0: dict[int, tuple[int, int]] = {}
        self.pct: dict[int, float] = {}  # the last window's, once stopped

    def _read(self) -> dict[int, tuple[int, int]]:
        out = {}
        mine = os.sched_getaffinity(0)
        try:
            for c in self.cpus:
                files = self._files[c]
                if files:
                    os.sched_setaffinity(0, {c})  # returns once we run there: idle periods closed
                    idle = 0
                    for path in files:
                        with open(path) as f:
                            idle += int(f.read()) * 1000
                else:
                    idle = _stat_idle_ns(c)
                out[c] = (time.monotonic_ns(), idle)
        finally:
            os.sched_setaffinity(0, mine)
        return out

    def start(self) -> None:
        self._t0 = self._read()

    def stop(self) -> dict[int, float]:
        end = self._read()
        out = {}
        for c in self.cpus:
            (t0, i0), (t1, i1) = self._t0[c], end[c]
            wall = max(1, t1 - t0)
            out[c] = min(100.0, max(0.0, 100.0 * (1 - (i1 - i0) / wall)))
        self.pct = out
        return out
