"""`hostd serve --metrics HOST:PORT`: the daemon's statistics in Prometheus' text exposition format.

The collector never touches a VM: it turns the latest snapshot the daemon's main loop took
(`Daemon.latest`, replaced whole, so reading it from the HTTP thread needs no lock) into metric
families. Names keep KVM's: `haltpoll_emu_<kvm stat>_total{vm,vcpu}` for counters, gauges for
values that go down (`halt_poll_ns`, `irq_pending`, ...), and each log2 histogram of KVM's binary
stats as a Prometheus histogram in ns (`le` = 2^b - 1, the largest value bucket b holds).
"""
from __future__ import annotations

from typing import Callable

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import start_http_server

from vcpu import abi

PREFIX = "haltpoll_emu_"
# Values that are not monotonic counters.
GAUGES = {"halt_poll_ns", "guest_halt_poll_ns", "irq_pending"}
HIST_SUM = {"halt_poll_success_hist": "halt_poll_success_ns", "halt_poll_fail_hist": "halt_poll_fail_ns",
            "halt_wait_hist": "halt_wait_ns"}
HELP = {
    "halt_exits": "HLT exits (kvm_vcpu_halt calls)",
    "halt_attempted_poll": "halts that polled",
    "halt_successful_poll": "halts that an interrupt ended inside the poll budget",
    "halt_poll_invalid": "polls cut short because the vCPU was preempted (need_resched stand-in)",
    "halt_wakeup": "wakeups from the blocked state",
    "halt_poll_success_ns": "ns spent in successful polls",
    "halt_poll_fail_ns": "ns spent in failed polls",
    "halt_wait_ns": "ns spent blocked",
    "halt_poll_ns": "the vCPU's current poll budget in ns",
    "irq_injected": "interrupts injected by the device",
    "irq_delivered": "interrupts delivered to the guest",
    "irq_coalesced": "injections merged into one wake",
    "irq_pending": "interrupts injected but not yet consumed",
    "spurious_wakeup": "wakes that found nothing pending",
    "lost_wakeup": "safety-net timeouts that found an interrupt pending (must stay 0)",
}


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
        params = GaugeMetricFamily(PREFIX + "vm_param", "live module parameters of a VM", labels=["vm", "param"])
        uptime = GaugeMetricFamily(PREFIX + "vm_uptime_seconds", "time since the VM's guests started", labels=["vm"])
        for vm in vms:
            info.add_metric([vm["id"], vm["workload"], vm["policy"], vm["host_policy"]], 1)
            uptime.add_metric([vm["id"]], vm["uptime_s"])
            for k, v in vm["params"].items():
                params.add_metric([vm["id"], k], v)
        yield info
        yield params
        yield uptime

        labels = ["vm", "vcpu"]
        names = [n for n in ("irq_injected", "irq_pending", *abi.COUNTERS)]
        fams = {}
        for n in names:
            doc = HELP.get(n, n.replace("_", " "))
            fams[n] = (GaugeMetricFamily(PREFIX + n, doc, labels=labels) if n in GAUGES
                       else CounterMetricFamily(PREFIX + n, doc, labels=labels))
        hists = {h: HistogramMetricFamily(PREFIX + h[: -len("_hist")] + "_duration_ns",
                                          f"log2 histogram of {h[: -len('_hist')].replace('_', ' ')} durations in ns "
                                          f"(KVM's {h})", labels=labels) for h in abi.HISTS}
        host = {
            "cpu": CounterMetricFamily(PREFIX + "vcpu_cpu_seconds", "host CPU time of the vCPU process", labels=labels),
            "runq": CounterMetricFamily(PREFIX + "vcpu_runq_wait_seconds", "time runnable but waiting for a CPU",
                                        labels=labels),
            "vol": CounterMetricFamily(PREFIX + "vcpu_voluntary_context_switches", "voluntary context switches",
                                       labels=labels),
            "invol": CounterMetricFamily(PREFIX + "vcpu_involuntary_context_switches", "involuntary context switches",
                                         labels=labels),
            "mig": CounterMetricFamily(PREFIX + "vcpu_migrations", "migrations between CPUs", labels=labels),
        }
        for vm in vms:
            for v in vm["vcpus"]:
                lv = [vm["id"], str(v["index"])]
                c = v["counters"]
                for n in names:
                    fams[n].add_metric(lv, c.get(n, 0))
                for h, fam in hists.items():
                    buckets, acc = [], 0
                    counts = v["hist"][h]
                    for b, n in enumerate(counts[:-1]):
                        acc += n
                        buckets.append((str(2**b - 1), acc))
                    acc += counts[-1]
                    buckets.append(("+Inf", acc))
                    fam.add_metric(lv, buckets, sum_value=c.get(HIST_SUM[h]) if h in HIST_SUM else None)
                hs = v["host"]
                if hs:
                    host["cpu"].add_metric(lv, hs["cpu_ns"] / 1e9)
                    host["runq"].add_metric(lv, hs["runq_wait_ns"] / 1e9)
                    host["vol"].add_metric(lv, hs["ctx_voluntary"])
                    host["invol"].add_metric(lv, hs["ctx_involuntary"])
                    host["mig"].add_metric(lv, hs["migrations"])
        yield from fams.values()
        yield from hists.values()
        yield from host.values()


def serve_metrics(host: str, port: int, snapshot: Callable[[], dict | None]):
    """Start the exposition HTTP server in a daemon thread; returns (server, thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return start_http_server(port, addr=host, registry=registry)
