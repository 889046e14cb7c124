"""`hostd serve` with the rr workload: launch, ps and stat name it and its service time, stop ends
it with rr's figures (round trips), the refusals are one line, and nothing is left behind.

The daemon is started by test_serve.serve_daemon, which cleans up even when a test fails.
"""
from __future__ import annotations

import json
import time

from tests.test_serve import _alive, _wait, serve_daemon

# Slow answers keep the VMs light on a shared 2-core machine: their halts block (the budget is shorter).
SERVICE_US = 1000


def _one_line(r, *words: str) -> None:
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
    assert all(w in r.stderr for w in words) and "Traceback" not in r.stderr, r.stderr


def test_rr_launch_ps_stat_stop():
    with serve_daemon() as d:
        fixed = d.launch("--workload", "rr", "--policy", "fixed", "--halt-poll-ns", "200000",
                         "--rr-service-us", str(SERVICE_US))
        other = d.launch("--workload", "rr", "--policy", "none", "--vcpus", "2", "--rr-service-us", "2000")
        ps = json.loads(d.hostd("ps", "--json").stdout)
        vms = {v["id"]: v for v in ps["vms"]}
        assert list(vms) == [fixed, other], d.stderr()
        assert [v["workload"] for v in vms.values()] == ["rr", "rr"]
        assert vms[fixed]["rr_service_ns"] == SERVICE_US * 1000 and vms[fixed]["interval_ns"] is None
        assert vms[other]["rr_service_ns"] == 2_000_000 and vms[other]["policy"] == "none"
        pids = {i: [v["device"]["pid"]] + [c["pid"] for c in v["vcpu"]] for i, v in vms.items()}
        assert all(_alive(p) for ps_ in pids.values() for p in ps_)
        text = d.hostd("ps").stdout
        assert f"halt_poll_ns=200000 rr_service_us={SERVICE_US}" in text and "interval_us" not in text, text

        time.sleep(0.5)
        snap = json.loads(d.hostd("stat", "--json", "-i", "0.5").stdout)
        vm = next(v for v in snap["vms"] if v["id"] == fixed)
        assert vm["workload"] == "rr" and vm["rr_service_ns"] == SERVICE_US * 1000
        # Each round trip is a halt the answer's interrupt ends, every interrupt delivered once.
        assert vm["rates"]["halt_exits"] > 50 and vm["rates"]["irq_injected"] > 50, vm["rates"]
        assert vm["totals"]["lost_wakeup"] == 0
        r = d.hostd("stat", "-1", "-i", "0.3")
        assert f"{fixed}  rr  policy fixed  halt_poll_ns=200000 rr_service_us={SERVICE_US}" in r.stdout, r.stdout

        # Live: the budget is the host's, as for any workload; rr has no tick to set.
        r = d.hostd("set", fixed, "halt_poll_ns=100000")
        assert r.returncode == 0, r.stderr
        _one_line(d.hostd("set", fixed, "tick_hz=5"), "rr workload")
        # rr's host-alone reference has no vCPU to serve; the kernel's guest has no rr.
        _one_line(d.hostd("launch", "--workload", "rr", "--rr-bare"), "--rr-bare", "hostd run")
        _one_line(d.hostd("launch", "--workload", "rr", "--backend", "kvm"), "rr")
        assert [v["id"] for v in d.call("ps")["vms"]] == [fixed, other]

        # Stop: rr's figures, as `hostd run --workload rr` reports them.
        r = d.hostd("stop", other, "--json")
        assert r.returncode in (0, 1) and r.stdout, (r.returncode, r.stderr, d.stderr())
        result = json.loads(r.stdout)
        w = result["workload"]
        assert w["name"] == "rr" and w["transactions"] > 100 and w["dropped"] == 0, w
        assert w["transactions_per_s"] > 0 and w["rtt_ns"]["count"] == w["transactions"]
        assert 0 < w["rtt_ns"]["p50"] <= w["rtt_ns"]["p99"] <= w["rtt_ns"]["max"]
        assert result["spec"]["rr"]["service_ns"] == 2_000_000 and len(result["vcpus"]) == 2
        assert w["rtt_ns"]["p50"] >= 2_000_000  # the device's answer is inside every round trip
        assert result["checks"]["exactly_once"], result["checks"]
        assert _wait(lambda: not any(_alive(p) for p in pids[other]))
        assert all(_alive(p) for p in pids[fixed])

        r = d.hostd("stop", fixed)
        assert r.returncode in (0, 1), (r.stderr, d.stderr())
        assert "workload rr" in r.stdout and "round trip mean" in r.stdout, r.stdout
        assert f"device answers after {SERVICE_US:.1f} us" in r.stdout, r.stdout
        ended = {e["id"]: e for e in d.call("ps")["ended"]}
        assert ended[fixed]["state"] == ended[other]["state"] == "stopped"
        assert ended[fixed]["workload"] == "rr" and ended[fixed]["summary"]["halt_exits"] > 0

        # Nothing left: the VMs' processes, then the daemon's, its segments and its socket.
        children = d.all_pids()
        assert _wait(lambda: not any(_alive(p) for ps_ in pids.values() for p in ps_))
        assert d.hostd("shutdown").returncode == 0
        assert d.proc.wait(30) == 0
        assert _wait(lambda: not any(_alive(p) for p in children))
        assert d.segments() == []
