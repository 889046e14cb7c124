"""`hostd run --backend kvm`: real KVM VMs, the kernel's own stats; refusals; teardown on every path.

Timings are asserted only as generous bounds: the kernel stops polling whenever another task is
runnable on the vCPU's CPU, so these tests check the counters' consistency, not polling success.
"""
import json
import os
import signal
import time

import pytest

from tests import json_keys
from tests.test_faults import _wait_for_vcpus
from vcpu.kvm import kvm_trace

EMU_ONLY = ("irq_coalesced", "spurious_wakeup", "lost_wakeup", "late_wakeup", "halt_poll_preempted")


def kvm_run(hostd, workload, policy, *extra, duration="0.8"):
    return hostd.run_json("run", "--backend", "kvm", "--workload", workload, "--policy", policy,
                          "--tick-hz", "200", *extra, "--duration", duration)


@pytest.mark.parametrize("workload", ["timer", "io", "idle"])
@pytest.mark.parametrize("policy", ["none", "adaptive"])
def test_each_workload_runs_on_the_kernels_halt_polling(hostd, kvm, workload, policy):
    r = kvm_run(hostd, workload, policy, *(("--halt-poll-ns", "200000") if policy == "adaptive" else ()))
    json_keys.check(f"run kvm {workload} {policy}", r)
    assert r["spec"]["backend"] == "kvm" and r["spec"]["calibration"] is None
    assert r["spec"]["kvm"]["halt_poll_cap_ns"] == (0 if policy == "none" else 200000)
    (v,) = r["vcpus"]
    s = v["stats"]
    assert s["irq_delivered"] > 10
    assert s["halt_successful_poll"] <= s["halt_attempted_poll"] <= s["halt_exits"]
    assert s["halt_exits"] >= s["irq_delivered"] - 1  # every wake ended a halt (the first may not have)
    if policy == "none":
        assert s["halt_attempted_poll"] == 0
    for name in EMU_ONLY:
        assert s[name] is None, name
    assert s["halt_poll_ns"] is None  # the kernel does not expose vcpu->halt_poll_ns
    lat = v["latency_ns"]
    assert lat["all"]["count"] == s["irq_delivered"]
    if v["kvm"]["paths_from"]:  # tracefs usable: each wake tagged by the halt that ended before it
        assert lat["poll"]["count"] + lat["block"]["count"] <= lat["all"]["count"]
        assert lat["block"]["count"] > 0 or policy == "adaptive"
    else:
        assert lat["poll"] is None and lat["block"] is None
    c = r["checks"]
    assert c["ok"] and c["delivered_le_injected"] and c["exactly_once"] is None
    assert c["delivered_eq_injected"] is (None if workload == "idle" else True)
    if workload == "timer":
        assert r["workload"]["latency_cycles"]["p50"] > 0


def test_idle_poll_guest_never_halts(hostd, kvm):
    r = kvm_run(hostd, "io", "idle-poll")
    (v,) = r["vcpus"]
    assert v["stats"]["halt_exits"] == 0 and v["stats"]["irq_delivered"] > 10
    assert v["latency_ns"]["guest_poll"]["count"] == v["stats"]["irq_delivered"]
    assert v["host"]["cpu_frac"] > 0.5  # the guest spins on its core


def test_fixed_says_it_runs_as_the_kernels_adaptive(hostd, kvm):
    r = hostd.run("run", "--backend", "kvm", "--workload", "timer", "--policy", "fixed", "--duration", "0.5")
    assert r.returncode == 0, r.stderr
    assert "fixed runs as the kernel's adaptive halt polling capped at the budget" in r.stdout


def test_a_guest_with_nothing_to_wake_it_does_not_hang_teardown(hostd, kvm):
    """A 10 s deadline and a 0.5 s run: the stop finds the guest halted for good."""
    t0 = time.monotonic()
    r = hostd.run_json("run", "--backend", "kvm", "--workload", "timer", "--interval-us", "10000000",
                       "--duration", "0.5")
    assert time.monotonic() - t0 < 8
    s = r["vcpus"][0]["stats"]
    assert s["irq_delivered"] == 0 and s["irq_injected"] == 1 and r["checks"]["ok"]


def test_no_kvm_is_one_line_exit_2_and_nothing_left(hostd):
    env = dict(os.environ, HPEMU_KVM_DEV="/nonexistent")
    p = hostd.popen("run", "--backend", "kvm", "--duration", "1", env=env)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert err.count("\n") == 1 and "/nonexistent" in err and "Traceback" not in err


def test_module_params_are_refused_where_read_only(hostd, kvm):
    path = "/sys/module/kvm/parameters/halt_poll_ns_shrink"
    if not os.path.exists(path) or os.stat(path).st_mode & 0o222:
        pytest.skip(f"{path} is writable or absent here; the refusal is for read-only module parameters")
    r = hostd.run("run", "--backend", "kvm", "--policy", "fixed", "--kvm-module-params", "--duration", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "read-only" in r.stderr


def _stand_in_params(tmp_path):
    """Writable files standing in for /sys/module/kvm/parameters (read-only on these machines), so
    that the save and restore around a real kvm run are proven here; the kernel itself runs with
    its own parameters, so these tests check the bookkeeping, not never-shrink's effect."""
    params, state = tmp_path / "params", tmp_path / "state"
    params.mkdir()
    for name, value in (("halt_poll_ns_grow_start", "10000"), ("halt_poll_ns_shrink", "2")):
        (params / name).write_text(f"{value}\n")
    env = dict(os.environ, HPEMU_KVM_PARAMS=str(params), HPEMU_STATE_DIR=str(state))
    values = lambda: {f.name: f.read_text().strip() for f in params.iterdir()}  # noqa: E731
    return env, values, state / "kvm-params.json"


FIXED_NEVER_SHRINK = ("run", "--backend", "kvm", "--workload", "timer", "--policy", "fixed",
                      "--halt-poll-ns", "500000", "--kvm-module-params")
ORIGINAL = {"halt_poll_ns_grow_start": "10000", "halt_poll_ns_shrink": "2"}
NEVER_SHRINK = {"halt_poll_ns_grow_start": "500000", "halt_poll_ns_shrink": "1"}


def _wait_until(cond, timeout=15):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("ending", ["normal", "SIGINT", "SIGTERM"])
def test_module_params_are_set_for_the_run_and_restored(hostd, kvm, tmp_path, ending):
    env, values, state = _stand_in_params(tmp_path)
    p = hostd.popen(*FIXED_NEVER_SHRINK, "--duration", "2" if ending == "normal" else "30", "--json", env=env)
    _wait_until(lambda: values() == NEVER_SHRINK)
    assert state.exists()  # saved before the first write
    if ending != "normal":
        p.send_signal(getattr(signal, ending))
    out, err = p.communicate(timeout=30)
    assert values() == ORIGINAL and not state.exists()
    if ending == "normal":
        assert p.returncode == 0, err
        assert "never-shrink" in json.loads(out)["spec"]["kvm"]["kernel_policy"]
    else:
        assert p.returncode == 130 and "Traceback" not in err


def test_module_params_left_by_a_killed_hostd_are_restored_by_the_next(hostd, kvm, tmp_path):
    env, values, state = _stand_in_params(tmp_path)
    p = hostd.popen(*FIXED_NEVER_SHRINK, "--duration", "30", env=env)
    _wait_until(lambda: values() == NEVER_SHRINK)
    hostd.watch_children(p)
    p.kill()
    p.communicate()
    assert values() == NEVER_SHRINK and state.exists()  # nothing could run on SIGKILL
    r = hostd.popen("run", "--duration", "0.5", env=env)
    _, err = r.communicate(timeout=30)
    assert r.returncode == 0, err
    assert "restored the kvm module parameters" in err
    assert values() == ORIGINAL and not state.exists()


def test_module_params_refused_without_root_or_for_another_policy(hostd, kvm, tmp_path):
    env, values, _ = _stand_in_params(tmp_path)
    r = hostd.popen("run", "--backend", "kvm", "--policy", "adaptive", "--kvm-module-params", "--duration", "1",
                    env=env)
    _, err = r.communicate(timeout=30)
    assert r.returncode == 2 and err.count("\n") == 1 and "only for --policy fixed" in err
    assert values() == ORIGINAL


@pytest.mark.parametrize("victim", ["vm0/vcpu1", "vm0/irqsrc"])
def test_sigkill_of_a_kvm_process_is_named_and_cleaned_up(hostd, kvm, victim):
    p = hostd.popen("run", "--backend", "kvm", "--vcpus", "2", "--workload", "idle", "--tick-hz", "50",
                    "--duration", "30")
    procs = _wait_for_vcpus(hostd, p, 2)
    t0 = time.monotonic()
    procs[victim].send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=20)
    assert time.monotonic() - t0 < 8
    assert p.returncode != 0
    assert victim.split("/")[1] in err and "SIGKILL" in err and "Traceback" not in err
    assert not _trace_instances({k.pid for k in procs.values()}), "a kvm trace instance outlived its run"


def _trace_instances(pids: set[int]) -> list[str]:
    root = kvm_trace.tracefs_root()
    if root is None:
        return []
    return [n for n in os.listdir(os.path.join(root, "instances")) if n in {f"{kvm_trace.PREFIX}{p}" for p in pids}]


def test_the_daemon_runs_a_kvm_vm_and_sets_its_cap_live(kvm):
    from tests.test_serve import _delta, serve_daemon

    with serve_daemon() as d:
        vm = d.launch("--backend", "kvm", "--workload", "timer", "--policy", "adaptive", "--halt-poll-ns", "0")
        time.sleep(0.5)
        before = _delta(d, vm, 1.0)
        assert before["halt_exits"] > 50 and before["halt_attempted_poll"] == 0, before
        r = d.hostd("set", vm, "halt_poll_ns=2000000")  # KVM_CAP_HALT_POLL on the live VM
        assert r.returncode == 0, r.stderr
        time.sleep(0.3)
        after = _delta(d, vm, 1.0)
        assert after["halt_attempted_poll"] > 0.5 * after["halt_exits"], after
        r = d.hostd("set", vm, "halt_poll_ns_grow=4")
        assert r.returncode != 0 and "global kvm module parameter" in r.stderr
        r = d.hostd("stop", vm, "--json")
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout)
        assert result["spec"]["backend"] == "kvm" and result["checks"]["ok"]
