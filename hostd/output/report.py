"""Human-readable output of a run, and the end-of-run checks."""
from __future__ import annotations

from typing import TextIO

from hostd.plumbing import calibration, neighbour


def _us(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1000:.1f}"


def _n(x) -> str:
    return "-" if x is None else str(x)


def check_failures(result: dict) -> list[str]:
    if result["spec"]["backend"] == "kvm":
        return _kvm_failures(result)
    out = []
    for v in result["vcpus"]:
        a, s = v["accounting"], v["stats"]
        if not a["exactly_once"]:
            out.append(
                f"vcpu{v['index']}: exactly-once accounting broken: device injected {a['device_injected']}, "
                f"irq_seq {s['irq_injected']}, delivered {s['irq_delivered']} + coalesced {s['irq_coalesced']} "
                f"+ pending {a['pending_at_exit']}"
            )
        if s["lost_wakeup"]:
            out.append(f"vcpu{v['index']}: {s['lost_wakeup']} lost wakeup(s)")
    return out


def _kvm_failures(result: dict) -> list[str]:
    out = []
    for v in result["vcpus"]:
        a, s = v["accounting"], v["stats"]
        if not a["delivered_le_injected"] or a["delivered_eq_injected"] is False:
            out.append(f"vcpu{v['index']}: the guest took {s['irq_delivered']} interrupts of {s['irq_injected']} "
                       f"injected ({'more than injected' if not a['delivered_le_injected'] else 'some lost'})")
    return out


def print_run(r: dict, out: TextIO) -> None:
    spec = r["spec"]
    pin = "unpinned" if spec["vcpu_cpus"] is None else f"vCPUs on CPUs {spec['vcpu_cpus']}, device on CPU {spec['device_cpu']}"
    oc = "  (overcommitted)" if spec["overcommit"] else ""
    out.write(
        f"{spec['vcpus']} vCPU(s), workload {spec['workload']}, policy {spec['policy']}"
        f" (host {spec['host_policy']}, halt_poll_ns {spec['halt_poll_ns']}), backend {spec['backend']}, "
        f"{spec['duration_s']} s; {pin}{oc}\n"
    )
    if spec["backend"] == "emu":
        out.write(f"emulator calibration: {calibration.name_of(spec['calibration'])}\n")
    out.write("\n")
    cols = ("vcpu", "exits", "polls", "poll_ok", "preempted", "wakeups", "poll p50", "block p50",
            "all p99", "cpu %", "invol cs")
    out.write("".join(f"{c:>10}" for c in cols) + "   (latency in us)\n")
    for v in r["vcpus"]:
        s, lat, h = v["stats"], v["latency_ns"], v["host"]
        row = (
            v["index"], s["halt_exits"], s["halt_attempted_poll"], s["halt_successful_poll"],
            _n(s["halt_poll_preempted"]), s["halt_wakeup"], _us((lat["poll"] or {}).get("p50")),
            _us((lat["block"] or {}).get("p50")),
            _us(lat["all"]["p99"]), f"{100 * h['cpu_frac']:.2f}", h["ctx_involuntary"],
        )
        out.write("".join(f"{x:>10}" for x in row) + "\n")
    w = r["workload"]
    dev = r["device"]
    if w["name"] == "io":
        out.write(f"\nio: {w['ops_per_s']:.0f} synchronous writes/s ({w['writes']} writes); device time per "
                  f"write p50 {_us(dev['io_service_ns']['p50'])} us\n")
        if spec["backend"] == "emu":
            out.write(f"    the device took each submit p50 {_us(dev['submit_wait_ns']['p50'])} us after the guest "
                      f"made it (ring + eventfd)\n")
    elif w["name"] == "rr":
        out.write(f"\nrr: {w['transactions']} transactions ({w['transactions_per_s']:.0f}/s); round trip mean "
                  f"{_us(w['rtt_mean_ns'] and round(w['rtt_mean_ns']))} us, p99 {_us(w['rtt_ns']['p99'])} us; "
                  f"device answers after {_us(spec['rr']['service_ns'])} us\n")
        if w["dropped"]:
            out.write(f"    round trip figures over the first {w['rtt_ns']['count']} (the rest outran the sample "
                      f"buffers)\n")
    elif w["name"] == "timer":
        ns, cy = w["latency_ns"], w["latency_cycles"]
        out.write(
            f"\ntimer: wake - deadline p50 {_us(ns['p50'])} us ({cy['p50']} cycles), p99 {_us(ns['p99'])} us "
            f"({cy['p99']} cycles), max {_us(ns['max'])} us over {ns['count']} wakes\n"
        )
    else:
        out.write(
            f"\nidle: {w['halts_per_s']:.1f} halts/s, {w['failed_polls_per_s']:.1f} failed polls/s, "
            f"host CPU per idle vCPU {100 * w['cpu_frac_per_vcpu']:.2f}% of a core\n"
        )
    n = r.get("neighbour")
    if n:
        out.write(f"neighbour: {neighbour.label(n['duty'], n['period_ns'])} on CPU(s) "
                  f"{', '.join(map(str, n['cpus']))}: {n['cpu_cores']:.3f} cores beside the VM, "
                  f"{n['alone_cpu_cores']:.3f} alone; the VM cost it {n['cpu_lost_cores']:.3f} cores; it waited "
                  f"{n['runq_wait_us_per_period']:.0f} us per period for its CPU ({n['alone_runq_wait_us_per_period']:.0f} "
                  "alone)\n")
    c = r["checks"]
    if spec["backend"] == "kvm":
        eq = c["delivered_eq_injected"]
        out.write(f"kvm: {spec['kvm']['kernel_policy']} (KVM_CAP_HALT_POLL {spec['kvm']['halt_poll_cap_ns']} ns); "
                  f"stats are the kernel's own; foreign load {r['host_cpus']['foreign_load']:.2f} cores\n"
                  f"     latency: {spec['kvm']['latency_span']}\n"
                  f"checks: delivered <= injected {'ok' if c['delivered_le_injected'] else 'BROKEN'}"
                  f"{'' if eq is None else ', delivered == injected ' + ('ok' if eq else 'BROKEN')}\n")
        return
    late = f" ({c['late_wakeup']} late: kick delayed past the 1 s safety net)" if c["late_wakeup"] else ""
    out.write(f"checks: exactly-once {'ok' if c['exactly_once'] else 'BROKEN'}, lost wakeups {c['lost_wakeup']}{late}\n")
