"""What virtualization costs an emulated vCPU, spent as real CPU time on its own core.

A calibration profile (hostd/plumbing/calibration.py) holds the kernel's costs measured on a
machine; `--exit-cost-ns` is the older flat model (half on the halt's exit, half on the entry).
The emulator spins them where the kernel pays them, so host CPU per vCPU stays honest: a spin
is CPU the vCPU thread burns, as a real VM exit burns the host's.
"""
from __future__ import annotations

import time
from typing import NamedTuple


class Costs(NamedTuple):
    exit_ns: int = 0         # a halt's VM exit, before the host looks at the budget
    entry_ns: int = 0        # entry + injection when the host's poll caught an interrupt
    timer_entry_ns: int = 0  # the same for the vCPU's own TSC deadline (the host hrtimer's trip included)
    block_entry_ns: int = 0  # entry + injection after a block: the kernel's blocked wake less the
    timer_block_entry_ns: int = 0  # scheduler's own penalty, which our block path pays for real
    running_ns: int = 0      # an interrupt for a vCPU in guest mode (idle=poll, a guest poll): a kick out and in
    eoi_ns: int = 0          # after a device interrupt's ISR: its EOI's exit and the rest of the guest's way to
                             # its next halt, as the kernel's guest took it (less the submit, spent apart)
    arm_ns: int = 0          # writing IA32_TSC_DEADLINE: an exit round trip
    submit_ns: int = 0       # the io and rr submit: a port write the kernel turns into an eventfd signal
                             # (KVM_IOEVENTFD), exit to re-entry
    timer_eoi_ns: int = 0    # eoi_ns for the TSC-deadline ISR (less the next arm, spent apart)
    resume_ns: int = 0       # the kernel's blocked vCPU thread runs again this long after its interrupt: its
    timer_resume_ns: int = 0  # blocked wake less a polled one (the entry and injection both pay); its halt_ns
                              # ends there. 0: the raw emulator's halt is its own

    @classmethod
    def of(cls, exit_cost_ns: int, profile_costs: dict | None) -> Costs:
        """profile_costs: a profile's costs_ns (None: the raw emulator, plus the flat model if any).
        A round trip's exit half is spent at the halt; its entry half is inside the wake costs."""
        c = dict.fromkeys(("vm_exit_ns", "poll_wake_ns", "timer_poll_wake_ns", "running_inject_ns", "submit_exit_ns",
                           "block_wake_ns", "block_penalty_ns", "timer_block_wake_ns", "timer_block_penalty_ns",
                           "isr_exit_ns", "timer_isr_exit_ns"), 0)
        c.update(profile_costs or {})
        half = exit_cost_ns // 2
        trip = c["vm_exit_ns"]
        return cls(half + trip // 2, half + c["poll_wake_ns"], half + c["timer_poll_wake_ns"],
                   half + max(0, c["block_wake_ns"] - c["block_penalty_ns"]),
                   half + max(0, c["timer_block_wake_ns"] - c["timer_block_penalty_ns"]),
                   c["running_inject_ns"], max(0, c["isr_exit_ns"] - c["submit_exit_ns"]), trip,
                   c["submit_exit_ns"], max(0, c["timer_isr_exit_ns"] - trip),
                   max(0, c["block_wake_ns"] - c["poll_wake_ns"]),
                   max(0, c["timer_block_wake_ns"] - c["timer_poll_wake_ns"]))


def spin_until(end_ns: int) -> None:
    """Burn CPU until CLOCK_MONOTONIC reaches end_ns."""
    now = time.monotonic_ns
    while now() < end_ns:
        pass


def spin_ns(ns: int) -> None:
    if ns:
        spin_until(time.monotonic_ns() + ns)
