"""The kernel's own per-vCPU statistics, read from KVM_GET_STATS_FD (Documentation/virt/kvm/api.rst).

The fd holds a header, then descriptors (16 bytes + name_size each), then the values (u64s).
Names, sizes, offsets and units all come from the descriptors; nothing here assumes a layout.
"""
from __future__ import annotations

import ctypes
import os

from vcpu.kvm import kvm_api

# kvm_stats_desc.flags
KVM_STATS_TYPE_MASK = 0xF
KVM_STATS_TYPE_LOG_HIST = 4
KVM_STATS_UNIT_MASK = 0xF0
KVM_STATS_UNIT_SECONDS = 0x20
KVM_STATS_BASE_MASK = 0xF00
KVM_STATS_BASE_POW10 = 0x000

# What the backend reports, under KVM's names (DESIGN §4).
HALT_COUNTERS = (
    "halt_exits", "halt_attempted_poll", "halt_successful_poll", "halt_poll_invalid", "halt_wakeup",
    "halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns",
)
HALT_HISTS = ("halt_poll_success_hist", "halt_poll_fail_hist", "halt_wait_hist")


class Stat:
    __slots__ = ("name", "offset", "size", "scale", "is_hist")

    def __init__(self, name: str, offset: int, size: int, scale: int, is_hist: bool) -> None:
        self.name, self.offset, self.size, self.scale, self.is_hist = name, offset, size, scale, is_hist


def _ns_scale(flags: int, exponent: int) -> int:
    """Multiplier to nanoseconds for a time stat (unit seconds, base 10, exponent -9 today)."""
    if flags & KVM_STATS_UNIT_MASK != KVM_STATS_UNIT_SECONDS or flags & KVM_STATS_BASE_MASK != KVM_STATS_BASE_POW10:
        return 1
    e = exponent + 9
    if e < 0:
        raise ValueError(f"stat time unit finer than 1 ns (10^{exponent} s) is not handled")
    return 10**e


def parse_descriptors(fd: int) -> tuple[int, dict[str, Stat]]:
    """(data_offset, {name: Stat}) from the fd's header and descriptors."""
    hdr = kvm_api.kvm_stats_header.from_buffer_copy(os.pread(fd, ctypes.sizeof(kvm_api.kvm_stats_header), 0))
    dsize = ctypes.sizeof(kvm_api.kvm_stats_desc) + hdr.name_size
    raw = os.pread(fd, dsize * hdr.num_desc, hdr.desc_offset)
    stats = {}
    for i in range(hdr.num_desc):
        chunk = raw[i * dsize:(i + 1) * dsize]
        d = kvm_api.kvm_stats_desc.from_buffer_copy(chunk)
        name = chunk[ctypes.sizeof(kvm_api.kvm_stats_desc):].split(b"\0", 1)[0].decode()
        is_hist = d.flags & KVM_STATS_TYPE_MASK == KVM_STATS_TYPE_LOG_HIST
        # A histogram's buckets count events; only a scalar time stat is scaled.
        scale = 1 if is_hist else _ns_scale(d.flags, d.exponent)
        stats[name] = Stat(name, d.offset, d.size, scale, is_hist)
    return hdr.data_offset, stats


class VcpuStats:
    """A vCPU's stats fd, parsed once; `read()` preads the values (one syscall)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        try:
            self.data_offset, self.stats = parse_descriptors(fd)
            missing = [n for n in HALT_COUNTERS + HALT_HISTS if n not in self.stats]
            if missing:
                raise kvm_api.KvmUnavailable(f"the kernel's vCPU stats lack {', '.join(missing)}: "
                                             "use Linux 5.16 or later")
        except BaseException:
            os.close(fd)
            raise
        self.length = max(s.offset + 8 * s.size for s in self.stats.values())
        self.buf = bytearray(self.length)
        self.words = memoryview(self.buf).cast("Q")

    def refresh(self) -> memoryview:
        """Re-read every value into the preallocated buffer; returns the u64 words."""
        n = os.preadv(self.fd, [self.buf], self.data_offset)
        if n != self.length:
            raise OSError(f"short read of the stats fd ({n} of {self.length} bytes)")
        return self.words

    def read(self) -> dict:
        """The halt counters (time stats in ns) and histograms, under KVM's names."""
        w = self.refresh()
        out: dict = {}
        for name in HALT_COUNTERS:
            s = self.stats[name]
            out[name] = w[s.offset // 8] * s.scale
        for name in HALT_HISTS:
            s = self.stats[name]
            out[name] = list(w[s.offset // 8: s.offset // 8 + s.size])
        return out

    def close(self) -> None:
        self.words.release()
        os.close(self.fd)
