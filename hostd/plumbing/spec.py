"""The VM spec: what to launch, built and validated from the command line."""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field

from hostd.plumbing import backend, calibration
from hostd.plumbing.backend import add_backend_option
from hostd.plumbing.errors import UsageError
from vcpu.guest import WORKLOADS
from vcpu.policy import PolicySpec

DEFAULT_INTERVAL_US = 500
# rr: TCP_RR's quoted round trips are 26.7-34 us (dynamic halt-polling, 2015), of which a few us
# are the two hosts' own work; the wait inside the guest's halt is about 20 us. 20 us of device
# time puts rr's halts at that scale: far inside the 200 us / 500 us poll budgets, as TCP_RR's are.
DEFAULT_RR_SERVICE_US = 20
DEFAULT_TICK_HZ = 2.5  # per vCPU: the seed's idle 4-vCPU Linux guest halts ~10 times/s
SAFETY_TIMEOUT_MS = 1000
MAX_CPU = 65535  # bounds --cpus ranges before they become lists


@dataclass
class VmSpec:
    vm: str
    vcpus: int
    workload: str
    policy: PolicySpec
    vcpu_cpus: list[int] | None  # None: not pinned (--no-pin)
    device_cpu: int | None
    overcommit: bool
    interval_ns: int = DEFAULT_INTERVAL_US * 1000
    tick_hz: float = DEFAULT_TICK_HZ
    io_file: str | None = None
    io_service_ns: int | None = None
    duration_s: float | None = None
    sample_capacity: int = 1 << 20
    safety_timeout_ms: int = SAFETY_TIMEOUT_MS
    shm: str = ""
    backend: str = "emu"  # "emu": emulated halt polling; "kvm": a real KVM VM per vCPU (DESIGN §9)
    irqfds: list[int] | None = None  # kvm: one eventfd per vCPU, the device's irqfd into that VM
    calibration: dict | None = None  # emu: the profile applied (calibration.Profile.to_dict()), or None
    extra: dict = field(default_factory=dict)

    def to_wire(self) -> dict:
        d = asdict(self)
        d["policy"] = self.policy.to_dict()
        return d


def add_vm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("VM")
    g.add_argument("--vcpus", default="1", metavar="N", help="number of vCPU processes (default 1)")
    g.add_argument(
        "--cpus", metavar="LIST",
        help="host CPUs for the vCPUs, e.g. 1-3 or 1,3; vCPUs are spread round-robin. "
        "Default: every CPU but the device's. More vCPUs than CPUs is overcommit, and is reported.",
    )
    g.add_argument("--device-cpu", metavar="CPU", help="host CPU for the device process "
                   "(default: the first CPU not used by vCPUs, so it never steals a vCPU's core)")
    g.add_argument("--no-pin", action="store_true", help="do not pin: let the scheduler migrate the processes")
    add_backend_option(g)
    calibration.add_calibration_option(g)
    w = p.add_argument_group("workload")
    w.add_argument("--workload", default="timer", metavar="{idle,io,timer,rr}",
                   help="timer: arm a TSC-deadline-like timer, halt, measure wake - deadline; "
                   "io: synchronous O_DSYNC writes, halt until each completes (writes/s); "
                   "idle: an idle guest woken by its tick (host CPU per idle vCPU); "
                   "rr: TCP_RR-like request/response, round-trip latency per transaction. Default timer")
    w.add_argument("--interval-us", default=str(DEFAULT_INTERVAL_US), metavar="US",
                   help=f"timer: deadline distance in microseconds (default {DEFAULT_INTERVAL_US})")
    w.add_argument("--tick-hz", default=str(DEFAULT_TICK_HZ), metavar="HZ",
                   help=f"idle: timer ticks per second per vCPU (default {DEFAULT_TICK_HZ}, a NOHZ Linux "
                   "guest; 100 for a Windows-like guest)")
    w.add_argument("--io-file", metavar="PATH",
                   help="io: file the device writes with O_DSYNC (default: a temp file on the host disk)")
    w.add_argument("--io-service-ns", metavar="NS",
                   help="io: model each write as this many ns of device time instead of a real write")
    w.add_argument("--rr-service-us", default=str(DEFAULT_RR_SERVICE_US), metavar="US",
                   help=f"rr: the device answers each request after this many microseconds (default "
                   f"{DEFAULT_RR_SERVICE_US}: TCP_RR's quoted 27-34 us round trips less the hosts' own work)")
    w.add_argument("--rr-bare", action="store_true",
                   help="rr: no vCPU: a bare process ping-pongs with the device (the 'host alone' reference)")


def parse_int(name: str, text: str, lo: int, hi: int | None = None) -> int:
    try:
        v = int(text, 10)
    except (TypeError, ValueError):
        raise UsageError(f"{name}: expected a whole number, got {text!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise UsageError(f"{name}: {v} is out of range ({lo}..{hi if hi is not None else 'any'})")
    return v


def parse_float(name: str, text: str, lo_exclusive: float, hi: float) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{name}: expected a number, got {text!r}") from None
    if not (lo_exclusive < v <= hi):  # also rejects nan
        raise UsageError(f"{name}: {text} is out of range (must be > {lo_exclusive:g} and <= {hi:g})")
    return v


def parse_cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi or lo)
            if a < 0 or b < a or b > MAX_CPU:
                raise ValueError
            cpus.extend(range(a, b + 1))
    except ValueError:
        raise UsageError(f"--cpus: expected a list like 1-3 or 0,2, got {text!r}") from None
    return cpus


def _check_cpus(option: str, cpus: list[int], allowed: list[int]) -> None:
    for cpu in cpus:
        if cpu not in allowed:
            raise UsageError(f"{option}: CPU {cpu} does not exist or is not allowed (usable: {_fmt(allowed)})")


def _fmt(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def place(vcpus: int, cpus_text: str | None, device_text: str | None, no_pin: bool):
    """Choose CPUs: the device on a core of its own where one is spare, vCPUs round-robin."""
    if no_pin:
        return None, None, vcpus + 1 > os.cpu_count()
    allowed = sorted(os.sched_getaffinity(0))
    device = None if device_text is None else parse_int("--device-cpu", device_text, 0)
    if device is not None:
        _check_cpus("--device-cpu", [device], allowed)
    if cpus_text is None:
        device = allowed[0] if device is None else device
        vcpu_set = [c for c in allowed if c != device] or [device]
    else:
        vcpu_set = sorted(set(parse_cpu_list(cpus_text)))
        _check_cpus("--cpus", vcpu_set, allowed)
        if device is None:
            device = next((c for c in allowed if c not in vcpu_set), vcpu_set[0])
    vcpu_cpus = [vcpu_set[i % len(vcpu_set)] for i in range(vcpus)]
    overcommit = vcpus > len(vcpu_set) or device in vcpu_set
    return vcpu_cpus, device, overcommit


def vm_spec_from_args(args: argparse.Namespace, policy: PolicySpec, vm: str = "vm0") -> VmSpec:
    vcpus = parse_int("--vcpus", args.vcpus, 1, 256)
    if args.workload not in WORKLOADS:
        raise UsageError(f"--workload: unknown workload {args.workload!r} (choose from {', '.join(WORKLOADS)})")
    profile = profile_from_args(args)  # first: a profile given to kvm is wrong wherever kvm runs
    backend.check(args.backend, policy, args.kvm_module_params)
    vcpu_cpus, device_cpu, overcommit = place(vcpus, args.cpus, args.device_cpu, args.no_pin)
    io_service_ns = None if args.io_service_ns is None else parse_int("--io-service-ns", args.io_service_ns, 0, 10**10)
    if args.workload == "rr":
        if args.backend != "emu":
            raise UsageError("--workload rr: emulator only (the kvm backend's guest has no rr workload)")
        # rr's answer is io's modelled completion, its service time given in us.
        io_service_ns = parse_int("--rr-service-us", args.rr_service_us, 0, 10_000_000) * 1000
    elif args.rr_bare:
        raise UsageError("--rr-bare: only with --workload rr")
    if args.io_file is not None:
        parent = os.path.dirname(os.path.abspath(args.io_file))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise UsageError(f"--io-file: cannot create a file in {parent!r}")
        if os.path.isdir(args.io_file):
            raise UsageError(f"--io-file: {args.io_file!r} is a directory")
    return VmSpec(
        vm=vm,
        vcpus=vcpus,
        workload=args.workload,
        policy=policy,
        vcpu_cpus=vcpu_cpus,
        device_cpu=device_cpu,
        overcommit=overcommit,
        interval_ns=parse_int("--interval-us", args.interval_us, 1, 10_000_000) * 1000,
        tick_hz=parse_float("--tick-hz", args.tick_hz, 0.0, 100_000.0),
        io_file=args.io_file,
        io_service_ns=io_service_ns,
        backend=args.backend,
        calibration=profile.to_dict() if profile else None,
        extra={"bare": True} if args.rr_bare else {},
    )


def profile_from_args(args: argparse.Namespace) -> calibration.Profile | None:
    """--calibration, resolved once per command (tune builds a spec per point): the emulator's
    profile, or None. The kvm backend is the kernel itself: a profile given for it is an error."""
    if args.backend != "emu":
        if args.calibration not in (None, "none"):
            raise UsageError("--calibration: a profile is for the emulator; --backend kvm measures the kernel itself")
        return None
    if not hasattr(args, "resolved_calibration"):
        args.resolved_calibration = calibration.resolve(args.calibration)
    return args.resolved_calibration


def parse_duration(text: str) -> float:
    return parse_float("--duration", text, 0.0, 7 * 24 * 3600.0)
