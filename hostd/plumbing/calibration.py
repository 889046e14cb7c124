"""Calibration profiles: this machine's measured costs of virtualization, as a JSON file.

`hostd calibrate` measures them on a real KVM guest and writes a profile; the emulator then spends
each cost as a real CPU spin on the vCPU's core, so its latency and host CPU carry what a real exit,
entry and injection cost here. Every way a profile can be wrong is one line naming the file.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from dataclasses import dataclass

from hostd.plumbing.errors import UsageError
from hostd.plumbing.output import atomic_write
from hostd.plumbing.policy_options import tsc_khz_from_machine

FORMAT = "haltpoll-emu calibration profile"
VERSION = 2  # 2: port_exit_ns (an exit to the VMM in user space) became submit_exit_ns (a KVM_IOEVENTFD)
MAX_NS = 10_000_000  # 10 ms: no single exit or wake costs that much; a bigger figure is a broken measurement
COSTS = (
    ("vm_exit_ns", "VM exit + re-entry round trip (a guest cpuid, handled inside the kernel)"),
    ("poll_wake_ns", "device injection (irqfd write) to the guest ISR when the host's halt poll caught "
                     "it: the entry + injection a woken vCPU pays"),
    ("timer_poll_wake_ns", "guest TSC-deadline expiry to the guest ISR when the host's halt poll caught it"),
    ("running_inject_ns", "injection to ISR into a running vCPU (an idle=poll guest): the kick out of guest mode"),
    ("block_wake_ns", "injection to ISR when the vCPU thread had blocked (no polling)"),
    ("timer_block_wake_ns", "TSC-deadline expiry to ISR when the vCPU had blocked"),
    ("submit_exit_ns", "guest port write to the submit port, a KVM_IOEVENTFD: the exit handled in the kernel, "
                       "the eventfd signalled, the guest resumed: the io and rr workloads' submit"),
    ("isr_exit_ns", "the guest's own time from its device ISR to its next halt on io (the PIC EOI's exit, iret, "
                    "the next submit's exit) with a 2 ms cap: what an interrupt costs the guest after it is taken"),
    ("timer_isr_exit_ns", "the same for the TSC-deadline ISR (the x2APIC EOI's wrmsr, iret, the next deadline's wrmsr)"),
    ("block_penalty_ns", "the scheduler's block penalty: a process blocked on the vCPU's CPU woken from the "
                         "device's CPU (any process pays it; the emulator's block path does, for real)"),
    ("timer_block_penalty_ns", "the same for a process sleeping to a deadline on its own CPU (its hrtimer)"),
)
_COST_NAMES = tuple(name for name, _ in COSTS)
_PROFILES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiles")
SHIPPED = {"seed-2015": os.path.join(_PROFILES_DIR, "seed-2015.json")}


@dataclass(frozen=True)
class Profile:
    path: str  # "" when not from a file
    label: str
    derived: bool  # True: computed from figures quoted elsewhere, not measured on any machine
    machine: dict
    date: str
    costs: dict[str, int]
    detail: dict

    @property
    def name(self) -> str:
        """Short enough to follow "calibration: " in a table heading."""
        if self.derived:
            stem = os.path.splitext(os.path.basename(self.path))[0]
            return f"{stem} (derived from quoted figures, not measured)"
        return f"this machine's ({self.machine.get('cpu_model')}, {self.date[:10]})"

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "path": self.path, "label": self.label,
                "derived": self.derived, "machine": self.machine, "date": self.date,
                "costs_ns": self.costs, "detail": self.detail}

    def cost(self, name: str) -> int:
        return self.costs[name]


def name_of(doc: dict | None) -> str:
    """Profile.name of a profile as results JSON carries it (Profile.to_dict(), or None)."""
    if doc is None:
        return "none (the raw emulator)"
    return Profile(path=doc["path"], label=doc["label"], derived=doc["derived"], machine=doc["machine"],
                   date=doc["date"], costs=doc["costs_ns"], detail=doc["detail"]).name


def this_machine() -> dict:
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read().splitlines()
    except OSError:
        cpuinfo = []
    fields: dict[str, str] = {}
    for line in cpuinfo:  # the first CPU's lines speak for all
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    try:
        tsc_khz = tsc_khz_from_machine()
    except UsageError:
        tsc_khz = None  # a profile is still worth having where the TSC rate cannot be read
    return {"cpu_model": fields.get("model name"), "kernel": os.uname().release, "tsc_khz": tsc_khz,
            "nested": "hypervisor" in fields.get("flags", "").split()}


def default_path() -> str:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(config, "haltpoll-emu", "calibration.json")


def _checked_costs(costs: object, where: str) -> dict[str, int]:
    if not isinstance(costs, dict):
        raise UsageError(f"{where}: not a calibration profile (\"costs_ns\" is not an object)")
    unknown = sorted(set(costs) - set(_COST_NAMES))
    if unknown:
        raise UsageError(f"{where}: unknown cost {unknown[0]} (known: {', '.join(_COST_NAMES)})")
    for name in _COST_NAMES:
        if name not in costs:
            raise UsageError(f"{where}: cost {name} is missing")
        value = costs[name]
        if type(value) is not int:  # bool is an int subclass, and true is no number of ns
            raise UsageError(f"{where}: cost {name} = {json.dumps(value)} is not an integer number of ns")
        if not 0 <= value < MAX_NS:
            raise UsageError(f"{where}: cost {name} = {value:,} ns is out of range (0 .. {MAX_NS - 1:,} ns)")
    return {name: costs[name] for name in _COST_NAMES}


def write(path: str, costs: dict, detail: dict, machine: dict | None = None,
          date: str | None = None) -> Profile:
    profile = Profile(
        path=os.path.abspath(path), label="measured on this machine by hostd calibrate", derived=False,
        machine=this_machine() if machine is None else machine,
        date=date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        costs=_checked_costs(costs, f"calibration {path}: not written"), detail=detail)
    doc = profile.to_dict()
    del doc["path"]  # where the file lies is known to whoever reads it, and files get moved
    atomic_write(path, json.dumps(doc, indent=2) + "\n")
    return profile


def format_version(path: str) -> int | None:
    """The format version of the profile at `path`, or None where it is no readable profile
    (load() says what is wrong with it)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or type(doc.get("version")) is not int:
        return None
    return doc["version"]


def older_format(path: str) -> int | None:
    """The version of the profile at `path` if an older haltpoll-emu wrote it (to measure again), else None."""
    version = format_version(path)
    return version if version is not None and version < VERSION else None


def load(path: str, default: bool = False) -> Profile:
    """default: `path` is default_path(), which the user did not name (`hostd calibrate` rewrites it)."""
    where = f"--calibration {path}"
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file (run `hostd calibrate` to measure this machine, "
                         f"or --calibration none)") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{where}: cannot read it: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: cannot read it: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: not a calibration profile (a JSON {type(doc).__name__}, not an object)")
    if doc.get("format") != FORMAT:
        raise UsageError(f"{where}: not a calibration profile (no \"format\": \"{FORMAT}\")")
    version = doc.get("version")
    if type(version) is not int:
        raise UsageError(f"{where}: not a calibration profile (no integer \"version\")")
    if version != VERSION:
        again = "`hostd calibrate`" if default else f"`hostd calibrate --out {shlex.quote(path)}`"
        if version < VERSION:  # its costs were measured as this haltpoll-emu no longer spends them
            raise UsageError(f"{where}: profile format version {version}, older than this haltpoll-emu's "
                             f"{VERSION}: measure this machine again with {again}")
        raise UsageError(f"{where}: profile format version {version}, this haltpoll-emu reads version "
                         f"{VERSION}: a newer haltpoll-emu wrote it (or measure again with {again})")
    doc.setdefault("detail", {})  # optional: raw measurements, for a reader, not the emulator
    for key, kind, what in (("label", str, "a string"), ("derived", bool, "true or false"),
                            ("machine", dict, "an object"), ("date", str, "a string"), ("detail", dict, "an object")):
        if not isinstance(doc.get(key), kind):
            raise UsageError(f"{where}: not a calibration profile (\"{key}\" is not {what})")
    return Profile(path=os.path.abspath(path), label=doc["label"], derived=doc["derived"],
                   machine=doc["machine"], date=doc["date"], costs=_checked_costs(doc.get("costs_ns"), where),
                   detail=doc["detail"])


def machine_warning(profile: Profile, here: dict | None = None) -> str | None:
    """A measured profile's costs are only this machine's if its CPU is this one; a derived
    profile says in its name that it is no machine's measurement."""
    if profile.derived:
        return None
    there = profile.machine.get("cpu_model")
    here_cpu = (this_machine() if here is None else here).get("cpu_model")
    if there == here_cpu:
        return None
    return (f"calibration {profile.path} was measured on {there}, this machine is {here_cpu}: "
            f"its costs are used as they are")


def resolve(text: str | None) -> Profile | None:
    """The --calibration option's meaning; None is the raw emulator."""
    if text == "none":
        return None
    if text in SHIPPED:
        return load(SHIPPED[text])
    if text is None:
        path = default_path()
        if not os.path.exists(path):
            return None
        try:
            profile = load(path, default=True)
        except UsageError as exc:  # the user did not name this file, so say where it came from
            raise UsageError(f"{exc} (the default profile; --calibration none runs without it)") from None
    else:
        profile = load(text)
    warning = machine_warning(profile)
    if warning:
        print(f"hostd: warning: {warning}", file=sys.stderr)
    return profile


def add_calibration_option(group) -> None:
    group.add_argument(
        "--calibration", metavar="FILE|none|" + "|".join(SHIPPED), default=None,
        help="A profile of measured virtualization costs the emulator spends as real spins on the "
        "vCPU's core: the VM exit on every halt that reaches the host, the entry + injection on "
        "every wake, and the injection into a running vCPU for idle-poll. Default: this machine's "
        f"profile written by `hostd calibrate` ({default_path()}) if present. none: the raw "
        "emulator, no costs. seed-2015: costs derived from the 2015 patch's quoted bare-metal "
        "figures, not measured.")
