"""Interrupt sources: the idle tick and the O_DSYNC write device."""
from __future__ import annotations

import os
import tempfile
import time
from array import array

from vcpu import abi

BLOCK = 4096
IO_SPAN = 256  # blocks the writes cycle over: a small file that stays allocated


class Ring:
    """The latest `capacity` samples, in fixed memory however long the device runs."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.buf = array("q", bytes(8 * capacity))
        self.n = 0

    def add(self, value: int) -> None:
        self.buf[self.n % len(self.buf)] = value
        self.n += 1

    def payload(self) -> bytes:
        return self.buf[: min(self.n, len(self.buf))].tobytes()


class TickSource:
    """The idle guest's timer tick, per vCPU, phases staggered; rate live from the slot."""

    def __init__(self, words: memoryview, nvcpus: int) -> None:
        self.w = words
        self.i_rate = [abi.slot_base(i) + abi.RATE_MILLIHZ for i in range(nvcpus)]
        self.next: list[int | None] = [None] * nvcpus

    def _period_ns(self, index: int) -> int | None:
        mhz = self.w[self.i_rate[index]]
        return 10**12 // mhz if mhz else None

    def start(self, now: int) -> None:
        n = len(self.next)
        for i in range(n):
            period = self._period_ns(i)
            self.next[i] = None if period is None else now + period * (i + 1) // n

    def next_ns(self) -> int | None:
        pending = [t for t in self.next if t is not None]
        return min(pending) if pending else None

    def pop_due(self, now: int) -> list[int]:
        due = []
        for i, t in enumerate(self.next):
            if t is not None and t <= now:
                due.append(i)
                period = self._period_ns(i)
                self.next[i] = None if period is None else max(t + period, now)
        return due


# The default io file's home: a disk-backed filesystem, so that a default run measures a real
# synchronous write (/tmp is tmpfs on many laptops, and tmpfs ignores O_DSYNC). Where it is not
# writable, $TMPDIR (tempfile's choice) is the fallback; the result's spec.io.fs says what was measured.
IO_DIR = "/var/tmp"


def io_base_dir() -> str:
    """Where the default io file's private directory goes: IO_DIR, else tempfile's directory."""
    if os.path.isdir(IO_DIR) and os.access(IO_DIR, os.W_OK | os.X_OK):
        return IO_DIR
    return tempfile.gettempdir()


class WriteDevice:
    """Synchronous block writes: real `pwrite` on an O_DSYNC file, or a modelled service time.
    The file's owner makes and removes its directory (hostd: Vm.start and close)."""

    def __init__(self, path: str | None, service_ns: int | None) -> None:
        self.service_ns = service_ns
        self.service_times_ns = Ring()
        self.fd = -1
        if service_ns is None:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DSYNC, 0o600)
            # Allocated before the window, so every measured write overwrites, as a VMM's writes
            # to its disk image do: a write that extends the file waits for its new size and blocks
            # to be written too (~100 us more here), and the first IO_SPAN writes of every run would.
            os.pwrite(self.fd, bytes(BLOCK * IO_SPAN), 0)
        self.buf = os.urandom(BLOCK)
        self.block = 0

    def write(self) -> int:
        """One write; returns its service time (ns) for record(), which the device calls once
        the completion is out: the guest's wake does not wait for our bookkeeping."""
        t = time.monotonic_ns()
        if self.service_ns is None:
            os.pwrite(self.fd, self.buf, self.block * BLOCK)
            self.block = (self.block + 1) % IO_SPAN
        else:
            end = t + self.service_ns
            while time.monotonic_ns() < end:
                pass
        return time.monotonic_ns() - t

    def record(self, service_ns: int) -> None:
        self.service_times_ns.add(service_ns)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
