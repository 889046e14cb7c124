"""Command line: one sub-command per module, each exposing `register(subparsers)`."""
from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

from hostd.commands import compare, record, replay, run, show, tune
from hostd.commands.calibrate import calibrate
from hostd.plumbing.errors import EXIT_SIGPIPE, EXIT_USAGE, UsageError
from hostd.plumbing.formats import RESULTS_FORMAT_VERSION
from hostd.service import serve, stat
from vcpu.abi import set_process_name


class _Parser(argparse.ArgumentParser):
    """argparse, but every usage error is one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


class _Version(argparse.Action):
    """--version, looked up only when asked: the installed package's and the result documents' versions."""

    def __init__(self, option_strings, dest, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        sys.stdout.write(f"haltpoll-emu {metadata.version('haltpoll-emu')} "
                         f"(results format version {RESULTS_FORMAT_VERSION})\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hostd",
        description="haltpoll-emu: KVM halt polling reproduced with real processes. "
        "Each vCPU is a pinned process that busy-polls a shared-memory pending-interrupt "
        "word for halt_poll_ns, then blocks on a ZeroMQ socket; a device process injects "
        "interrupts; hostd measures wakeup latency and host CPU per vCPU.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and the results format version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (run, replay, record, compare, calibrate, serve, stat, tune, show):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_process_name("hostd")  # `python -m hostd` would otherwise show as python3 in top
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # here, not at exit: a reader gone is the except below's
    except BrokenPipeError:
        # `| head` has read enough. Every finally on the way out has already stopped and removed
        # what the command started; the interpreter's last flush of stdout/stderr must not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (sys.stdout.fileno(), sys.stderr.fileno()):
            os.dup2(devnull, fd)
        return EXIT_SIGPIPE


def _dispatch(argv: list[str] | None) -> int:
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
