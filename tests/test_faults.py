"""Teardown on every path: a dead child, Ctrl-C, SIGTERM. Nothing may survive."""
import os
import signal
import tempfile
import time

import psutil
import pytest

from irqsrc.sources import io_base_dir
from vcpu import abi


def _wait_for_vcpus(hostd, p, n, neighbours=0):
    """vm0's n vCPUs, its device and (--neighbour) its neighbours, by process name, once all run."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        kids = [k for k in hostd.watch_children(p) if k.name().startswith("vm0/")]
        if len(kids) == n + 1 + neighbours:
            time.sleep(0.5)  # let the run get going
            return {k.name(): k for k in kids}
        time.sleep(0.05)
    raise AssertionError("VM did not start")


def test_sigkill_of_a_vcpu_is_reported_and_cleaned_up(hostd):
    p = hostd.popen("run", "--vcpus", "2", "--workload", "timer", "--policy", "fixed", "--duration", "30")
    procs = _wait_for_vcpus(hostd, p, 2)
    t0 = time.monotonic()
    procs["vm0/vcpu1"].send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=15)
    assert time.monotonic() - t0 < 5
    assert p.returncode != 0
    assert "vcpu1" in err and "SIGKILL" in err


def test_sigkill_of_the_device_is_reported(hostd):
    p = hostd.popen("run", "--vcpus", "1", "--workload", "idle", "--duration", "30")
    procs = _wait_for_vcpus(hostd, p, 1)
    procs["vm0/irqsrc"].kill()
    out, err = p.communicate(timeout=15)
    assert p.returncode != 0 and "irqsrc" in err


def test_sigint_to_hostd_stops_everything(hostd):
    p = hostd.popen("run", "--vcpus", "2", "--workload", "timer", "--policy", "fixed", "--duration", "30")
    _wait_for_vcpus(hostd, p, 2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=15)
    assert p.returncode == 130
    assert "interrupted" in err and "Traceback" not in err


def test_sigterm_to_hostd_stops_everything(hostd):
    p = hostd.popen("run", "--vcpus", "1", "--workload", "io", "--policy", "none", "--duration", "30")
    _wait_for_vcpus(hostd, p, 1)
    p.terminate()
    p.communicate(timeout=15)
    assert p.returncode == 130
    # the run dir and the default io file's directory (on a disk-backed filesystem) are gone too
    for base in dict.fromkeys((tempfile.gettempdir(), io_base_dir())):
        assert not [n for n in os.listdir(base) if abi.run_dir_owner(n) == p.pid], base


@pytest.mark.parametrize("backend", ["emu", "kvm"])
def test_sigkill_of_hostd_takes_its_children_and_next_start_removes_the_segment(hostd, request, backend):
    if backend == "kvm":
        request.getfixturevalue("kvm")  # skips, saying why, where the kvm backend cannot run
    p = hostd.popen("run", "--backend", backend, "--vcpus", "2", "--workload", "timer", "--policy", "fixed",
                    "--duration", "30")
    kids = list(_wait_for_vcpus(hostd, p, 2).values())
    p.kill()
    p.communicate()
    gone, alive = psutil.wait_procs(kids, timeout=3)
    assert not alive, "children outlived a SIGKILLed hostd"
    left = [n for n in os.listdir("/dev/shm") if abi.segment_owner(n) == p.pid]
    dirs = [n for n in os.listdir(tempfile.gettempdir()) if abi.run_dir_owner(n) == p.pid]
    assert dirs, "the killed run's directory should still be there"
    r = hostd.run("run", "--backend", backend, "--workload", "idle", "--duration", "0.5")
    assert r.returncode == 0, r.stderr
    for name in left:
        assert name in r.stderr
        assert not os.path.exists(f"/dev/shm/{name}")
    assert not [n for n in os.listdir(tempfile.gettempdir()) if abi.run_dir_owner(n) == p.pid]


def test_a_vcpu_frozen_past_the_safety_net_is_late_not_lost(hostd):
    """SIGSTOP a blocked vCPU for longer than the 1 s safety net while its ticks keep coming."""
    p = hostd.popen("run", "--vcpus", "1", "--workload", "idle", "--tick-hz", "50", "--policy", "none",
                    "--duration", "4", "--json")
    procs = _wait_for_vcpus(hostd, p, 1)
    vcpu = procs["vm0/vcpu0"]
    vcpu.suspend()
    time.sleep(1.6)
    vcpu.resume()
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    import json
    r = json.loads(out)
    assert r["checks"]["exactly_once"] and r["checks"]["lost_wakeup"] == 0
    assert r["vcpus"][0]["stats"]["irq_coalesced"] > 0  # ticks piled up while it was frozen
