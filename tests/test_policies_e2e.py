"""Policies in real process groups: adaptive, guest-haltpoll, idle-poll, live parameters, replay."""
import json
import os
import time

from hostd.plumbing.spec import VmSpec, place
from hostd.plumbing.vm import Vm
from vcpu import abi
from vcpu.policy import AdaptivePoll, PolicySpec


def run(hostd, workload, policy, *extra, duration="2"):
    args = ["run", "--vcpus", "1", "--workload", workload, "--policy", policy, *extra, "--duration", duration]
    return hostd.run_json(*args)


def success_ratio(v):
    s = v["stats"]
    return s["halt_successful_poll"] / max(1, s["halt_exits"])


def expired_polls(v):
    """At least the polls that ran their whole budget: failed polls beyond those another task cut
    short (a cut poll may still succeed, when the event is there before the vCPU sleeps)."""
    s = v["stats"]
    return max(0, s["halt_attempted_poll"] - s["halt_successful_poll"] - s["halt_poll_preempted"])


def poll_ns(v):
    return v["stats"]["halt_poll_success_ns"] + v["stats"]["halt_poll_fail_ns"]


def test_adaptive_matches_fixed_on_timer_and_costs_less_idle(hostd):
    fixed_t = run(hostd, "timer", "fixed", "--halt-poll-ns", "200000", "--interval-us", "100")["vcpus"][0]
    adapt_t = run(hostd, "timer", "adaptive", "--halt-poll-ns", "200000", "--interval-us", "100")["vcpus"][0]
    print(f"timer 100 us, success: fixed {success_ratio(fixed_t):.3f}, adaptive {success_ratio(adapt_t):.3f}")
    # 200 us outlasts a 100 us deadline: fixed never runs out of budget. Adaptive does only while
    # it grows from 0 (10, 20, 40, 80 us) and once after each shrink, which only a halt longer
    # than the maximum causes, i.e. one some other task delayed.
    assert expired_polls(fixed_t) == 0
    assert expired_polls(adapt_t) <= 0.02 * adapt_t["stats"]["halt_exits"] + adapt_t["stats"]["halt_poll_preempted"]
    # Idle ticks far apart: a fixed budget fails every poll; adaptive shrinks to nothing.
    idle = ("--tick-hz", "50", "--halt-poll-ns", "200000")
    fixed_i = run(hostd, "idle", "fixed", *idle, duration="3")["vcpus"][0]
    adapt_i = run(hostd, "idle", "adaptive", *idle, duration="3")["vcpus"][0]
    ratio = adapt_i["host"]["cpu_frac"] / fixed_i["host"]["cpu_frac"]
    print(f"idle host CPU per vCPU: adaptive/fixed = {ratio:.2f}")
    # Adaptive polls a few times while it shrinks, fixed 200 us on every tick.
    assert poll_ns(adapt_i) < 0.2 * poll_ns(fixed_i)
    assert adapt_i["host"]["cpu_frac"] < fixed_i["host"]["cpu_frac"]
    assert adapt_i["stats"]["halt_poll_ns"] == 0  # shrunk below grow_start: reset


def test_idle_poll_never_halts_and_burns_a_core(hostd):
    r = run(hostd, "timer", "idle-poll", duration="1.5")
    (v,) = r["vcpus"]
    assert v["stats"]["halt_exits"] == 0
    assert v["guest"]["idle_periods"] > 500
    # Always runnable: on the CPU or waiting for it (other load may share the core).
    h = v["host"]
    assert (h["cpu_ns"] + h["runq_wait_ns"]) / (r["spec"]["duration_s"] * 1e9) > 0.9


def test_guest_haltpoll_keeps_halts_from_reaching_the_host(hostd):
    r = run(hostd, "timer", "guest-haltpoll", "--interval-us", "100", duration="1.5")
    (v,) = r["vcpus"]
    g = v["guest"]
    assert g["guest_halt_poll_success"] > 0.5 * g["idle_periods"]
    assert v["stats"]["halt_exits"] < 0.5 * g["idle_periods"]
    assert v["stats"]["halt_attempted_poll"] == 0  # the driver turned host polling off


def test_live_halt_poll_ns_change_takes_effect_on_the_next_halt():
    vcpu_cpus, device_cpu, overcommit = place(1, None, None, False)
    spec = VmSpec(vm="vmlive", vcpus=1, workload="timer", policy=PolicySpec("fixed", "fixed", 0),
                  vcpu_cpus=vcpu_cpus, device_cpu=device_cpu, overcommit=overcommit, sample_capacity=1 << 16)
    vm = Vm(spec)
    try:
        vm.start()
        vm.go()
        time.sleep(0.7)
        before = vm.counters(0)
        assert before["halt_exits"] > 100 and before["halt_attempted_poll"] == 0
        vm.set_param("halt_poll_ns", 2_000_000)
        time.sleep(0.7)
        after = vm.counters(0)
        exits = after["halt_exits"] - before["halt_exits"]
        polled = after["halt_attempted_poll"] - before["halt_attempted_poll"]
        polled_ok = after["halt_successful_poll"] - before["halt_successful_poll"]
        preempted = after["halt_poll_preempted"] - before["halt_poll_preempted"]
        # Every halt after the change polls. Two may look as if they did not: one that began between
        # reading `before` and the change (budget 0), and the one in flight at `after`, whose exit is
        # counted when it begins and its poll when it ends.
        assert exits > 100 and polled >= exits - 2
        # 2 ms against a 500 us timer: a poll fails only when another task wanted the CPU.
        assert polled_ok + preempted >= polled - 1 and polled_ok > 0
        assert after["halt_poll_ns"] == 2_000_000
        vm.stop()
    finally:
        vm.close()
    assert not [n for n in os.listdir("/dev/shm") if abi.segment_owner(n) == os.getpid()]


def test_replay_of_a_real_run_matches_the_policy_driven_directly(hostd, tmp_path):
    r = hostd.run("run", "--workload", "idle", "--tick-hz", "200", "--policy", "adaptive",
                  "--duration", "1.5", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    halts_file = tmp_path / "vcpu0.halts"
    halts = [int(x) for x in halts_file.read_text().split()]
    assert len(halts) > 100
    rep = hostd.run("replay", "--policy", "adaptive", "--halts", str(halts_file), "--json")
    assert rep.returncode == 0, rep.stderr
    rows = json.loads(rep.stdout)
    policy = AdaptivePoll()
    policy.set_params(200000, 2, 10000, 2)
    for row, h in zip(rows, halts, strict=True):
        budget = policy.begin_halt()
        assert row["budget_ns"] == budget
        assert row["polled_ok"] == (0 < budget and h <= budget)
        policy.end_halt(h, not row["polled_ok"], True)
