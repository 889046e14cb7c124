"""The one place hostd picks the vCPU backend: the emulator, or a real KVM VM per vCPU (DESIGN §9).

Everything above this (results, stat, metrics, compare, tune) sees the same counters under
KVM's names; on kvm they are the kernel's own, and what only the emulator can count is null.
"""
from __future__ import annotations

import argparse

from hostd.plumbing import kvm_params
from hostd.plumbing.errors import UsageError
from vcpu.kvm import kvm_api, kvm_guest
from vcpu.kvm.kvm_vcpu import halt_poll_cap
from vcpu.policy import PolicySpec

BACKENDS = ("emu", "kvm")
# What a kvm vCPU cannot know, null (never 0) in its counters: the emulator's wake-protocol
# counters (DESIGN §3), the per-vCPU halt_poll_ns the kernel keeps to itself, and the guest-side
# counters of the emulator's guests (the kvm guest counts only its interrupts: ops).
KVM_UNKNOWN = (
    "irq_coalesced", "spurious_wakeup", "lost_wakeup", "late_wakeup", "halt_poll_preempted", "halt_poll_ns",
    "guest_halt_poll_success", "guest_halt_poll_fail", "guest_halt_poll_ns", "guest_poll_ns", "idle_periods",
    "timer_local", "ring_full", "block_wake_excess_ns",
)


def add_backend_option(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--backend", default="emu", metavar="{emu,kvm}",
                   help="emu: emulated halt polling (default); kvm: each vCPU process runs a real 1-vCPU "
                   "KVM VM and the kernel's own halt polling (needs /dev/kvm)")
    g.add_argument("--kvm-module-params", action="store_true",
                   help="kvm, policy fixed: the 2015 never-shrink poll through the kvm module parameters "
                   "(root; refused where they are read-only)")


def check(backend: str, policy: PolicySpec, module_params: bool = False) -> None:
    """Refuse, in one line, a backend this machine or this policy cannot run."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend: unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "emu":
        if module_params:
            raise UsageError("--kvm-module-params: only with --backend kvm")
        return
    if policy.policy == "guest-haltpoll":
        raise UsageError("--policy guest-haltpoll: not available with --backend kvm "
                         "(the project's guest has no cpuidle-haltpoll driver)")
    if policy.exit_cost_ns:
        raise UsageError("--exit-cost-ns: the emulator's model; on --backend kvm every exit is real")
    try:
        kvm_api.probe()
    except kvm_api.KvmUnavailable as exc:
        raise UsageError(f"--backend kvm: {exc}") from None
    if module_params:
        _check_module_params(policy)


def _check_module_params(policy: PolicySpec) -> None:
    if policy.policy != "fixed":
        raise UsageError("--kvm-module-params: only for --policy fixed (the 2015 never-shrink poll)")
    kvm_params.check_writable()


def describe(backend: str, policy: PolicySpec, workload: str, module_params: bool = False) -> dict | None:
    """spec.kvm in the result: what the kernel was asked to do, and what a latency sample spans."""
    if backend != "kvm":
        return None
    cap, kernel_policy = halt_poll_cap(policy)
    if module_params:
        kernel_policy = ("the 2015 never-shrink fixed: the kernel's adaptive polling with module parameters "
                         "halt_poll_ns_grow_start = the budget and halt_poll_ns_shrink = 1, capped at the budget")
    return {"halt_poll_cap_ns": cap, "kernel_policy": kernel_policy,
            "latency_span": kvm_guest.LATENCY_SPAN[workload]}
