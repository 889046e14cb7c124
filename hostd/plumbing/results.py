"""Turn a finished VM's counters, samples and host stats into the §8 result object."""
from __future__ import annotations

import numpy as np

from hostd.plumbing import backend
from hostd.plumbing.vm import Vm
from vcpu import abi
from vcpu.abi import PATH_BLOCK, PATH_GUEST_POLL, PATH_POLL

STATS = (
    "halt_exits", "halt_attempted_poll", "halt_successful_poll", "halt_poll_invalid",
    "halt_wakeup", "halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns", "halt_poll_ns",
    "irq_injected", "irq_delivered", "irq_coalesced", "spurious_wakeup", "lost_wakeup", "late_wakeup",
    "halt_poll_preempted", "block_wake_excess_ns", "ring_full",
)
EXTRA_STATS = (
    "guest_halt_poll_success", "guest_halt_poll_fail", "guest_halt_poll_ns", "guest_poll_ns",
    "idle_periods", "timer_local", "ops", "samples_dropped",
)


def percentiles(samples: np.ndarray) -> dict:
    """count, p50, p90, p99, p999, max; null percentiles when there is no sample."""
    if samples.size == 0:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "p999": None, "max": None}
    p50, p90, p99, p999 = np.percentile(samples, (50, 90, 99, 99.9))
    return {
        "count": int(samples.size), "p50": int(p50), "p90": int(p90), "p99": int(p99),
        "p999": int(p999), "max": int(samples.max()),
    }


def _arr(report: dict, key: str) -> np.ndarray:
    return np.frombuffer(report.get(key, b""), dtype=np.int64)


def rr_samples(vm: Vm) -> np.ndarray:
    """rr's round trips (ns) the vCPUs' buffers kept, over every vCPU."""
    return np.concatenate([_arr(vm.reports[f"vcpu{i}"], "rr_ns") for i in range(vm.spec.vcpus)])


def vcpu_samples(vm: Vm, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rep = vm.reports[f"vcpu{index}"]
    return _arr(rep, "latency_ns"), np.frombuffer(rep["path"], dtype=np.uint8), _arr(rep, "halt_ns")


def build(vm: Vm, tsc_khz: int) -> dict:
    spec = vm.spec
    win = vm.window
    elapsed_ns = max(1, win.t1_ns - win.t0_ns)
    dev = vm.reports["irqsrc"]
    kvm = spec.backend == "kvm"
    vcpus = []
    all_lat = []
    ok = True
    for i in range(spec.vcpus):
        counters = vm.counters(i)
        lat, path, _ = vcpu_samples(vm, i)
        all_lat.append(lat)
        rep = vm.reports[f"vcpu{i}"]
        poll = np.isin(path, (PATH_POLL, PATH_GUEST_POLL))
        host = win.delta[i]
        stats = {k: counters[k] for k in STATS}
        # Three tallies kept by different hands must agree: the device's private count, the
        # shared sequence word, and the vCPU's delivered + coalesced plus what is still pending.
        pending = counters["irq_pending"]
        device_count = dev["injected"][i]
        submits = (submit_accounting(None if kvm else vm.submitted(i), dev["submits"][i], device_count,
                                     stats["ring_full"]) if spec.workload in ("io", "rr") else None)
        if kvm:  # what the backend cannot know is null in its counters already
            accounting = _kvm_accounting(spec.workload, stats)
            ok = ok and accounting["delivered_le_injected"] and accounting["delivered_eq_injected"] is not False
        else:
            exactly_once = (
                device_count == stats["irq_injected"] == stats["irq_delivered"] + stats["irq_coalesced"] + pending
            ) and (submits is None or submits["ok"])
            ok = ok and exactly_once and stats["lost_wakeup"] == 0
            accounting = {"device_injected": device_count, "pending_at_exit": pending, "exactly_once": exactly_once}
        if submits is not None:
            accounting["submits"] = submits
            ok = ok and submits["ok"]
        vcpus.append({
            "index": i,
            "pid": vm.vcpu_pids()[i],
            "cpu": None if spec.vcpu_cpus is None else spec.vcpu_cpus[i],
            "stats": stats,
            "guest": {k: counters[k] for k in EXTRA_STATS},
            "hist": {k: counters[k] for k in abi.HISTS},
            "latency_ns": {
                # On kvm only the kvm:kvm_vcpu_wakeup trace says per halt whether it polled (DESIGN §9).
                "poll": percentiles(lat[poll]) if not kvm or rep["paths_traced"] else None,
                "block": percentiles(lat[path == PATH_BLOCK]) if not kvm or rep["paths_traced"] else None,
                "all": percentiles(lat),
                "guest_poll": percentiles(lat[path == PATH_GUEST_POLL]),
            },
            "host": {
                "cpu_ns": host.cpu_ns,
                "cpu_frac": host.cpu_ns / elapsed_ns,
                "runq_wait_ns": host.runq_wait_ns,
                "ctx_voluntary": host.ctx_voluntary,
                "ctx_involuntary": host.ctx_involuntary,
                "migrations": host.migrations,
                # Its request I/O thread on the housekeeping CPU (the exits the host handles);
                # not in cpu_ns, which is what the vCPU's own core burned.
                "exit_cpu_ns": host.exit_cpu_ns,
            },
            "accounting": accounting,
            "kvm": ({"tsc_khz": rep["tsc_khz"],
                     "paths_from": "kvm:kvm_vcpu_wakeup" if rep["paths_traced"] else None,
                     "trace_dropped": rep["trace_dropped"]} if kvm else None),
        })
    seconds = elapsed_ns / 1e9
    lost = None if kvm else sum(v["stats"]["lost_wakeup"] for v in vcpus)
    late = None if kvm else sum(v["stats"]["late_wakeup"] for v in vcpus)
    # The guest's own cycles on kvm; the emulator's ns converted with the TSC rate otherwise.
    cycles = (np.concatenate([_arr(vm.reports[f"vcpu{i}"], "latency_cycles") for i in range(spec.vcpus)])
              if kvm else None)
    return {
        "spec": {
            "vcpus": spec.vcpus,
            "backend": spec.backend,
            "calibration": spec.calibration,
            "kvm": backend.describe(spec.backend, spec.policy, spec.workload, bool(spec.extra.get("kvm_module_params"))),
            "workload": spec.workload,
            "policy": spec.policy.policy,
            "host_policy": spec.policy.host_policy,
            "halt_poll_ns": spec.policy.halt_poll_ns,
            "duration_s": round(seconds, 3),
            "tsc_khz": tsc_khz,
            "vcpu_cpus": spec.vcpu_cpus,
            "device_cpu": spec.device_cpu,
            "overcommit": spec.overcommit,
            "policy_params": spec.policy.to_dict(),
            "interval_ns": spec.interval_ns if spec.workload == "timer" else None,
            "tick_hz": spec.tick_hz if spec.workload == "idle" else None,
            "io": spec.io_summary() if spec.workload == "io" else None,
            "rr": ({"service_ns": spec.io_service_ns, "bare": bool(spec.extra.get("bare")),
                    "span": RR_SPAN} if spec.workload == "rr" else None),
        },
        "vcpus": vcpus,
        "workload": (_rr(vm, seconds) if spec.workload == "rr" else
                     _workload(spec.workload, vcpus, np.concatenate(all_lat), dev, seconds, tsc_khz, cycles)),
        "host_cpus": {
            "cpuidle_entries": {str(k): v for k, v in win.idle_delta.items()},
            # Cores' worth of CPU others used on this VM's CPUs: a noisy neighbour, measured.
            "foreign_load": round(win.foreign_load, 4),
            # The window these figures cover, on time.monotonic_ns() (DESIGN §3's one clock): an
            # outside tool cuts its own samples (a neighbour's CPU time, a trace) to the same span.
            "window_ns": {"t0": win.t0_ns, "t1": win.t1_ns},
        },
        "device": {
            "kicks_dropped": dev["kicks_dropped"],
            # A guest's submit (the ring's stamp) to the device taking it: the notify's own latency.
            "submit_wait_ns": percentiles(_arr(dev, "submit_wait_ns")),
            "io_service_ns": percentiles(_arr(dev, "io_service_ns")),
        },
        # What polling cost the host's other tasks: the CPU our neighbours got beside the VM, against
        # what they got alone on the same CPUs just before (DESIGN §5).
        "neighbour": neighbour_block(vm, elapsed_ns),
        "checks": _kvm_checks(vcpus, ok) if kvm else {
            "exactly_once": all(v["accounting"]["exactly_once"] for v in vcpus), "lost_wakeup": lost,
            "late_wakeup": late, "ok": ok},
    }


def neighbour_block(vm: Vm, elapsed_ns: int) -> dict | None:
    """duty, period_ns, cpus; cpu_cores (the neighbours' CPU in the window, in cores, summed over
    them), alone_cpu_cores (the same over their baseline, before the vCPUs ran) and cpu_lost_cores
    (alone - window); runq_wait_us_per_period and alone_runq_wait_us_per_period: how long a
    neighbour waited for its CPU each period, on average (schedstat's run_delay), beside the VM and
    alone: a poll that does not give way makes it wait. None without --neighbour."""
    n, alone = vm.spec.neighbour, vm.neighbour_alone
    if n is None or alone is None:
        return None
    cores = round(vm.window.neighbour.cpu_ns / elapsed_ns, 4)
    alone_cores = alone.cores
    cpus = vm.spec.neighbour_cpus()

    def wait_us(waited_ns: int, window_ns: int) -> float:
        periods = max(1, len(cpus) * window_ns // n.period_ns)
        return round(waited_ns / periods / 1e3, 1)

    return {"duty": n.duty, "period_ns": n.period_ns, "cpus": cpus,
            "cpu_cores": cores, "alone_cpu_cores": alone_cores, "cpu_lost_cores": round(alone_cores - cores, 4),
            "runq_wait_us_per_period": wait_us(vm.window.neighbour.runq_wait_ns, elapsed_ns),
            "alone_runq_wait_us_per_period": wait_us(alone.stats.runq_wait_ns, alone.window_ns)}


RR_SPAN = "guest clock right before sending the request -> guest clock once it runs again after the answer's interrupt"


def _rr(vm: Vm, seconds: float) -> dict:
    """rr's figure: round trip per transaction, mean and percentiles, over every vCPU. Every
    transaction counts; the mean and percentiles are over the round trips the buffers kept (the
    first ones: a long-running served VM outlives them), `dropped` the rest."""
    rtt = rr_samples(vm)
    dropped = sum(vm.reports[f"vcpu{i}"].get("rr_dropped", 0) for i in range(vm.spec.vcpus))
    return {"name": "rr", "transactions": int(rtt.size) + dropped, "transactions_per_s": (rtt.size + dropped) / seconds,
            "rtt_mean_ns": float(rtt.mean()) if rtt.size else None, "rtt_ns": percentiles(rtt), "dropped": dropped}


def submit_accounting(submitted: int | None, taken: int, completed: int, ring_full: int | None) -> dict:
    """io and rr: each submit taken once by the device and completed once. One request is in flight
    per vCPU, so the stop may catch one submitted but not yet taken, or taken but not completed;
    a full ring is a protocol bug. submitted and ring_full are None on kvm (no ring: the kernel
    signals the eventfd, and the device's count is the kernel's)."""
    ok = (not ring_full and (submitted is None or submitted - taken in (0, 1)) and taken - completed in (0, 1))
    return {"submitted": submitted, "device_taken": taken, "ring_full": ring_full, "ok": ok}


def _kvm_accounting(workload: str, stats: dict) -> dict:
    """What the kvm backend can prove: the guest took no interrupt nobody sent, and with one
    interrupt in flight (io, timer) it took every one but the one the stop may have caught."""
    injected, delivered = stats["irq_injected"], stats["irq_delivered"]
    return {
        "delivered_le_injected": delivered <= injected,
        # idle's ticks may merge in the PIC's request register, as a real tick's do.
        "delivered_eq_injected": None if workload == "idle" else injected - delivered in (0, 1),
        "in_flight_at_exit": injected - delivered,
    }


def _kvm_checks(vcpus: list[dict], ok: bool) -> dict:
    eq = [v["accounting"]["delivered_eq_injected"] for v in vcpus]
    return {
        "exactly_once": None, "lost_wakeup": None, "late_wakeup": None,  # the emulator's protocol only
        "delivered_le_injected": all(v["accounting"]["delivered_le_injected"] for v in vcpus),
        "delivered_eq_injected": None if None in eq else all(eq),
        "ok": ok,
    }


def _workload(name: str, vcpus: list[dict], lat: np.ndarray, dev: dict, seconds: float, tsc_khz: int,
              cycles: np.ndarray | None = None) -> dict:
    ops = sum(v["guest"]["ops"] for v in vcpus)
    if name == "io":
        return {"name": "io", "ops_per_s": ops / seconds, "writes": ops}
    if name == "timer":
        if cycles is None:
            cycles = (lat * (tsc_khz / 1e6)).astype(np.int64)
        return {"name": "timer", "latency_ns": percentiles(lat), "latency_cycles": percentiles(cycles),
                "wakes": ops}
    halts = sum(v["stats"]["halt_exits"] for v in vcpus)
    failed = sum(v["stats"]["halt_attempted_poll"] - v["stats"]["halt_successful_poll"] for v in vcpus)
    return {
        "name": "idle",
        "halts_per_s": halts / seconds,
        "failed_polls_per_s": failed / seconds,
        "cpu_frac_per_vcpu": sum(v["host"]["cpu_frac"] for v in vcpus) / len(vcpus),
    }
