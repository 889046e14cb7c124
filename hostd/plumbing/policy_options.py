"""The halt-poll policy options shared by `hostd run` and `hostd replay`, and their validation.

Numbers are parsed as strings here and validated in policy_spec_from_args, so every mistake is
one line naming the option. Options left unset stay None so that validation can tell "given"
from "defaulted" (e.g. a grow factor given to a policy that never grows is an error).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from hostd.plumbing.errors import UsageError
from vcpu.policy import (
    HOST_POLICIES,
    KVM_HALT_POLL_NS_DEFAULT,
    POLICIES,
    SEED_HALT_POLL_CYCLES,
    U32_MAX,
    PolicySpec,
)

DEFAULT_POLICY = "fixed"
_DEFAULTS = PolicySpec(policy="guest-haltpoll", host_policy="none", halt_poll_ns=0)
_TSC_FREQ_KHZ = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
_CPUINFO = Path("/proc/cpuinfo")
# kstrtobool's spellings, as the kernel accepts them for a bool module parameter.
_BOOLS = {"y": True, "1": True, "on": True, "n": False, "0": False, "off": False}

# (dest, option) of the knobs that only one host policy / only guest-haltpoll reads.
_HOST_KNOBS = (("halt_poll_ns_grow", "--halt-poll-ns-grow"), ("halt_poll_ns_grow_start", "--halt-poll-ns-grow-start"),
               ("halt_poll_ns_shrink", "--halt-poll-ns-shrink"))
_GUEST_KNOBS = (("guest_halt_poll_ns", "--guest-halt-poll-ns"), ("guest_halt_poll_grow", "--guest-halt-poll-grow"),
                ("guest_halt_poll_grow_start", "--guest-halt-poll-grow-start"),
                ("guest_halt_poll_shrink", "--guest-halt-poll-shrink"),
                ("guest_halt_poll_allow_shrink", "--guest-halt-poll-allow-shrink"))


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "policy",
        "How a halted vCPU waits for its next interrupt. Host parameters carry KVM's module "
        "parameter names (/sys/module/kvm/parameters/), guest ones the haltpoll governor's "
        "(/sys/module/haltpoll/parameters/); defaults are upstream's.")
    g.add_argument(
        "--policy", default=DEFAULT_POLICY, metavar="{" + ",".join(POLICIES) + "}",
        help=f"none: block at once (halt_poll_ns=0). fixed: the 2015 patch, poll the same budget "
        f"on every HLT. adaptive: upstream KVM, a per-vCPU budget that grows after short halts and "
        f"shrinks after long ones, up to --halt-poll-ns. guest-haltpoll: the guest's cpuidle-haltpoll "
        f"polls before HLT, skipping the VM exit; host polling is off (see --host-policy). idle-poll: "
        f"the guest never halts (idle=poll), the latency ceiling at full CPU cost. Default: {DEFAULT_POLICY}.")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument(
        "--halt-poll-ns", metavar="NS",
        help=f"Host poll budget in ns: the budget itself for fixed, the maximum (module parameter "
        f"halt_poll_ns) for adaptive. Defaults: fixed {SEED_HALT_POLL_CYCLES:,} TSC cycles (the "
        f"2015 patch's setting) converted with --tsc-khz; adaptive {KVM_HALT_POLL_NS_DEFAULT} "
        f"(x86's KVM_HALT_POLL_NS_DEFAULT).")
    budget.add_argument(
        "--halt-poll", metavar="CYCLES",
        help="The same budget in TSC cycles, as the 2015 patch's halt_poll parameter took it; "
        "converted to ns with --tsc-khz.")
    g.add_argument(
        "--tsc-khz", metavar="KHZ",
        help="TSC rate for converting cycles to ns. Default: read from the machine "
        "(/sys/devices/system/cpu/cpu0/tsc_freq_khz, else the nominal or current clock in "
        "/proc/cpuinfo when the TSC is constant).")
    g.add_argument(
        "--halt-poll-ns-grow", metavar="N",
        help=f"adaptive: factor by which vcpu->halt_poll_ns grows after a halt that ended after the "
        f"budget but within the maximum. Default {_DEFAULTS.halt_poll_ns_grow}.")
    g.add_argument(
        "--halt-poll-ns-grow-start", metavar="NS",
        help=f"adaptive: the first budget when growing from 0; a shrink that lands below it resets "
        f"the budget to 0. Default {_DEFAULTS.halt_poll_ns_grow_start}.")
    g.add_argument(
        "--halt-poll-ns-shrink", metavar="N",
        help=f"adaptive: divisor applied after a halt longer than the maximum; 0 resets the budget "
        f"to 0 (older kernels' default). Default {_DEFAULTS.halt_poll_ns_shrink} (current upstream).")
    g.add_argument(
        "--guest-halt-poll-ns", metavar="NS",
        help=f"guest-haltpoll: the most the guest polls before HLT, in ns. "
        f"Default {_DEFAULTS.guest_halt_poll_ns}.")
    g.add_argument(
        "--guest-halt-poll-grow", metavar="N",
        help=f"guest-haltpoll: factor by which the guest's per-CPU poll limit grows after an HLT "
        f"that woke within --guest-halt-poll-ns. Default {_DEFAULTS.guest_halt_poll_grow}.")
    g.add_argument(
        "--guest-halt-poll-grow-start", metavar="NS",
        help=f"guest-haltpoll: the first poll limit when growing from 0; a shrink below it resets to "
        f"0. Default {_DEFAULTS.guest_halt_poll_grow_start}.")
    g.add_argument(
        "--guest-halt-poll-shrink", metavar="N",
        help=f"guest-haltpoll: divisor applied after an HLT longer than --guest-halt-poll-ns; 0 "
        f"resets to 0. Default {_DEFAULTS.guest_halt_poll_shrink}.")
    g.add_argument(
        "--guest-halt-poll-allow-shrink", metavar="{Y,N}",
        help="guest-haltpoll: N never shrinks the guest's poll limit. Default Y.")
    g.add_argument(
        "--host-policy", metavar="{" + ",".join(HOST_POLICIES) + "}",
        help="guest-haltpoll only: the host side under the guest's polling. Default none, because "
        "the haltpoll driver disables host polling through MSR_KVM_POLL_CONTROL; fixed or adaptive "
        "model a host without that feature.")
    g.add_argument(
        "--exit-cost-ns", metavar="NS",
        help="Modelled VM exit+entry round trip paid by every halt that reaches the host (the cost "
        "guest-haltpoll exists to avoid): the vCPU burns half of it before the host poll starts "
        "(the exit) and half after the wake (the entry), so it shows in host CPU and in the "
        "guest's wake latency; a halt ended by the guest's own poll pays nothing. Default 0 "
        "(a process emulator has no exit to pay; ~1-2 us is typical of real hardware).")


def cycles_to_ns(cycles: int, tsc_khz: int) -> int:
    """TSC cycles to ns, rounded to nearest: ns = cycles * 10^6 / kHz."""
    return (cycles * 1_000_000 + tsc_khz // 2) // tsc_khz


def tsc_khz_from_machine() -> int:
    """The TSC rate in kHz, from what an unprivileged user can read (dmesg often is not)."""
    try:
        return int(_TSC_FREQ_KHZ.read_text().strip())
    except (OSError, ValueError):
        pass
    try:
        cpuinfo = _CPUINFO.read_text()
    except OSError:
        cpuinfo = ""
    # Only a constant TSC ticks at one rate that a clock figure can stand for.
    if re.search(r"^flags\s*:.*\bconstant_tsc\b", cpuinfo, re.M):
        # Intel's model name carries the nominal clock, which is the TSC rate; "cpu MHz" is the
        # current clock, exact in a VM but only approximate on a host that scales frequency.
        nominal = re.search(r"^model name\s*:.*@\s*([0-9.]+)\s*GHz", cpuinfo, re.M)
        if nominal:
            return round(float(nominal.group(1)) * 1_000_000)
        mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)
        if mhz:
            return round(float(mhz.group(1)) * 1000)
    raise UsageError("cannot read the TSC rate from this machine; give it with --tsc-khz KHZ")


def tsc_khz_from_args(args: argparse.Namespace) -> int:
    """--tsc-khz if given (validated), else the machine's rate."""
    if args.tsc_khz is None:
        return tsc_khz_from_machine()
    khz = _uint("--tsc-khz", args.tsc_khz)
    if khz == 0:
        raise UsageError("--tsc-khz: must be greater than 0")
    return khz


def policy_spec_from_args(args: argparse.Namespace) -> PolicySpec:
    """Validate the policy options into a PolicySpec; errors are one-line UsageErrors."""
    policy = args.policy
    if policy not in POLICIES:
        raise UsageError(f"--policy: unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")

    if args.host_policy is not None and policy != "guest-haltpoll":
        raise UsageError(f"--host-policy: only meaningful with --policy guest-haltpoll "
                         f"(the host side of --policy {policy} is fixed by the policy)")
    if policy == "guest-haltpoll":
        host = args.host_policy or "none"
        if host not in HOST_POLICIES:
            raise UsageError(f"--host-policy: unknown host policy {host!r}; choose one of {', '.join(HOST_POLICIES)}")
    else:
        host = "none" if policy == "idle-poll" else policy

    if args.tsc_khz is not None:
        tsc_khz_from_args(args)  # a bad --tsc-khz is an error even when no cycles need converting
    halt_poll_ns = _host_budget(args, policy, host)

    if host != "adaptive":
        _reject_unused(args, _HOST_KNOBS, "used only by the adaptive host policy")
    if policy != "guest-haltpoll":
        _reject_unused(args, _GUEST_KNOBS, "used only by --policy guest-haltpoll")

    spec = PolicySpec(policy=policy, host_policy=host, halt_poll_ns=halt_poll_ns)
    spec.halt_poll_ns_grow = _param(args.halt_poll_ns_grow, "--halt-poll-ns-grow", spec.halt_poll_ns_grow, lo=1)
    spec.halt_poll_ns_grow_start = _param(args.halt_poll_ns_grow_start, "--halt-poll-ns-grow-start",
                                          spec.halt_poll_ns_grow_start, lo=1)
    spec.halt_poll_ns_shrink = _param(args.halt_poll_ns_shrink, "--halt-poll-ns-shrink", spec.halt_poll_ns_shrink)
    spec.guest_halt_poll_ns = _param(args.guest_halt_poll_ns, "--guest-halt-poll-ns", spec.guest_halt_poll_ns)
    spec.guest_halt_poll_grow = _param(args.guest_halt_poll_grow, "--guest-halt-poll-grow",
                                       spec.guest_halt_poll_grow, lo=1)
    spec.guest_halt_poll_grow_start = _param(args.guest_halt_poll_grow_start, "--guest-halt-poll-grow-start",
                                             spec.guest_halt_poll_grow_start, lo=1)
    spec.guest_halt_poll_shrink = _param(args.guest_halt_poll_shrink, "--guest-halt-poll-shrink",
                                         spec.guest_halt_poll_shrink)
    if args.guest_halt_poll_allow_shrink is not None:
        flag = _BOOLS.get(args.guest_halt_poll_allow_shrink.strip().lower())
        if flag is None:
            raise UsageError(f"--guest-halt-poll-allow-shrink: must be Y or N, "
                             f"got {args.guest_halt_poll_allow_shrink!r}")
        spec.guest_halt_poll_allow_shrink = flag
    spec.exit_cost_ns = _param(args.exit_cost_ns, "--exit-cost-ns", spec.exit_cost_ns, hi=None)
    return spec


def _host_budget(args: argparse.Namespace, policy: str, host: str) -> int:
    """halt_poll_ns for the host side: from --halt-poll-ns / --halt-poll, or the default."""
    given = "--halt-poll-ns" if args.halt_poll_ns is not None else "--halt-poll" if args.halt_poll is not None else None
    if host == "none":
        if given:
            hint = ("choose a host side with --host-policy" if policy == "guest-haltpoll"
                    else "use --policy fixed or adaptive")
            raise UsageError(f"{given}: --policy {policy} does not poll on the host; {hint}")
        return 0
    if args.halt_poll_ns is not None:
        return _uint("--halt-poll-ns", args.halt_poll_ns)
    if args.halt_poll is None and host == "adaptive":
        return KVM_HALT_POLL_NS_DEFAULT
    option = "--halt-poll" if args.halt_poll is not None else "--tsc-khz"
    cycles = SEED_HALT_POLL_CYCLES if args.halt_poll is None else _uint("--halt-poll", args.halt_poll)
    khz = tsc_khz_from_args(args)
    ns = cycles_to_ns(cycles, khz)
    if ns > U32_MAX:
        raise UsageError(f"{option}: {cycles} cycles at {khz} kHz is {ns} ns, more than the kernel's "
                         f"maximum of {U32_MAX} ns")
    return ns


def _reject_unused(args: argparse.Namespace, knobs: tuple[tuple[str, str], ...], why: str) -> None:
    for dest, option in knobs:
        if getattr(args, dest) is not None:
            raise UsageError(f"{option}: {why}; drop it or change --policy")


def _param(text: str | None, option: str, default: int, lo: int = 0, hi: int | None = U32_MAX) -> int:
    if text is None:
        return default
    value = _uint(option, text, hi)
    if value < lo:
        # lo=1 guards the grow factors and grow_start: the kernel accepts 0, but then a budget
        # of 0 never grows, which silently disables polling.
        raise UsageError(f"{option}: must be at least {lo} (0 would keep the budget at 0 forever, "
                         f"i.e. never poll; use --policy none for that), got {value}")
    return value


def _uint(option: str, text: str, hi: int | None = U32_MAX) -> int:
    """A whole number >= 0 (and <= hi: module parameters are `unsigned int`)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{option}: must be a whole number >= 0, got {text!r}")
    if hi is not None and value > hi:
        raise UsageError(f"{option}: must be at most {hi} (the kernel parameter is an unsigned int), got {value}")
    return value
