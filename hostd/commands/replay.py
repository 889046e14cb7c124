"""`hostd replay`: run recorded halt durations through a policy offline, no processes.

Each input line is one halt: the time in ns from the moment the guest goes idle (HLT, or for
guest-haltpoll the start of its poll) to the interrupt that ends it. Per halt the replay reports
the budget the policy used, whether the wait ended while polling, and the budget after the
policy's update, using the same policy classes the vCPU processes run.

Row semantics:
- host policies: budget_ns = begin_halt(); polled_ok = the budget was > 0 and the interrupt came
  within it; next_budget_ns = what the next HLT will poll (the per-vCPU value capped to the max).
- guest-haltpoll adds guest_budget_ns / guest_polled_ok / guest_next_budget_ns. A halt that ends
  inside the guest poll never exits: budget_ns is null and polled_ok is true (nobody blocked).
  Otherwise the host sees an HLT of halt_ns - guest_budget_ns, and the guest governor reflects
  that residency plus the modelled exit cost.
- idle-poll: the guest never halts; it spins the whole time. budget_ns and next_budget_ns are
  null, polled_ok is true, and the poll CPU is the whole halt.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from hostd.plumbing.errors import UsageError
from hostd.plumbing.policy_options import DEFAULT_POLICY, add_policy_options, policy_spec_from_args
from vcpu.emu.guest_haltpoll import make_guest_policy
from vcpu.policy import PolicySpec, make_host_policy

EDGE_ROWS = 20  # human output shows the first and last this many rows of a long replay


@dataclass
class ReplayResult:
    spec: PolicySpec
    rows: list[dict]
    summary: dict


class Replayer:
    """One policy replayed one halt at a time. replay() drives it over a list; a trace replay
    (hostd.replay.trace_replay) drives one per vCPU over a stream too long to hold."""

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec
        self.host = make_host_policy(spec)
        self.guest = make_guest_policy(spec)
        self.halts = self.halted = self.polled = self.guest_polled = self.exits = self.poll_cpu = 0
        self.budget_sum = self.guest_budget_sum = 0

    def step(self, halt_ns: int, valid: bool = True) -> dict:
        """One halt of halt_ns; valid: the kernel's vcpu_valid_wakeup() (always true on x86)."""
        spec, host, guest = self.spec, self.host, self.guest
        self.halts += 1
        self.halted += halt_ns
        if spec.policy == "idle-poll":
            self.polled += 1
            self.poll_cpu += halt_ns
            return {"halt_ns": halt_ns, "budget_ns": None, "polled_ok": True, "next_budget_ns": None}
        row: dict = {"halt_ns": halt_ns}
        host_ns = halt_ns
        if guest is not None:
            guest_budget = guest.poll_budget()
            self.guest_budget_sum += guest_budget
            guest_ok = 0 < guest_budget and halt_ns <= guest_budget
            row["guest_budget_ns"] = guest_budget
            row["guest_polled_ok"] = guest_ok
            if guest_ok:
                guest.reflect(False, 0)
                self.guest_polled += 1
                self.polled += 1
                self.poll_cpu += halt_ns
                row.update(budget_ns=None, polled_ok=True, next_budget_ns=host.next_budget(),
                           guest_next_budget_ns=guest.poll_budget())
                return row
            self.poll_cpu += guest_budget
            host_ns = halt_ns - guest_budget
        self.exits += 1
        budget = host.begin_halt()
        self.budget_sum += budget
        ok = 0 < budget and host_ns <= budget
        host.end_halt(host_ns, waited=not ok, valid=valid)
        self.polled += ok
        self.poll_cpu += host_ns if ok else budget
        row.update(budget_ns=budget, polled_ok=ok, next_budget_ns=host.next_budget())
        if guest is not None:
            guest.reflect(True, host_ns + spec.exit_cost_ns)
            row["guest_next_budget_ns"] = guest.poll_budget()
        return row

    def summary(self) -> dict:
        n, halted, exits = self.halts, self.halted, self.exits
        summary = {
            "policy": self.spec.policy,
            "halts": n,
            "polled_ok": self.polled,
            "success_ratio": self.polled / n if n else None,
            "blocks": n - self.polled,
            "exits": exits,
            "poll_cpu_ns": self.poll_cpu,
            "halted_ns": halted,
            "poll_cpu_frac": self.poll_cpu / halted if halted else None,
            "exit_cost_ns": exits * self.spec.exit_cost_ns,
            "budget_ns_mean": self.budget_sum / exits if exits else None,  # host budget per exit
        }
        if self.guest is not None:
            summary["guest_polled_ok"] = self.guest_polled
            summary["guest_budget_ns_mean"] = self.guest_budget_sum / n if n else None
        return summary


def replay(spec: PolicySpec, halts: Iterable[int]) -> ReplayResult:
    """Drive fresh policy objects for `spec` through `halts` (ns each), one row per halt."""
    replayer = Replayer(spec)
    rows = [replayer.step(halt_ns) for halt_ns in halts]
    return ReplayResult(spec, rows, replayer.summary())


def read_halts(path: str) -> list[int]:
    """One halt duration in ns per line; blank lines and '#' comments ignored; '-' is stdin."""
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--halts: cannot read {path}: {reason}") from None
    halts = []
    for lineno, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not text.isascii() or not text.isdigit():
            raise UsageError(f"--halts: {path}:{lineno}: expected a halt duration in ns "
                             f"(a whole number >= 0), got {text!r}")
        halts.append(int(text))
    if not halts:
        raise UsageError(f"--halts: {path} holds no halt durations")
    return halts


def describe(spec: PolicySpec) -> str:
    """One line naming the policy and the parameters it actually reads."""
    host = {
        "none": "no host polling",
        "fixed": f"fixed halt_poll_ns={spec.halt_poll_ns}",
        "adaptive": f"adaptive halt_poll_ns={spec.halt_poll_ns} grow={spec.halt_poll_ns_grow} "
                    f"grow_start={spec.halt_poll_ns_grow_start} shrink={spec.halt_poll_ns_shrink}",
    }[spec.host_policy]
    if spec.policy == "idle-poll":
        return "policy idle-poll: the guest never halts"
    if spec.policy == "guest-haltpoll":
        guest = (f"guest_halt_poll_ns={spec.guest_halt_poll_ns} grow={spec.guest_halt_poll_grow} "
                 f"grow_start={spec.guest_halt_poll_grow_start} shrink={spec.guest_halt_poll_shrink} "
                 f"allow_shrink={'Y' if spec.guest_halt_poll_allow_shrink else 'N'}")
        return f"policy guest-haltpoll: {guest}; host: {host}"
    return f"policy {spec.policy}: {host}"


def format_rows(rows: list[dict], numbered: bool = True, left: int = 0) -> list[str]:
    """A right-aligned table (its first `left` columns left-aligned), rows numbered unless told
    otherwise; long replays keep the first and last EDGE_ROWS rows."""
    if not rows:
        return []
    keys = list(rows[0])
    shown = list(enumerate(rows, 1))
    omitted = 0
    if len(shown) > 2 * EDGE_ROWS:
        omitted = len(shown) - 2 * EDGE_ROWS
        shown = shown[:EDGE_ROWS] + shown[-EDGE_ROWS:]

    def cell(v: object) -> str:
        return "-" if v is None else ("yes" if v else "no") if isinstance(v, bool) else str(v)

    table = [["#", *keys]] + [[str(i), *(cell(r[k]) for k in keys)] for i, r in shown]
    if not numbered:
        table = [line[1:] for line in table]
    widths = [max(len(line[c]) for line in table) for c in range(len(table[0]))]
    out = ["  ".join(v.ljust(w) if c < left else v.rjust(w)
                     for c, (v, w) in enumerate(zip(line, widths, strict=True))) for line in table]
    if omitted:
        out.insert(1 + EDGE_ROWS, f"... {omitted} more halts (--json prints every row) ...")
    return out


def format_summary(summary: dict) -> list[str]:
    ratio = summary["success_ratio"]
    lines = [f"halts {summary['halts']}: {summary['polled_ok']} ended while polling"
             f"{f' ({ratio:.1%})' if ratio is not None else ''}, "
             f"{summary['blocks']} blocked, {summary['exits']} exits to the host"]
    if "guest_polled_ok" in summary:
        lines.append(f"guest poll ended {summary['guest_polled_ok']} halts without an exit")
    if summary["poll_cpu_frac"] is not None:
        lines.append(f"poll CPU {summary['poll_cpu_ns']} ns = {summary['poll_cpu_frac']:.1%} "
                     f"of the {summary['halted_ns']} ns halted")
    if summary["exit_cost_ns"]:
        lines.append(f"modelled exit cost {summary['exit_cost_ns']} ns")
    return lines


def main(args: argparse.Namespace) -> int:
    if args.trace is not None:
        from hostd.replay import trace_replay

        return trace_replay.main(args)
    for option in ("pid", "comm", "penalty_ns", "out"):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option.replace('_', '-')}: only with --trace")
    if args.policy is None:
        args.policy = DEFAULT_POLICY
    spec = policy_spec_from_args(args)
    result = replay(spec, read_halts(args.halts))
    summary = [describe(spec), *format_summary(result.summary)]
    if args.json:
        # stdout is the row list exactly (DESIGN §8); the human summary goes to stderr.
        print(json.dumps(result.rows))
        print("\n".join(summary), file=sys.stderr)
    else:
        print("\n".join([summary[0], *format_rows(result.rows), *summary[1:]]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from hostd.replay import trace_replay  # it builds on this module

    p = sub.add_parser(
        "replay",
        help="offline: the budget and outcome of each halt under a policy",
        description="Replay recorded halt durations through a halt-poll policy, without launching "
        "anything: per halt, the poll budget the policy used, whether the interrupt came while "
        "polling, and the budget after the policy's grow/shrink. Uses the same policy code as "
        "the vCPU processes.")
    add_policy_options(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--halts", metavar="FILE",
        help="one halt duration in ns per line: the time from HLT to the interrupt. Blank lines "
        "and '#' comments are ignored; '-' reads stdin.")
    source.add_argument(
        "--trace", metavar="FILE",
        help="a real host's trace of kvm:kvm_vcpu_wakeup (and kvm:kvm_halt_poll_ns): tracefs text "
        "(`hostd record`), `trace-cmd report` or `perf script` output; '-' reads stdin. Replays every "
        "policy (or --policy) per vCPU thread, with the offline optimum and the kernel's own decisions")
    p.add_argument(
        "--json", action="store_true",
        help='print the rows as a JSON list of {"halt_ns", "budget_ns", "polled_ok", '
        '"next_budget_ns"} on stdout (guest-haltpoll adds guest_* keys); the summary goes to stderr. '
        'With --trace: one JSON object {"trace", "kernel_params", "penalty_ns", "specs", "vcpus", "total"}')
    trace_replay.add_arguments(p)
    # --policy unset means "every policy" with --trace, the usual default with --halts.
    p.set_defaults(func=main, policy=None)
