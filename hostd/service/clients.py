"""The clients of `hostd serve` on the command line: `hostd launch / ps / set / stop / shutdown`,
one request each to the daemon's control socket."""
from __future__ import annotations

import argparse
import json
import sys
import time

import psutil

from hostd.output import report
from hostd.plumbing import neighbour
from hostd.plumbing.errors import UsageError
from hostd.service import control
from hostd.service.control import Client, DaemonError, NoDaemon, ProtocolError
from hostd.service.stat import param_text

EXIT_NO_DAEMON = 1


def _client(args: argparse.Namespace) -> Client:
    try:
        timeout = float(args.timeout)
        if not 0 < timeout < 1e6:
            raise ValueError
    except ValueError:
        raise UsageError(f"--timeout: expected a number of seconds > 0, got {args.timeout!r}") from None
    return Client(args.connect, timeout_s=timeout)


def _call(args: argparse.Namespace, cmd: str, **fields) -> dict | int:
    """One request; a refusal is exit 2 (bad input), no daemon is exit 1. Both one line."""
    try:
        with _client(args) as c:
            return c.call(cmd, **fields)
    except DaemonError as exc:
        sys.stderr.write(f"hostd {cmd}: error: {exc}\n")
        return 2
    except NoDaemon as exc:
        sys.stderr.write(f"hostd {cmd}: {exc}\n")
        return EXIT_NO_DAEMON


def main_launch(args: argparse.Namespace) -> int:
    kinds = control.launch_option_kinds()
    options = {k: getattr(args, k) for k in kinds if getattr(args, k) not in (None, False)}
    rep = _call(args, "launch", options=options)
    if isinstance(rep, int):
        return rep
    if args.json:
        return _print_json(rep)
    sys.stdout.write(f"{rep['vm']}\n")
    cpus = [v["cpu"] for v in rep["vcpu"]]
    sys.stderr.write(f"{rep['vm']}: {rep['vcpus']} vCPU(s) pids {[v['pid'] for v in rep['vcpu']]} on CPUs {cpus}, "
                     f"device pid {rep['device']['pid']} on CPU {rep['device']['cpu']}\n")
    if rep.get("neighbour"):
        n = rep["neighbour"]
        sys.stderr.write(f"{rep['vm']}: neighbour {neighbour.label(n['duty'], n['period_ns'])} pids "
                         f"{[p['pid'] for p in n['procs']]} on CPUs {[p['cpu'] for p in n['procs']]}, "
                         f"{n['alone_cpu_cores']:.3f} cores alone\n")
    if rep.get("shares_cpus_with"):
        sys.stderr.write(f"{rep['vm']}: note: its vCPUs share CPUs with {', '.join(rep['shares_cpus_with'])}"
                         " (overcommit across VMs)\n")
    return 0


def _clean(rep: dict) -> dict:
    return {k: v for k, v in rep.items() if k not in ("ok", "v")}


def _print_json(rep: dict) -> int:
    json.dump(_clean(rep), sys.stdout)
    sys.stdout.write("\n")
    return 0


def _uptime(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def main_ps(args: argparse.Namespace) -> int:
    rep = _call(args, "ps")
    if isinstance(rep, int):
        return rep
    if args.json:
        return _print_json(rep)
    out = sys.stdout
    d = rep["daemon"]
    out.write(f"daemon pid {d['pid']}, up {_uptime(d['uptime_s'])}, {len(rep['vms'])} VM(s), "
              f"{' '.join(d['endpoints'])}{', metrics ' + d['metrics'] if d['metrics'] else ''}\n")
    if rep["vms"]:
        out.write(f"{'VM':<6} {'UPTIME':>9} {'WORKLOAD':<8} {'POLICY':<15} {'PROC':<10} {'PID':>8} {'CPU':>4} "
                  f"{'STATE':<9} PARAMS\n")
    for vm in rep["vms"]:
        dev = vm["device"]
        out.write(f"{vm['id']:<6} {_uptime(vm['uptime_s']):>9} {vm['workload']:<8} {vm['policy']:<15} "
                  f"{'irqsrc':<10} {dev['pid']:>8} {_cpu(dev['cpu']):>4} {'':<9} {param_text(vm)}"
                  f"{'  (overcommit)' if vm['overcommit'] else ''}\n")
        for v in vm["vcpu"]:
            out.write(f"{'':<6} {'':>9} {'':<8} {'':<15} {'vcpu' + str(v['index']):<10} {v['pid']:>8} "
                      f"{_cpu(v['cpu']):>4} {v['state']:<9}\n")
        for n in (vm.get("neighbour") or {}).get("procs", []):
            out.write(f"{'':<6} {'':>9} {'':<8} {'':<15} {n['name']:<10} {n['pid']:>8} {_cpu(n['cpu']):>4}\n")
    if args.all and rep["ended"]:
        out.write("ended:\n")
        for e in rep["ended"]:
            when = time.strftime("%H:%M:%S", time.localtime(e["ended"]))
            out.write(f"  {e['id']:<6} {e['state']:<8} {when}  {e['workload']}/{e['policy']}: {e['reason']}\n")
    return 0


def _cpu(c) -> str:
    return "-" if c is None else str(c)


def parse_assignment(text: str) -> tuple[str, int | float]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UsageError(f"expected PARAM=VALUE, got {text!r}")
    if name not in control.PARAMS:
        raise UsageError(f"unknown parameter {name!r} (settable: {', '.join(control.PARAMS)})")
    kind = control.PARAMS[name][0]
    try:
        v = int(value) if kind is int else float(value)
    except ValueError:
        raise UsageError(f"{name}: expected a {'whole number' if kind is int else 'number'}, got {value!r}") from None
    try:
        control.check_param(name, v)
    except ProtocolError as exc:
        raise UsageError(str(exc).removeprefix("set: ")) from None
    return name, v


def main_set(args: argparse.Namespace) -> int:
    pairs = [parse_assignment(a) for a in args.assignments]
    for name, value in pairs:
        rep = _call(args, "set", vm=args.vm, param=name, value=value)
        if isinstance(rep, int):
            return rep
        sys.stdout.write(f"{rep['vm']}: {name}={value}\n")
    return 0


def main_stop(args: argparse.Namespace) -> int:
    rep = _call(args, "stop", vm=args.vm)
    if isinstance(rep, int):
        return rep
    if args.json:
        json.dump(rep["result"], sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(f"{rep['vm']} stopped.\n")
        report.print_run(rep["result"], sys.stdout)
    for f in rep["failures"]:
        sys.stderr.write(f"hostd: check failed: {f}\n")
    return 1 if rep["failures"] else 0


def main_shutdown(args: argparse.Namespace) -> int:
    rep = _call(args, "shutdown")
    if isinstance(rep, int):
        return rep
    stopping = rep["stopping"]
    sys.stderr.write(f"hostd: daemon pid {rep['pid']} shutting down"
                     f"{', stopping ' + ', '.join(stopping) if stopping else ''}\n")
    if args.no_wait or not (args.connect or control.default_endpoint()).startswith("ipc://"):
        return 0
    deadline = time.monotonic() + float(args.timeout)
    while time.monotonic() < deadline:
        if not psutil.pid_exists(rep["pid"]) or _zombie(rep["pid"]):
            return 0
        time.sleep(0.05)
    sys.stderr.write(f"hostd: daemon pid {rep['pid']} still running after {args.timeout} s\n")
    return 1


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
