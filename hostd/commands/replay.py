"""`hostd replay`: run halt durations through a policy offline, no processes.

--halts FILE: one halt duration in ns per line, replayed through one policy (hostd.replay.replayer,
whose docstring says what each row means), the rows printed. --trace FILE: a real KVM host's trace
(`hostd record`, trace-cmd or perf), every policy replayed per vCPU thread beside the offline
optimum and the kernel's own decisions (hostd.replay.trace_replay).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys

from hostd.output.console import width_for
from hostd.output.replay_text import describe, format_rows, format_summary
from hostd.output.trace_report import format_report, write_out
from hostd.plumbing.errors import UsageError
from hostd.plumbing.output import check_out_dir
from hostd.plumbing.policy_options import DEFAULT_POLICY, add_policy_options, policy_spec_from_args
from hostd.replay import trace_replay
from hostd.replay.halts_csv import HaltsCsv
from hostd.replay.replayer import replay
from hostd.trace.parse import TraceInfo, TraceReader

# P when --penalty-ns is not given: what one block costs a wake on this project's machines
# (DESIGN §9: irqfd write -> guest ISR p50 69 us with no polling, 12.5 us with a 2 ms poll).
DEFAULT_PENALTY_NS = 56_000


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


def main(args: argparse.Namespace) -> int:
    if args.trace is not None:
        return _main_trace(args)
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
        print("\n".join([summary[0], *format_rows(result.rows, width=width_for(sys.stdout)), *summary[1:]]))
    return 0


def _main_trace(args: argparse.Namespace) -> int:
    """--trace: every policy, the optimum and the kernel's own decisions on a real host's trace."""
    pids, comm_re = _pids(args.pid), _comm(args.comm)
    penalty = _penalty(args)
    max_unmatched = _count(args.max_unmatched, "--max-unmatched")
    made_out = bool(args.out) and not os.path.isdir(args.out)
    if args.out:
        check_out_dir(args.out, "--out")
        os.makedirs(args.out, exist_ok=True)
    reader = TraceReader(args.trace, max_unmatched=max_unmatched)
    halts_csv = HaltsCsv(args.out) if args.out else None
    try:
        replayed = trace_replay.replay_trace(reader, args, pids, comm_re, halts_csv)
        _refuse_unusable(args, reader.info, replayed.vcpus, replayed.threads)
    except BaseException:
        if halts_csv:
            halts_csv.abort()
        if made_out:
            with contextlib.suppress(OSError):
                os.rmdir(args.out)  # nothing to show: leave no empty directory behind
        raise
    doc = trace_replay.report(reader.info, replayed, penalty)
    if halts_csv:
        halts_csv.finish()
    if args.out:
        write_out(args.out, doc, replayed.total_sample.array())
    print(json.dumps(doc) if args.json else "\n".join(format_report(doc, width_for(sys.stdout))))
    return 0


# --- --trace's options -----------------------------------------------------------------------------

def _pids(text: str | None) -> set[int] | None:
    if text is None:
        return None
    try:
        pids = {int(p) for p in text.split(",") if p.strip()}
    except ValueError:
        pids = set()
    if not pids or min(pids) < 0:
        raise UsageError(f"--pid: expected PID[,PID...], got {text!r}")
    return pids


def _comm(text: str | None) -> re.Pattern | None:
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise UsageError(f"--comm: not a regular expression: {text!r} ({exc})") from None


def _penalty(args: argparse.Namespace) -> tuple[float, str]:
    if args.penalty_ns is None:
        return float(DEFAULT_PENALTY_NS), ("default: a block's cost to a wake on this project's machines, "
                                           "DESIGN §9; give yours with --penalty-ns")
    return float(_count(args.penalty_ns, "--penalty-ns")), "--penalty-ns"


def _count(text, option: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = -1
    if value < 0:
        raise UsageError(f"{option}: must be a whole number >= 0, got {text!r}")
    return value


def _refuse_unusable(args, info: TraceInfo, vcpus: dict, threads: dict) -> None:
    """Nothing usable found: one line saying why, exit 2."""
    where = f"--trace: {args.trace}"
    if info.lines == 0:
        raise UsageError(f"{where} is empty")
    if info.wakeups == 0:
        seen = (f"{info.decisions} kvm_halt_poll_ns events but " if info.decisions else "")
        unmatched = f", {info.unmatched} lines of no known layout" if info.unmatched else ""
        raise UsageError(f"{where}: {seen}no kvm:kvm_vcpu_wakeup events in {info.lines} lines{unmatched} "
                         f"(record them with `hostd record`, perf or trace-cmd; see README 'Tuning a real host')")
    if not vcpus:
        what = " and ".join(x for x in (f"--pid {args.pid}" if args.pid else "",
                                         f"--comm {args.comm!r}" if args.comm else "") if x)
        known = ", ".join(f"{p} ({c})" for p, c in list(threads.items())[:8])
        more = f" and {len(threads) - 8} more" if len(threads) > 8 else ""
        raise UsageError(f"{where}: {what} matches no vCPU thread; threads with KVM events: {known}{more}")


def register(sub: argparse._SubParsersAction) -> None:
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
    _add_trace_arguments(p)
    # --policy unset means "every policy" with --trace, the usual default with --halts.
    p.set_defaults(func=main, policy=None)


def _add_trace_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "trace (with --trace)",
        "Replay the halts a real KVM host traced. The kernel's parameters come from the trace's "
        "`hostd record` header, else this machine's /sys/module/kvm/parameters, else upstream's "
        "defaults; the policy flags override them.")
    g.add_argument("--pid", metavar="PID[,PID...]", help="only these vCPU threads (the pid the events carry)")
    g.add_argument("--comm", metavar="REGEX", help="only vCPU threads whose name matches, e.g. 'CPU [0-3]/KVM'")
    g.add_argument("--penalty-ns", metavar="NS",
                   help=f"the cost model's price of one blocked halt: what a sleep/wake round trip adds to a "
                        f"wake on the traced host (default {DEFAULT_PENALTY_NS:,}, measured on this project's "
                        f"machines; use `hostd tune`'s figure for yours)")
    g.add_argument("--out", metavar="DIR",
                   help="also write summary.csv (per thread and policy), halts.csv (per halt), replay.json "
                        "and halts.png (halt durations with each policy's budget and the optimum) into DIR")
    g.add_argument("--max-unmatched", metavar="N", default="1000",
                   help="give up after this many lines that fit no trace layout (default 1000)")
