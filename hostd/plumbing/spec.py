"""The VM spec: what to launch, built and validated from the command line."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass, field

from hostd.plumbing import backend, calibration
from hostd.plumbing.backend import add_backend_option
from hostd.plumbing.errors import UsageError
from hostd.plumbing.neighbour import NeighbourSpec, add_neighbour_option, parse_neighbour
from irqsrc.sources import io_base_dir
from vcpu.emu.guest import WORKLOADS
from vcpu.policy import PolicySpec

DEFAULT_INTERVAL_US = 500
# rr: TCP_RR's quoted round trips are 26.7-34 us (dynamic halt-polling, 2015), of which a few us
# are the two hosts' own work; the wait inside the guest's halt is about 20 us. 20 us of device
# time puts rr's halts at that scale: far inside the 200 us / 500 us poll budgets, as TCP_RR's are.
DEFAULT_RR_SERVICE_US = 20
DEFAULT_TICK_HZ = 2.5  # per vCPU: the seed's idle 4-vCPU Linux guest halts ~10 times/s
SAFETY_TIMEOUT_MS = 1000
MAX_CPU = 65535  # bounds --cpus ranges before they become lists
# Filesystems that complete an O_DSYNC write in memory: a run writing there measures no disk.
VOLATILE_FS = ("tmpfs", "ramfs")
MOUNTINFO = "/proc/self/mountinfo"


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
    io_file: str | None = None  # --io-file; hostd sets it to the default file when it makes one (Vm.start)
    io_dir: str | None = None  # the private directory hostd made for the default io file, or None
    io_fs: str | None = None  # the filesystem type the io file is on, as /proc/self/mountinfo says
    io_service_ns: int | None = None
    duration_s: float | None = None
    sample_capacity: int = 1 << 20
    safety_timeout_ms: int = SAFETY_TIMEOUT_MS
    shm: str = ""
    backend: str = "emu"  # "emu": emulated halt polling; "kvm": a real KVM VM per vCPU (DESIGN §9)
    irqfds: list[int] | None = None  # kvm: one eventfd per vCPU, the device's irqfd into that VM
    submit_fds: list[int] | None = None  # io, rr: one eventfd per vCPU, its submit notify to the device
    calibration: dict | None = None  # emu: the profile applied (calibration.Profile.to_dict()), or None
    neighbour: NeighbourSpec | None = None  # --neighbour: one per vCPU CPU, spinning a duty cycle
    extra: dict = field(default_factory=dict)

    def to_wire(self) -> dict:
        d = asdict(self)
        d["policy"] = self.policy.to_dict()
        return d

    def neighbour_cpus(self) -> list[int]:
        """The CPUs that get a neighbour: each vCPU's, once (none without --neighbour)."""
        if self.neighbour is None or self.vcpu_cpus is None:
            return []
        return sorted(set(self.vcpu_cpus))

    def real_io(self) -> bool:
        """The device does real O_DSYNC writes to a file (io without --io-service-ns)."""
        return self.workload == "io" and self.io_service_ns is None

    def io_summary(self) -> dict:
        """The result's spec.io: the file as given ("(temp file)" for the default), the directory
        it was in and that directory's filesystem type, so a reader sees what the writes measured."""
        given = self.io_file if self.io_dir is None else None
        where = os.path.dirname(self.io_dir) if self.io_dir else (
            os.path.dirname(os.path.abspath(given)) if given else None)
        return {"file": given or "(temp file)", "dir": where, "fs": self.io_fs, "service_ns": self.io_service_ns}


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash in paths as octal (\\040)."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field_ = field_.replace(code, ch)
    return field_


def fs_type(path: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the filesystem `path` is on (it need not exist yet): the mount with the longest
    mount point containing it, the last mounted where several share one. None if unknown."""
    target = os.path.realpath(path)
    best, best_len = None, -1
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount = _unescape(fields[4])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= best_len:
            best, best_len = right.split()[0], len(mount)
    return best


_warned: set[str] = set()


def warn_if_volatile(path: str, what: str) -> str | None:
    """One line on stderr, once per process and path, if `path` is on a filesystem that ignores
    O_DSYNC (the run goes on). Returns the filesystem type."""
    fs = fs_type(path)
    if fs in VOLATILE_FS and path not in _warned:
        _warned.add(path)
        sys.stderr.write(f"hostd: warning: {what} is on {fs}, which ignores O_DSYNC: "
                         "the writes measure memory, not a disk\n")
    return fs


def default_io_dir() -> str:
    """The directory the default io file's private directory goes in, warned about if volatile."""
    base = io_base_dir()
    warn_if_volatile(base, f"the default io file's directory {base}")
    return base


def check_io_file(path: str) -> None:
    """Refuse an --io-file the device could not open for O_DSYNC writes, as the device opens it
    (read-write, created if missing). A file this check creates is removed again."""
    flags = os.O_RDWR | os.O_DSYNC | os.O_CLOEXEC
    try:
        try:
            fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
        except FileExistsError:
            fd, created = os.open(path, flags), False
    except OSError as exc:
        raise UsageError(f"--io-file: cannot write {path!r}: {exc.strerror or exc}") from None
    os.close(fd)
    if created:
        try:
            os.unlink(path)
        except OSError:
            pass


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
    add_neighbour_option(g)
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
                   help="io: file the device writes with O_DSYNC (default: a temp file on the host disk, "
                   "under /var/tmp, not /tmp, which is tmpfs on many laptops; a file on tmpfs is warned about)")
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
    neighbour = None if args.neighbour is None else parse_neighbour(args.neighbour)
    if neighbour is not None and args.no_pin:
        raise UsageError("--neighbour: a neighbour is pinned to each vCPU's CPU; not with --no-pin")
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
        check_io_file(args.io_file)  # before any process starts: one line and exit 2
    if args.workload == "io" and io_service_ns is None:
        if args.io_file is not None:
            warn_if_volatile(args.io_file, f"--io-file {args.io_file}")
        else:
            default_io_dir()
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
        neighbour=neighbour,
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
