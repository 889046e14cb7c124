"""The rr workload (TCP_RR-like request/response) and its bare-process host reference, end to end."""
from __future__ import annotations

import pytest


def _check_accounting(r: dict) -> None:
    assert r["checks"]["exactly_once"] and r["checks"]["lost_wakeup"] == 0
    v = r["vcpus"][0]
    w = r["workload"]
    # Every recorded transaction is one delivered answer (the one in flight at stop is not a sample).
    assert v["stats"]["irq_delivered"] - w["transactions"] in (0, 1)
    assert w["transactions"] > 100 and w["dropped"] == 0


@pytest.mark.parametrize("policy", [["none"], ["fixed", "--halt-poll-ns", "2000000"]])
def test_rr_round_trip_spans_the_service_time(hostd, policy):
    # A long service time makes the span's definition visible: send -> answer -> guest runs again
    # can never be shorter than the device's service, and adds only the wake path to it.
    r = hostd.run_json("run", "--workload", "rr", "--rr-service-us", "1000", "--policy", *policy,
                       "--duration", "1")
    _check_accounting(r)
    w = r["workload"]
    assert w["rtt_ns"]["count"] == w["transactions"]
    assert w["rtt_ns"]["p50"] >= 1_000_000 and w["rtt_mean_ns"] >= 1_000_000
    # The wake (inject -> resume) is inside the span: the span exceeds service + wake p50.
    wake_p50 = r["vcpus"][0]["latency_ns"]["all"]["p50"]
    assert w["rtt_ns"]["p50"] >= 1_000_000 + 0.5 * wake_p50
    assert w["rtt_ns"]["p50"] < 1_000_000 * 3  # generous: device service dominates
    assert r["spec"]["rr"]["service_ns"] == 1_000_000 and not r["spec"]["rr"]["bare"]


def test_rr_bare_host_reference(hostd):
    r = hostd.run_json("run", "--workload", "rr", "--rr-bare", "--policy", "none", "--duration", "1")
    _check_accounting(r)
    assert r["spec"]["rr"]["bare"]
    assert r["vcpus"][0]["stats"]["halt_exits"] == 0  # no vCPU: nothing ever halts
    assert r["workload"]["rtt_ns"]["p50"] >= 20_000  # the default service time is inside every round trip


@pytest.mark.parametrize("args, msg", [
    (["--workload", "io", "--rr-bare"], "--rr-bare: only with --workload rr"),
    (["--workload", "rr", "--rr-service-us", "x"], "--rr-service-us: expected a whole number"),
])
def test_rr_bad_input_is_one_line_exit_2(hostd, args, msg):
    r = hostd.run("run", *args, "--duration", "1")
    assert r.returncode == 2
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
