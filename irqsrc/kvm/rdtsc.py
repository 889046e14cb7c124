"""The host's TSC from Python: a 10-byte function in an executable page, called through ctypes.

The kvm backend's guest stamps its wakes with `rdtsc`; the device stamps its injections on the
same counter (the guest's is the host's plus the vCPU's TSC offset), so a latency is a plain
difference with no clock conversion in it. A call costs ~0.2 us here; the stamp is the
instruction itself, so what follows it (the eventfd write) is inside the measured span.
"""
from __future__ import annotations

import ctypes

from vcpu.abi import native_function

# rdtsc; shl rdx, 32; or rax, rdx; ret
rdtsc = native_function(bytes.fromhex("0f31" "48c1e220" "4809d0" "c3"), ctypes.c_uint64)
rdtsc.__doc__ = "The host TSC, as the instruction reads it."
