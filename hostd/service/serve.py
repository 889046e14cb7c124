"""`hostd serve` and its clients on the command line: the sub-commands and their options, and
the serve command itself (the runtime directory, a stale socket, signals). The daemon is in
hostd/service/daemon.py, the clients in hostd/service/clients.py."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from hostd.plumbing.errors import UsageError
from hostd.plumbing.orphans import remove_stale_segments
from hostd.plumbing.policy_options import add_policy_options
from hostd.plumbing.spec import add_vm_options
from hostd.service import control
from hostd.service.clients import main_launch, main_ps, main_set, main_shutdown, main_stop
from hostd.service.control import Client, DaemonError, NoDaemon
from hostd.service.daemon import Daemon, log


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", metavar="ENDPOINT",
                   help=f"the daemon's control endpoint (default: ${control.ENV_ENDPOINT}, else "
                   f"ipc://<runtime dir>/{control.SOCKET_NAME}, the runtime dir being ${control.ENV_DIR}, "
                   "$XDG_RUNTIME_DIR/haltpoll-emu or /tmp/haltpoll-emu-$UID)")
    p.add_argument("--timeout", default="60", metavar="SECONDS", help="how long to wait for the reply (default 60)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="run the daemon that owns VM process groups (see launch, ps, set, stat, stop)",
        description="Run in the foreground as a daemon owning any number of VMs. Clients talk to it over a "
        "ZeroMQ control socket in a private runtime directory (mode 0700), printed at start. "
        "SIGTERM/SIGINT stop every VM cleanly.",
        epilog="example: hostd serve &  hostd launch --workload timer --policy fixed --halt-poll-ns 0; hostd stat",
    )
    p.add_argument("--bind", action="append", default=[], metavar="tcp://HOST:PORT",
                   help="also listen on TCP (loopback only unless --allow-remote); may be repeated")
    p.add_argument("--metrics", metavar="[HOST:]PORT",
                   help="serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (HOST defaults to 127.0.0.1)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow non-loopback --bind/--metrics addresses (the control API has no authentication)")
    p.set_defaults(func=main_serve)

    p = sub.add_parser("launch", help="launch a VM in the daemon (options as for `run`); prints its id",
                       description="Launch a VM-like process group in the running daemon. It runs until "
                       "`hostd stop VM` or the daemon's shutdown; the options are those of `hostd run`.")
    add_vm_options(p)
    add_policy_options(p)
    p.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
    _add_client_options(p)
    p.set_defaults(func=main_launch)

    p = sub.add_parser("ps", help="list the daemon's VMs: vCPUs, pids, CPUs, policy, uptime")
    p.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
    p.add_argument("-a", "--all", action="store_true", help="also list VMs that ended (stopped or died)")
    _add_client_options(p)
    p.set_defaults(func=main_ps)

    p = sub.add_parser("set", help="change a live parameter of a VM (next halt on)",
                       description="Set live parameters of a running VM, as writing "
                       "/sys/module/kvm/parameters/* does; each takes effect from the next halt (tick_hz: the "
                       f"next tick). Parameters: {', '.join(control.PARAMS)}.",
                       epilog="example: hostd set vm0 halt_poll_ns=2000000")
    p.add_argument("vm", metavar="VM")
    p.add_argument("assignments", nargs="+", metavar="PARAM=VALUE")
    _add_client_options(p)
    p.set_defaults(func=main_set)

    p = sub.add_parser("stop", help="stop a VM and print its final report (as `run` does)")
    p.add_argument("vm", metavar="VM")
    p.add_argument("--json", action="store_true", help="print the final result as JSON (DESIGN §8)")
    _add_client_options(p)
    p.set_defaults(func=main_stop)

    p = sub.add_parser("shutdown", help="stop every VM and the daemon")
    p.add_argument("--no-wait", action="store_true", help="return at once instead of waiting for the daemon to exit")
    _add_client_options(p)
    p.set_defaults(func=main_shutdown)


def main_serve(args: argparse.Namespace) -> int:
    binds = [control.check_bind(b, args.allow_remote) for b in args.bind]
    metrics = control.parse_host_port(args.metrics, "--metrics", args.allow_remote) if args.metrics else None
    directory = control.ensure_private_dir(control.runtime_dir())
    path = control.socket_path(directory)
    if len(path) > 100:
        raise UsageError(f"control socket path {path!r} is too long for a Unix socket; set ${control.ENV_DIR} "
                         "to a shorter directory")
    if os.path.exists(path):
        try:
            with Client(f"ipc://{path}", timeout_s=1.0) as c:
                pid = c.call("ping")["pid"]
            raise UsageError(f"a hostd daemon (pid {pid}) already serves ipc://{path}")
        except (NoDaemon, DaemonError):
            os.unlink(path)  # stale: its daemon is gone
    remove_stale_segments()
    daemon = Daemon([f"ipc://{path}", *binds], metrics)

    def on_signal(signum, frame):
        if daemon.quit:
            return
        daemon.quit = True
        log(f"{signal.Signals(signum).name}: stopping every VM")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.bind()
        sys.stdout.write(f"hostd serve: pid {os.getpid()}, control socket {' '.join(daemon.endpoints)}\n")
        if daemon.metrics_url():
            sys.stdout.write(f"hostd serve: metrics at {daemon.metrics_url()}\n")
        sys.stdout.flush()
        daemon.run()
        daemon.stop_all()
    finally:
        daemon.close()
        for s, h in old.items():
            signal.signal(s, h)
    log("stopped")
    return 0

