"""`hostd stat`: kvm_stat for the daemon's VMs.

Every §4 counter of every vCPU, summed per VM, with its total and its rate per second over the
last interval, plus what the host says about each vCPU process (CPU %, run-queue wait, context
switches, migrations) and percentiles read off KVM's log2 histograms. Rates are computed here,
from two snapshots the daemon returns (`stats` requests), so the daemon keeps no per-client state.

Modes: a refreshing full-screen view (default, `q` or Ctrl-C quits), `-1` one snapshot, `-l` one
log line per interval, `--json` (alone or with `-1`) one machine-readable snapshot; `-f REGEX`
filters the fields.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import sys
import time

from hostd.service.control import Client, DaemonError, NoDaemon
from hostd.plumbing import neighbour
from hostd.plumbing.errors import UsageError
from vcpu import abi

# Per-vCPU values that are levels, not counters: no rate; the VM shows the max of the slot's
# gauges (abi.GAUGES) and the sum of what is still pending.
LEVEL_MAX = abi.GAUGES
LEVEL_SUM = {"irq_pending"}
HOST_FIELDS = ("host_cpu_ns", "host_runq_wait_ns", "host_ctx_voluntary", "host_ctx_involuntary", "host_migrations")
PCTS = (50, 99)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stat", help="kvm_stat-like live view of the daemon's VMs",
        description="A refreshing table of every halt-polling counter (KVM's names) per VM and per vCPU: "
        "total and rate per second, host CPU per vCPU, and p50/p99 read off KVM's log2 histograms "
        "(bucket upper bounds). q or Ctrl-C quits the live view.",
        epilog="examples: hostd stat;  hostd stat -1 -f 'poll';  hostd stat -l -i 5 > stats.log",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-1", "--once", action="store_true", help="print one snapshot (rates over one interval) and exit")
    mode.add_argument("-l", "--log", action="store_true", help="print one line of per-VM rates per interval")
    # Outside the group: --json already means one snapshot, so `-1 --json` (what a kvm_stat user
    # types) is the same request; only -l --json is a contradiction (checked in main).
    p.add_argument("--json", action="store_true", help="print one JSON snapshot (rates over one interval) and exit")
    p.add_argument("-f", "--fields", metavar="REGEX", help="show only fields whose name matches REGEX")
    p.add_argument("-i", "--interval", default="1", metavar="SECONDS", help="refresh / rate interval (default 1)")
    p.add_argument("-n", "--count", metavar="N", help="-l or live view: stop after N intervals")
    p.add_argument("--vm", metavar="VM", help="show only this VM")
    p.add_argument("--connect", metavar="ENDPOINT", help="the daemon's control endpoint (as for `hostd ps`)")
    p.add_argument("--timeout", default="10", metavar="SECONDS", help="how long to wait for each reply (default 10)")
    p.set_defaults(func=main)


# --- computing ----------------------------------------------------------------------------
def _vcpu_fields(v: dict) -> dict[str, int]:
    out = dict(v["counters"])
    h = v.get("host")
    if h:
        for k in HOST_FIELDS:
            out[k] = h[k[len("host_"):]]
    return out


def _vm_fields(vm: dict) -> dict[str, int | None]:
    tot: dict[str, int | None] = {}
    for v in vm["vcpus"]:
        for k, x in _vcpu_fields(v).items():
            if x is None or tot.get(k, 0) is None:  # a counter the backend cannot know (kvm): stays null
                tot[k] = None
            else:
                tot[k] = max(tot.get(k, 0), x) if k in LEVEL_MAX else tot.get(k, 0) + x
    return tot


def _rates(cur: dict[str, int], prev: dict[str, int] | None, dt_s: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, x in cur.items():
        if prev is None or k not in prev or k in LEVEL_MAX or k in LEVEL_SUM or dt_s <= 0 or x is None \
                or prev[k] is None:
            out[k] = None
        else:
            out[k] = max(0, x - prev[k]) / dt_s
    return out


def hist_percentile(counts: list[int], pct: float) -> int | None:
    """Upper bound (ns) of the log2 bucket holding the pct-th percentile; None if empty."""
    total = sum(counts)
    if total == 0:
        return None
    need = total * pct / 100
    acc = 0
    for b, n in enumerate(counts):
        acc += n
        if acc >= need and n:
            return 2**b - 1 if b < abi.HIST_BUCKETS - 1 else None
    return None


def _hist_pcts(cur: dict[str, list[int]], prev: dict[str, list[int]] | None) -> dict[str, dict]:
    out = {}
    for h in abi.HISTS:
        name = h[: -len("_hist")]
        total = {f"p{p}": hist_percentile(cur[h], p) for p in PCTS}
        if prev is not None:
            delta = [max(0, a - b) for a, b in zip(cur[h], prev[h])]
            interval = {f"p{p}": hist_percentile(delta, p) for p in PCTS}
        else:
            interval = {f"p{p}": None for p in PCTS}
        out[name] = {"total": total, "interval": interval}
    return out


def compute(cur: dict, prev: dict | None, pattern: re.Pattern | None) -> dict:
    """Two `stats` replies -> totals, rates and derived values per VM and per vCPU."""
    dt = (cur["t_ns"] - prev["t_ns"]) / 1e9 if prev else 0.0
    prev_vms = {vm["id"]: vm for vm in (prev or {"vms": []})["vms"]}
    keep = (lambda k: bool(pattern.search(k))) if pattern else (lambda k: True)
    vms = []
    for vm in cur["vms"]:
        pvm = prev_vms.get(vm["id"])
        pvcpus = {v["index"]: v for v in pvm["vcpus"]} if pvm else {}
        totals = _vm_fields(vm)
        rates = _rates(totals, _vm_fields(pvm) if pvm else None, dt)
        vcpus = []
        for v in vm["vcpus"]:
            pv = pvcpus.get(v["index"])
            vt = _vcpu_fields(v)
            vr = _rates(vt, _vcpu_fields(pv) if pv else None, dt)
            host = v.get("host") or {}
            cpu_frac = None
            if pv and pv.get("host") and host and dt > 0:
                cpu_frac = (host["cpu_ns"] - pv["host"]["cpu_ns"]) / (dt * 1e9)
            vcpus.append({
                "index": v["index"], "pid": v["pid"], "cpu": v["cpu"], "state": v["state"],
                "cpu_frac": cpu_frac,
                "cpu_frac_avg": host["cpu_ns"] / (vm["uptime_s"] * 1e9) if host and vm["uptime_s"] > 0 else None,
                "totals": {k: x for k, x in vt.items() if keep(k)},
                "rates": {k: x for k, x in vr.items() if keep(k)},
                "hist_percentiles_ns": {k: x for k, x in _hist_pcts(v["hist"], pv["hist"] if pv else None).items()
                                        if keep(k)},
            })
        vms.append({
            "id": vm["id"], "workload": vm["workload"], "policy": vm["policy"], "host_policy": vm["host_policy"],
            "params": vm["params"], "uptime_s": vm["uptime_s"], "interval_ns": vm.get("interval_ns"),
            "rr_service_ns": vm.get("rr_service_ns"),
            "totals": {k: x for k, x in totals.items() if keep(k)},
            "rates": {k: x for k, x in rates.items() if keep(k)},
            "vcpus": vcpus,
            "neighbour": _neighbour(vm.get("neighbour"), (pvm or {}).get("neighbour"), dt),
        })
    return {"time": cur["time"], "interval_s": round(dt, 3), "vms": vms}


def _neighbour(cur: dict | None, prev: dict | None, dt: float) -> dict | None:
    """The VM's neighbours (--neighbour): the CPU they got over the interval (cores, summed), what
    they got alone before the vCPUs ran, and the difference: what the VM costs them now."""
    if not cur:
        return None
    before = {p["pid"]: p["cpu_ns"] for p in (prev or {}).get("procs", [])}
    used = [p["cpu_ns"] - before[p["pid"]] for p in cur["procs"]
            if p.get("cpu_ns") is not None and before.get(p["pid"]) is not None]
    cores = sum(used) / (dt * 1e9) if used and len(used) == len(cur["procs"]) and dt > 0 else None
    alone = cur["alone_cpu_cores"]
    return {"duty": cur["duty"], "period_ns": cur["period_ns"], "cpus": [p["cpu"] for p in cur["procs"]],
            "pids": [p["pid"] for p in cur["procs"]], "cpu_cores": cores, "alone_cpu_cores": alone,
            "cpu_lost_cores": None if cores is None or alone is None else alone - cores}


# --- rendering ----------------------------------------------------------------------------
def _num(x: float | int | None, width: int = 0) -> str:
    """A number as kvm_stat prints it; too wide for its column, with an SI suffix (5.39G)."""
    if x is None:
        return "-"
    if isinstance(x, float) and x != int(x) and abs(x) < 100:
        return f"{x:.1f}"
    text = f"{int(round(x)):d}"
    if width and len(text) >= width:
        for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:.3g}{suffix}"
    return text


GUEST_ONLY = ("guest_halt_poll_success", "guest_halt_poll_fail", "guest_halt_poll_ns", "guest_poll_ns")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render_table(view: dict, width: int | None = None) -> str:
    """The kvm_stat-like screen: one block per VM, a row per field, VM then per-vCPU columns."""
    lines = [f"hostd stat  {time.strftime('%H:%M:%S', time.localtime(view['time']))}  "
             f"{len(view['vms'])} VM(s)  rates over {view['interval_s']:g} s"]
    if not view["vms"]:
        lines.append("(no VM running: `hostd launch ...` starts one)")
    name_w, tot_w, rate_w, vt_w, vr_w = 26, 14, 10, 12, 10
    for vm in view["vms"]:
        params = param_text(vm)
        lines.append("")
        lines.append(f"{vm['id']}  {vm['workload']}  policy {vm['policy']}  {params}  "
                     f"{len(vm['vcpus'])} vCPU(s)  up {int(vm['uptime_s'])} s")
        n = vm.get("neighbour")
        if n:
            lines.append(f" neighbour {neighbour.label(n['duty'], n['period_ns'])} on CPU(s) "
                         f"{','.join(map(str, n['cpus']))}: {_cores(n['cpu_cores'])} cores now, "
                         f"{_cores(n['alone_cpu_cores'])} alone, lost {_cores(n['cpu_lost_cores'])} to the VM")
        vcpus = vm["vcpus"]
        shown = len(vcpus)
        if width:
            room = width - (name_w + tot_w + rate_w + 1)
            shown = max(0, min(len(vcpus), room // (vt_w + vr_w + 2)))
        head = f" {'Event':<{name_w}}{'Total':>{tot_w}}{'/s':>{rate_w}}"
        for v in vcpus[:shown]:
            head += f" |{'vcpu' + str(v['index']):>{vt_w}}{'/s':>{vr_w}}"
        lines.append(head)
        for k, total in vm["totals"].items():
            if k in GUEST_ONLY and vm["policy"] != "guest-haltpoll":
                continue  # always 0 without the guest's haltpoll driver
            row = f" {k:<{name_w}.{name_w}}{_num(total, tot_w):>{tot_w}}{_num(vm['rates'].get(k), rate_w):>{rate_w}}"
            for v in vcpus[:shown]:
                row += f" |{_num(v['totals'].get(k), vt_w):>{vt_w}}{_num(v['rates'].get(k), vr_w):>{vr_w}}"
            lines.append(row)
        if vcpus[:shown]:
            row = f" {'host CPU % (avg, now)':<{name_w}}{'':>{tot_w}}{'':>{rate_w}}"
            for v in vcpus[:shown]:
                row += f" |{_pct(v['cpu_frac_avg']):>{vt_w}}{_pct(v['cpu_frac']):>{vr_w}}"
            lines.append(row)
            hists = list(vcpus[0]["hist_percentiles_ns"])
            for h in hists:
                for p in PCTS:
                    row = f" {h + ' p' + str(p) + ' ns':<{name_w}.{name_w}}{'':>{tot_w}}{'':>{rate_w}}"
                    for v in vcpus[:shown]:
                        hp = v["hist_percentiles_ns"][h]
                        row += f" |{_le(hp['total'][f'p{p}']):>{vt_w}}{_le(hp['interval'][f'p{p}']):>{vr_w}}"
                    lines.append(row)
            lines.append(" " + " | ".join(f"vcpu{v['index']} pid {v['pid']} cpu {'-' if v['cpu'] is None else v['cpu']}"
                                          f" {v['state']}" for v in vcpus[:shown]))
        if shown < len(vcpus):
            lines.append(f" ({len(vcpus) - shown} more vCPU(s) not shown: widen the terminal, or use -1 / --json)")
    lines.append("")
    lines.append("histogram rows: log2-bucket upper bounds, since launch | over the interval")
    return "\n".join(lines)


def _cores(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def param_text(vm: dict) -> str:
    """The live parameters the VM's policy and workload actually read."""
    host = vm["host_policy"]
    keys = [] if host == "none" else ["halt_poll_ns"] if host == "fixed" else [
        "halt_poll_ns", "halt_poll_ns_grow", "halt_poll_ns_grow_start", "halt_poll_ns_shrink"]
    p = vm["params"]
    keys += [k for k in ("tick_hz",) if k in p]
    text = " ".join(f"{k}={p[k]:g}" if isinstance(p[k], float) else f"{k}={p[k]}" for k in keys)
    if vm.get("interval_ns"):
        text += f" interval_us={vm['interval_ns'] // 1000}"
    if vm.get("rr_service_ns") is not None:  # 0 is a setting too: the device answers at once
        text += f" rr_service_us={vm['rr_service_ns'] / 1000:g}"
    return text.strip() or "-"


def _le(x: int | None) -> str:
    return "-" if x is None else f"<{x + 1}"


def log_columns(view: dict) -> list[tuple[str, str]]:
    return [(vm["id"], k) for vm in view["vms"] for k in vm["totals"] if vm["rates"].get(k) is not None
            or k in LEVEL_MAX or k in LEVEL_SUM]


def log_header(cols: list[tuple[str, str]]) -> str:
    return " ".join(["time    "] + [f"{vm}:{k}".rjust(max(10, len(vm) + len(k) + 1)) for vm, k in cols])


def log_line(view: dict, cols: list[tuple[str, str]]) -> str:
    vms = {vm["id"]: vm for vm in view["vms"]}
    cells = [time.strftime("%H:%M:%S", time.localtime(view["time"]))]
    for vm, k in cols:
        v = vms.get(vm)
        x = None if v is None else (v["totals"][k] if k in LEVEL_MAX or k in LEVEL_SUM else v["rates"].get(k))
        cells.append(_num(x).rjust(max(10, len(vm) + len(k) + 1)))
    return " ".join(cells)


# --- the command --------------------------------------------------------------------------
def _positive(text: str, option: str, lo: float, hi: float) -> float:
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not lo <= x <= hi:
        raise UsageError(f"{option}: expected a number from {lo:g} to {hi:g}, got {text!r}")
    return x


def main(args: argparse.Namespace) -> int:
    if args.json and args.log:
        raise UsageError("--json: not allowed with -l/--log (--json prints one snapshot, -l a line per interval)")
    interval = _positive(args.interval, "--interval", 0.05, 3600)
    timeout = _positive(args.timeout, "--timeout", 0.1, 3600)
    count = None if args.count is None else int(_positive(args.count, "--count", 1, 1e9))
    try:
        pattern = re.compile(args.fields) if args.fields else None
    except re.error as exc:
        raise UsageError(f"-f: not a valid regular expression: {exc}") from None
    fields = {"vm": args.vm} if args.vm else {}
    try:
        with Client(args.connect, timeout_s=timeout) as c:
            def fetch() -> dict:
                return c.call("stats", **fields)

            if args.once or args.json:
                prev = fetch()
                time.sleep(interval)
                view = compute(fetch(), prev, pattern)
                if args.json:
                    json.dump(view, sys.stdout)
                    sys.stdout.write("\n")
                else:
                    sys.stdout.write(render_table(view) + "\n")
                return 0
            if args.log:
                return _log(fetch, interval, count, pattern)
            return _live(fetch, interval, count, pattern)
    except DaemonError as exc:
        sys.stderr.write(f"hostd stat: error: {exc}\n")
        return 2
    except NoDaemon as exc:
        sys.stderr.write(f"hostd stat: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 0


def _log(fetch, interval: float, count: int | None, pattern) -> int:
    prev = fetch()
    cols: list | None = None
    n = 0
    next_t = time.monotonic() + interval
    while count is None or n < count:
        time.sleep(max(0.0, next_t - time.monotonic()))
        next_t += interval
        cur = fetch()
        view = compute(cur, prev, pattern)
        prev = cur
        c = log_columns(view)
        if c != cols:
            cols = c
            sys.stdout.write(log_header(cols) + "\n")
        sys.stdout.write(log_line(view, cols) + "\n")
        sys.stdout.flush()
        n += 1
    return 0


def _live(fetch, interval: float, count: int | None, pattern) -> int:
    """The refreshing screen. Keys: q quit, v cycle the VM shown (all, vm0, vm1, ...),
    j/k or the arrows scroll a line, space/b a page, g back to the top."""
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    old = None
    if tty:
        import termios
        import tty as ttymod

        old = termios.tcgetattr(sys.stdin.fileno())
        ttymod.setcbreak(sys.stdin.fileno())
        sys.stdout.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hide the cursor
    try:
        prev = fetch()
        view = compute(prev, None, pattern)
        n, offset, only = 0, 0, None
        deadline: float | None = None
        while True:
            ids = [vm["id"] for vm in view["vms"]]
            if only not in ids:
                only = None
            shown = view if only is None else {**view, "vms": [vm for vm in view["vms"] if vm["id"] == only]}
            if not tty:
                sys.stdout.write(render_table(shown) + "\n\n")
                sys.stdout.flush()
            else:
                size = shutil.get_terminal_size((160, 50))
                lines = render_table(shown, size.columns).split("\n")
                room = max(1, size.lines - 1)
                offset = max(0, min(offset, len(lines) - room))
                page = [ln[: size.columns] for ln in lines[offset: offset + room]]
                more = f"lines {offset + 1}-{offset + len(page)} of {len(lines)}, j/k space/b scroll  " \
                    if len(lines) > room else ""
                status = f"q quit  v VM: {only or 'all'}  {more}"
                sys.stdout.write("\x1b[H" + "\x1b[K\n".join(page) + "\x1b[K\n\x1b[J"
                                 + "\x1b[7m" + status[: size.columns - 1] + "\x1b[0m")
                sys.stdout.flush()
            if count is not None and n >= count:
                return 0
            if deadline is None:
                deadline = time.monotonic() + interval
            redraw = False
            while not redraw and (left := deadline - time.monotonic()) > 0:
                if not tty:
                    time.sleep(left)
                    continue
                r, _, _ = select.select([sys.stdin], [], [], left)
                if not r:
                    continue
                key = os.read(sys.stdin.fileno(), 32)
                size = shutil.get_terminal_size((160, 50))
                if key[:1] in (b"q", b"Q"):
                    return 0
                if key[:1] == b"v":
                    order = [None, *ids]
                    only = order[(order.index(only) + 1) % len(order)]
                    offset = 0
                elif key in (b"j", b"\x1b[B"):
                    offset += 1
                elif key in (b"k", b"\x1b[A"):
                    offset = max(0, offset - 1)
                elif key in (b" ", b"\x1b[6~"):
                    offset += size.lines - 2
                elif key in (b"b", b"\x1b[5~"):
                    offset = max(0, offset - (size.lines - 2))
                elif key == b"g":
                    offset = 0
                else:
                    continue
                redraw = True
            if redraw:
                continue
            deadline = None
            cur = fetch()
            view = compute(cur, prev, pattern)
            prev = cur
            n += 1
    finally:
        if tty:
            import termios

            sys.stdout.write("\x1b[?25h\x1b[?1049l")
            sys.stdout.flush()
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, old)
