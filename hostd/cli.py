"""Command line: one sub-command per module, each exposing `register(subparsers)`."""
from __future__ import annotations

import argparse
import sys

from hostd.commands import compare, record, replay, run, tune
from hostd.commands.calibrate import calibrate
from hostd.plumbing.errors import EXIT_USAGE, UsageError
from hostd.service import serve, stat
from vcpu.abi import set_process_name


class _Parser(argparse.ArgumentParser):
    """argparse, but every usage error is one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hostd",
        description="haltpoll-emu: KVM halt polling reproduced with real processes. "
        "Each vCPU is a pinned process that busy-polls a shared-memory pending-interrupt "
        "word for halt_poll_ns, then blocks on a ZeroMQ socket; a device process injects "
        "interrupts; hostd measures wakeup latency and host CPU per vCPU.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (run, replay, record, compare, calibrate, serve, stat, tune):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_process_name("hostd")  # `python -m hostd` would otherwise show as python3 in top
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        sys.stderr.write(f"hostd: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("hostd: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
