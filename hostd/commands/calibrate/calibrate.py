"""`hostd calibrate`: what virtualization costs on this machine, measured on the kernel itself.

Each cost comes from a real KVM VM (hostd/commands/calibrate/kvm_probe.py), p50 over its wakes and the
median over --repeat rounds, the rounds interleaved so drift hits every probe alike:

- vm_exit_ns:          the guest's back-to-back `cpuid`, an exit the kernel handles itself;
- submit_exit_ns:      back-to-back writes to the submit port, a KVM_IOEVENTFD (the io and rr
                       workloads' submit, a VMM's virtio notify): the kernel handles each exit,
                       signals the eventfd and re-enters; user space never sees them;
- poll_wake_ns:        device irqfd write -> guest ISR with a 2 ms poll cap: the host's poll
                       catches every completion (a modelled 100 us device service);
- block_wake_ns:       the same with cap 0: the vCPU thread had blocked;
- running_inject_ns:   the same into an idle=poll guest, which never leaves guest mode;
- timer_poll_wake_ns,
  timer_block_wake_ns: TSC deadline -> guest ISR with the 2 ms cap and with cap 0;
- isr_exit_ns,
  timer_isr_exit_ns:   in those two polled probes, the guest's own time from its ISR's first rdtsc
                       to its next halt: the EOI's exit and the next submit's (io) or arm's (timer);
- block_penalty_ns,
  timer_block_penalty_ns: the scheduler's part of those two blocked wakes, as bare processes on
                       the same CPUs pay it (hostd/commands/calibrate/sched_probe.py).

The profile (hostd/plumbing/calibration.py) is what `--calibration` makes the emulator spend.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from hostd.commands.calibrate import kvm_probe, sched_probe
from hostd.plumbing import calibration
from hostd.plumbing.errors import UsageError
from hostd.plumbing.output import check_out_file
from hostd.plumbing.spec import parse_float, parse_int
from vcpu.kvm import kvm_api

POLL_CAP_NS = 2_000_000  # far above the probes' halts: every wake a poll hit
SERVICE_NS = 100_000  # the device's modelled write: halts long enough to poll, short enough for many wakes
POLL_HIT_MIN = 0.9  # a "poll hit" probe whose polls mostly failed measured something else
DISTURBED = 0.3  # as compare's: other processes' load on our CPUs above this, in cores


def _probes(seconds: float) -> list[tuple[str, callable]]:
    """(label, probe) in run order; each returns a dict of its figures (kvm_probe's for the VMs)."""
    house, vcpu = kvm_probe.cpus()
    samples = max(100, int(seconds / sched_probe.GAP_S / 2))
    return [
        ("exits", lambda: kvm_probe.loop("exits", seconds)),
        ("submits (ioeventfd)", lambda: kvm_probe.loop("ports", seconds)),
        ("io, poll cap 2 ms", lambda: kvm_probe.io(POLL_CAP_NS, seconds, service_ns=SERVICE_NS)),
        ("io, cap 0", lambda: kvm_probe.io(0, seconds, service_ns=SERVICE_NS)),
        ("io, idle=poll guest", lambda: kvm_probe.io(0, seconds, spin=True, service_ns=SERVICE_NS)),
        ("timer, poll cap 2 ms", lambda: kvm_probe.timer(POLL_CAP_NS, seconds)),
        ("timer, cap 0", lambda: kvm_probe.timer(0, seconds)),
        ("scheduler, cross-CPU wake", lambda: {"p50_ns": sched_probe.wake(samples, house, vcpu)}),
        ("scheduler, own timer", lambda: {"p50_ns": sched_probe.timer(samples, vcpu)}),
    ]


# Which probe's which figure each cost is.
SOURCES = {
    "vm_exit_ns": ("exits", "round_trip_ns"),
    "submit_exit_ns": ("submits (ioeventfd)", "round_trip_ns"),
    "poll_wake_ns": ("io, poll cap 2 ms", "wake_ns_p50"),
    "block_wake_ns": ("io, cap 0", "wake_ns_p50"),
    "running_inject_ns": ("io, idle=poll guest", "wake_ns_p50"),
    "timer_poll_wake_ns": ("timer, poll cap 2 ms", "wake_ns_p50"),
    "timer_block_wake_ns": ("timer, cap 0", "wake_ns_p50"),
    "isr_exit_ns": ("io, poll cap 2 ms", "isr_ns_p50"),
    "timer_isr_exit_ns": ("timer, poll cap 2 ms", "isr_ns_p50"),
    "block_penalty_ns": ("scheduler, cross-CPU wake", "p50_ns"),
    "timer_block_penalty_ns": ("scheduler, own timer", "p50_ns"),
}
POLLED = ("io, poll cap 2 ms", "timer, poll cap 2 ms")


def costs_of(rounds: list[dict[str, dict]]) -> dict[str, int]:
    """The median over rounds of each probe's figure; a figure no round measured is an error."""
    out = {}
    for name, (probe, key) in SOURCES.items():
        values = [r[probe][key] for r in rounds if r[probe].get(key) is not None]
        if not values:
            raise RuntimeError(f"calibrate: the {probe!r} probe measured no {key} (no wakes?)")
        out[name] = round(statistics.median(values))
    return out


def doubts(rounds: list[dict[str, dict]]) -> list[str]:
    """Why these figures may not be this machine's quiet costs (empty: none)."""
    out = []
    for r in rounds:
        for label, m in r.items():
            if m.get("foreign_load", 0) > DISTURBED:
                out.append(f"{label}: other processes used {m['foreign_load']:.2f} cores of our CPUs")
            if label in POLLED and m["halt_exits"] and m["halt_successful_poll"] / m["halt_exits"] < POLL_HIT_MIN:
                out.append(f"{label}: only {m['halt_successful_poll']} of {m['halt_exits']} halts ended in the poll")
    return out


def measure(seconds: float, repeat: int, progress) -> list[dict[str, dict]]:
    rounds = []
    probes = _probes(seconds)
    total = repeat * len(probes)
    for r in range(repeat):
        done = {}
        for i, (label, probe) in enumerate(probes):
            progress(f"[{r * len(probes) + i + 1}/{total}] round {r + 1}/{repeat}: {label}")
            done[label] = probe()
        rounds.append(done)
    return rounds


def table(profile: calibration.Profile) -> str:
    rows = [f"calibration: {profile.name}", f"  machine: {profile.machine.get('cpu_model')}, kernel "
            f"{profile.machine.get('kernel')}, TSC {profile.machine.get('tsc_khz')} kHz, "
            f"{'nested' if profile.machine.get('nested') else 'bare metal'}; {profile.date}"]
    for name, what in calibration.COSTS:
        rows.append(f"  {name:<22} {profile.costs[name] / 1000:>9.1f} us  {what}")
    return "\n".join(rows)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure this machine's costs of virtualization on real KVM; write the emulator's profile",
        description="Run small real KVM VMs (needs /dev/kvm) and measure what the kernel pays per VM exit, per "
        "submit (a port write the kernel turns into an eventfd signal, KVM_IOEVENTFD), per wake (poll hit, "
        "blocked, timer) and per interrupt into a running vCPU. "
        "The profile written is what the emulator then spends as real CPU spins on each vCPU's core "
        "(--calibration of run, compare, tune), so its figures predict this machine's kernel.",
        epilog="example: hostd calibrate && hostd compare --backend both",
    )
    p.add_argument("--out", metavar="FILE", help=f"where to write the profile (default {calibration.default_path()})")
    p.add_argument("--seconds", default="1", metavar="S", help="each probe's run (default 1)")
    p.add_argument("--repeat", default="3", metavar="N", help="rounds of every probe; the median is kept (default 3)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON on stdout")
    p.add_argument("--if-missing", action="store_true",
                   help="measure only if no profile of this format version is at --out yet (an older one is "
                   "measured again, or moved aside to FILE.vN where /dev/kvm is unusable), and where /dev/kvm "
                   "is unusable say so and exit 0 (what ./run.sh does before its first comparison)")
    p.set_defaults(func=main)


def _move_aside(path: str, version: int) -> str:
    """Rename an older-format profile to PATH.vN (PATH.vN.2, ... if taken): where it went."""
    aside = f"{path}.v{version}"
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = f"{path}.v{version}.{n}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise UsageError(f"calibrate: {path} is format version {version} (this haltpoll-emu writes "
                         f"{calibration.VERSION}) and cannot be moved aside to {aside}: {exc.strerror}; "
                         f"remove it, or run `hostd calibrate` where /dev/kvm works") from None
    return aside


def main(args: argparse.Namespace) -> int:
    seconds = parse_float("--seconds", args.seconds, 0.05, 60.0)
    repeat = parse_int("--repeat", args.repeat, 1, 100)
    out = args.out or calibration.default_path()
    old = calibration.older_format(out) if args.if_missing else None
    if args.if_missing and old is None and os.path.exists(out):
        sys.stderr.write(f"hostd: calibrate: {out} exists; `hostd calibrate` measures this machine again\n")
        return 0
    outdated = f"{out} is format version {old} (this haltpoll-emu writes {calibration.VERSION})"
    try:
        kvm_api.probe()
    except kvm_api.KvmUnavailable as exc:
        if args.if_missing:
            if old is not None:  # unusable as it is, and not to be used silently: out of the way, kept
                aside = _move_aside(out, old)
                sys.stderr.write(f"hostd: calibrate: {outdated}, and it cannot be measured again here (needs "
                                 f"/dev/kvm: {exc}): moved to {aside}; the emulator runs raw\n")
            else:
                sys.stderr.write(f"hostd: calibrate: no profile (needs /dev/kvm: {exc}); the emulator runs raw\n")
            return 0
        raise UsageError(f"calibrate needs /dev/kvm: {exc}") from None
    check_out_file(out, "--out")  # here: with --if-missing where /dev/kvm is unusable nothing is written
    if old is not None:
        sys.stderr.write(f"hostd: calibrate: {outdated}: measuring again\n")
    rounds = measure(seconds, repeat, lambda line: sys.stderr.write(f"hostd: calibrate {line}\n"))
    detail = {"seconds": seconds, "repeat": repeat, "poll_cap_ns": POLL_CAP_NS, "service_ns": SERVICE_NS,
              "rounds": rounds, "doubts": doubts(rounds)}
    profile = calibration.write(out, costs_of(rounds), detail)
    for line in detail["doubts"]:
        sys.stderr.write(f"hostd: warning: {line}: measure again on a quiet machine\n")
    if args.json:
        json.dump(profile.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(table(profile))
        print(f"profile written: {profile.path}")
    return 0
