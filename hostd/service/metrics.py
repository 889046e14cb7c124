"""`hostd serve --metrics HOST:PORT`: the daemon's statistics in Prometheus' text exposition format.

The collector never touches a VM: it turns the latest snapshot the daemon's main loop took
(`Daemon.latest`, replaced whole, so reading it from the HTTP thread needs no lock) into metric
families. Names follow Prometheus' conventions (base units, `_total` counters), so PromQL and
dashboards agree with other exporters: `haltpoll_emu_<kvm stat>_total{vm,vcpu}` for counters,
with a KVM stat in ns exported in seconds (`halt_wait_ns` -> `halt_wait_seconds_total`), gauges
for values that go down (`halt_poll_seconds`, `irq_pending`, ...), and each log2 histogram of
KVM's binary stats as a Prometheus histogram in seconds whose `le` is the largest value its
bucket holds, (2^b - 1) ns, written as an exact decimal. Every HELP names the stat it comes
from; the JSON and `hostd stat` keep KVM's `_ns` names.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import start_http_server

from vcpu import abi

PREFIX = "haltpoll_emu_"
NS_PER_S = 10**9
# Values that are not monotonic counters: the slot's gauges, and what is still pending.
GAUGES = abi.GAUGES | {"irq_pending"}
HIST_SUM = {"halt_poll_success_hist": "halt_poll_success_ns", "halt_poll_fail_hist": "halt_poll_fail_ns",
            "halt_wait_hist": "halt_wait_ns"}
# The emulator's wake-latency histograms, one family with a `path` label so that PromQL can
# sum the paths (`sum without (path)`) or keep them apart.
WAKE_HISTS = {"wake_latency_poll_hist": "poll", "wake_latency_block_hist": "block"}
# Stats the kernel has under the same name (DESIGN §4); the rest are the emulator's own.
KVM_STATS = {"halt_exits", "halt_attempted_poll", "halt_successful_poll", "halt_poll_invalid", "halt_wakeup",
             "halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns", "halt_poll_ns", *HIST_SUM}
GUEST_STATS = {"guest_halt_poll_success", "guest_halt_poll_fail", "guest_halt_poll_ns", "guest_poll_ns"}
HELP = {
    "halt_exits": "HLT exits (kvm_vcpu_halt calls)",
    "halt_attempted_poll": "halts that polled",
    "halt_successful_poll": "halts that an interrupt ended inside the poll budget",
    "halt_poll_invalid": "successful polls whose wakeup was invalid (always 0 on x86, as in KVM)",
    "halt_poll_preempted": "failed polls cut short because another task wanted the CPU (need_resched stand-in)",
    "block_wake_excess_ns": "blocked wakes' time beyond the kernel's (calibration profile), not shown to the policies",
    "halt_wakeup": "wakeups from the blocked state",
    "halt_poll_success_ns": "time spent in successful polls",
    "halt_poll_fail_ns": "time spent in failed polls",
    "halt_wait_ns": "time spent blocked",
    "halt_poll_ns": "the vCPU's current poll budget",
    "guest_halt_poll_ns": "the guest governor's current poll limit",
    "guest_poll_ns": "time spent polling inside the guest",
    "irq_injected": "interrupts injected by the device",
    "irq_delivered": "interrupts delivered to the guest",
    "irq_coalesced": "injections merged into one wake",
    "irq_pending": "interrupts injected but not yet consumed",
    "spurious_wakeup": "wakes that found nothing pending",
    "lost_wakeup": "safety-net timeouts that found an interrupt pending (must stay 0)",
    "late_wakeup": "safety-net timeouts whose kick arrived within the grace period",
    "guest_halt_poll_success": "guest polls an interrupt ended (no HLT exit)",
    "guest_halt_poll_fail": "guest polls that ran out, followed by HLT",
    "idle_periods": "times the guest went idle (halted or guest-polled)",
    "timer_local": "guest timer expiries the vCPU took on its own timer, polling or blocked (as KVM's LAPIC hrtimer)",
    "ops": "workload operations completed (io writes, timer wakes, ticks)",
    "samples_dropped": "wake samples beyond the recording buffer",
}
# Module parameters in ns, exported in seconds under these names; the others are ratios or Hz.
PARAM_SECONDS = {"halt_poll_ns": "halt_poll_seconds", "halt_poll_ns_grow_start": "halt_poll_grow_start_seconds"}


def metric_name(stat: str) -> tuple[str, int]:
    """KVM stat -> (metric name without `_total`, divisor): `_ns` becomes `_seconds`, value / 1e9."""
    if stat.endswith("_ns"):
        return PREFIX + stat[: -len("_ns")] + "_seconds", NS_PER_S
    return PREFIX + stat, 1


def source(stat: str) -> str:
    """Where a stat comes from, for HELP: a reader can find it in KVM or in the emulator's stats."""
    if stat in KVM_STATS:
        return f"KVM's {stat}"
    if stat in GUEST_STATS:
        return f"the guest cpuidle-haltpoll stat {stat}"
    return f"the emulator's {stat}, no KVM counterpart"


def seconds_text(ns: int) -> str:
    """An integer of ns as an exact decimal of seconds (1 -> 0.000000001): no float rounding."""
    whole, frac = divmod(ns, NS_PER_S)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".")


# `le` of bucket b holds values up to 2^b - 1 ns (bucket index = fls64(value)); the last is +Inf.
BUCKET_LE = tuple(seconds_text(2**b - 1) for b in range(abi.HIST_BUCKETS - 1)) + ("+Inf",)


def cumulative(counts: list[int]) -> list[tuple[str, int]]:
    out, acc = [], 0
    for le, n in zip(BUCKET_LE, counts):
        acc += n
        out.append((le, acc))
    return out


class SnapshotCollector:
    def __init__(self, snapshot: Callable[[], dict | None]) -> None:
        self.snapshot = snapshot

    def describe(self):  # no metrics at registration time: they depend on the VMs
        return []

    def collect(self):
        snap = self.snapshot()
        if snap is None:
            return
        vms = snap["vms"]
        up = GaugeMetricFamily(PREFIX + "vms", "VMs the daemon runs")
        up.add_metric([], len(vms))
        yield up
        info = GaugeMetricFamily(PREFIX + "vm_info", "one per running VM", labels=["vm", "workload", "policy", "host_policy"])
        params = GaugeMetricFamily(
            PREFIX + "vm_param", "live module parameters of a VM, as /sys/module/kvm/parameters names them, "
            "except durations in seconds: " + ", ".join(f"{k} as {v}" for k, v in PARAM_SECONDS.items()),
            labels=["vm", "param"])
        uptime = GaugeMetricFamily(PREFIX + "vm_uptime_seconds", "time since the VM's guests started", labels=["vm"])
        for vm in vms:
            info.add_metric([vm["id"], vm["workload"], vm["policy"], vm["host_policy"]], 1)
            uptime.add_metric([vm["id"]], vm["uptime_s"])
            for k, v in vm["params"].items():
                params.add_metric([vm["id"], PARAM_SECONDS.get(k, k)], v / NS_PER_S if k in PARAM_SECONDS else v)
        yield info
        yield params
        yield uptime

        labels = ["vm", "vcpu"]
        fams = {}
        for n in ("irq_injected", "irq_pending", *abi.COUNTERS):
            name, div = metric_name(n)
            doc = f"{HELP.get(n, n.replace('_', ' '))}{' in seconds' if div != 1 else ''}; from {source(n)}"
            fams[n] = (GaugeMetricFamily(name, doc, labels=labels) if n in GAUGES
                       else CounterMetricFamily(name, doc, labels=labels)), div
        hists = {h: HistogramMetricFamily(
            PREFIX + h[: -len("_hist")] + "_duration_seconds",
            f"log2 histogram of {h[: -len('_hist')].replace('_', ' ')} durations in seconds; from {source(h)}",
            labels=labels) for h in HIST_SUM}
        wake = HistogramMetricFamily(
            PREFIX + "wake_latency_seconds", "wake latency (injection or deadline to the guest running) by path, "
            "log2 buckets; from the emulator's " + " and ".join(WAKE_HISTS) + ", no KVM counterpart",
            labels=[*labels, "path"])
        host = {
            "cpu": CounterMetricFamily(PREFIX + "vcpu_cpu_seconds", "host CPU time of the vCPU process, "
                                       "all threads; from /proc/PID/task/*/schedstat", labels=labels),
            "runq": CounterMetricFamily(PREFIX + "vcpu_runq_wait_seconds", "time runnable but waiting for a CPU; "
                                        "from /proc/PID/task/*/schedstat", labels=labels),
            "vol": CounterMetricFamily(PREFIX + "vcpu_voluntary_context_switches", "voluntary context switches; "
                                       "from /proc/PID/task/*/status", labels=labels),
            "invol": CounterMetricFamily(PREFIX + "vcpu_involuntary_context_switches", "involuntary context "
                                         "switches; from /proc/PID/task/*/status", labels=labels),
            "mig": CounterMetricFamily(PREFIX + "vcpu_migrations", "migrations between CPUs; "
                                       "from /proc/PID/task/*/sched", labels=labels),
        }
        for vm in vms:
            for v in vm["vcpus"]:
                lv = [vm["id"], str(v["index"])]
                c = v["counters"]
                for n, (fam, div) in fams.items():
                    x = c.get(n, 0)
                    if x is not None:  # a backend that cannot know a stat reports None: omit it
                        fam.add_metric(lv, x / div)
                for h, fam in hists.items():
                    total = c.get(HIST_SUM[h])
                    fam.add_metric(lv, cumulative(v["hist"][h]),
                                   sum_value=None if total is None else total / NS_PER_S)
                for h, path in WAKE_HISTS.items():
                    if h in v["hist"]:
                        wake.add_metric([*lv, path], cumulative(v["hist"][h]), sum_value=None)
                hs = v["host"]
                if hs:
                    host["cpu"].add_metric(lv, hs["cpu_ns"] / NS_PER_S)
                    host["runq"].add_metric(lv, hs["runq_wait_ns"] / NS_PER_S)
                    host["vol"].add_metric(lv, hs["ctx_voluntary"])
                    host["invol"].add_metric(lv, hs["ctx_involuntary"])
                    host["mig"].add_metric(lv, hs["migrations"])
        yield from (fam for fam, _ in fams.values())
        yield from hists.values()
        yield wake
        yield from host.values()


def serve_metrics(host: str, port: int, snapshot: Callable[[], dict | None]):
    """Start the exposition HTTP server in a daemon thread; returns (server, thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return start_http_server(port, addr=host, registry=registry)
