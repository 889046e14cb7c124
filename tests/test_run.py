"""End to end: real VM process groups, measured; timings asserted only as ratios or bounds."""
import numpy as np

from tests import json_keys

SECTION8_VCPU_STATS = {
    "halt_exits", "halt_attempted_poll", "halt_successful_poll", "halt_poll_invalid", "halt_poll_preempted", "halt_wakeup",
    "halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns", "halt_poll_ns", "irq_injected",
    "irq_delivered", "irq_coalesced", "spurious_wakeup", "lost_wakeup",
}
PCT = {"count", "p50", "p90", "p99", "p999", "max"}


def timer_run(hostd, policy, *extra, duration="2"):
    return hostd.run_json("run", "--vcpus", "1", "--workload", "timer", "--interval-us", "500",
                          "--policy", policy, *extra, "--duration", duration)


def test_json_has_every_section8_key(hostd):
    r = timer_run(hostd, "fixed", "--halt-poll-ns", "2000000", duration="1")
    json_keys.check("run emu timer fixed", r)
    assert {"vcpus", "workload", "policy", "halt_poll_ns", "duration_s"} <= r["spec"].keys()
    (v,) = r["vcpus"]
    assert {"index", "pid", "cpu", "stats", "latency_ns", "host"} <= v.keys()
    assert SECTION8_VCPU_STATS <= v["stats"].keys()
    for path in ("poll", "block", "all"):
        assert PCT <= v["latency_ns"][path].keys()
    assert {"cpu_ns", "cpu_frac", "runq_wait_ns", "ctx_voluntary", "ctx_involuntary", "migrations"} <= v["host"].keys()
    assert {"name", "latency_ns", "latency_cycles"} <= r["workload"].keys()
    assert r["checks"]["exactly_once"] and r["checks"]["lost_wakeup"] == 0 and r["checks"]["ok"]


def test_timer_fixed_budget_polls_where_none_blocks(hostd):
    none_run = timer_run(hostd, "none")
    fixed_run = timer_run(hostd, "fixed", "--halt-poll-ns", "2000000")
    none, fixed = none_run["vcpus"][0], fixed_run["vcpus"][0]
    # At most one halt per 500 us deadline; a tenth of that is plenty to judge by.
    min_halts = 0.1 * none_run["spec"]["duration_s"] / 500e-6

    s = none["stats"]
    assert s["halt_exits"] > min_halts
    assert s["halt_attempted_poll"] == s["halt_successful_poll"] == 0
    assert none["latency_ns"]["poll"]["count"] == 0
    assert none["latency_ns"]["block"]["count"] == none["latency_ns"]["all"]["count"] > min_halts

    s = fixed["stats"]
    assert s["halt_exits"] > min_halts
    # A 2 ms budget outlasts every 500 us deadline, so no poll can expire: each halt polls, and a
    # poll fails only when another task wanted the CPU (kvm_vcpu_can_poll), counted apart (a cut
    # poll still succeeds if the event is there before the vCPU sleeps). How often others want the
    # CPU is the machine's business (a quiet one: under 0.5% of polls, see bench).
    assert s["halt_attempted_poll"] == s["halt_exits"]
    assert s["halt_attempted_poll"] - s["halt_successful_poll"] <= s["halt_poll_preempted"]
    assert s["halt_poll_invalid"] == 0  # KVM's meaning: every wakeup is valid on x86
    # The share itself is the neighbours' doing (a busy one left 46% here; quiet: > 99%), so it is
    # printed, and judged by bench only where the run's foreign load was low.
    print(f"fixed 2 ms: {s['halt_successful_poll'] / s['halt_exits']:.1%} of halts ended in the poll, "
          f"foreign load {fixed_run['host_cpus']['foreign_load']:.3f} core")
    assert s["halt_successful_poll"] > 0.01 * s["halt_exits"]
    assert fixed["latency_ns"]["poll"]["p50"] * 5 <= none["latency_ns"]["block"]["p50"]
    # Polling costs host CPU; blocking does not.
    assert fixed["host"]["cpu_frac"] > 2 * none["host"]["cpu_frac"]


def test_halt_poll_in_cycles_is_converted_with_the_tsc_rate(hostd):
    r = timer_run(hostd, "fixed", "--halt-poll", "2000000", "--tsc-khz", "2000000", duration="1")
    assert r["spec"]["halt_poll_ns"] == 1_000_000


def test_io_completes_real_odsync_writes(hostd, tmp_path):
    disk = tmp_path / "disk.img"
    r = hostd.run_json("run", "--workload", "io", "--policy", "none", "--io-file", str(disk), "--duration", "1.5")
    w = r["workload"]
    assert w["name"] == "io" and w["writes"] > 10  # even a rotating disk syncs 10 writes in 1.5 s
    assert r["device"]["io_service_ns"]["count"] >= w["writes"] - 1
    assert disk.stat().st_size >= 4096  # the device really wrote the file
    assert r["vcpus"][0]["stats"]["irq_delivered"] >= w["writes"]


def test_idle_reports_halts_per_second_and_host_cpu(hostd):
    r = hostd.run_json("run", "--vcpus", "2", "--workload", "idle", "--tick-hz", "20", "--policy", "none",
                       "--duration", "2")
    w = r["workload"]
    assert 20 <= w["halts_per_s"] <= 60  # 2 vCPUs x 20 Hz
    assert 0 <= w["cpu_frac_per_vcpu"] < 0.2
    assert all(v["stats"]["halt_wakeup"] > 10 for v in r["vcpus"])


def test_out_dir_holds_result_and_replayable_halts(hostd, tmp_path):
    out = tmp_path / "res"
    r = hostd.run("run", "--workload", "timer", "--policy", "none", "--duration", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "timer: wake - deadline" in r.stdout
    assert (out / "result.json").exists()
    halts = np.loadtxt(out / "vcpu0.halts", dtype=np.int64)
    # the timer was armed 500 us ahead: HLT-to-interrupt is just under that
    assert 300_000 < np.median(halts) < 520_000


def test_overcommit_stress_keeps_exactly_once(hostd):
    """4 vCPUs on 2 cores, ticks at 4 kHz per vCPU, polling: interrupts coalesce, none is lost."""
    r = hostd.run_json("run", "--vcpus", "4", "--cpus", "0,1", "--workload", "idle", "--tick-hz", "4000",
                       "--policy", "fixed", "--halt-poll-ns", "200000", "--duration", "3")
    assert r["spec"]["overcommit"] is True
    assert r["checks"]["exactly_once"] and r["checks"]["lost_wakeup"] == 0
    injected = sum(v["stats"]["irq_injected"] for v in r["vcpus"])
    assert injected > 0.25 * 4 * 4000 * r["spec"]["duration_s"]  # a quarter of the schedule at least
    for v in r["vcpus"]:
        s = v["stats"]
        assert s["irq_injected"] == s["irq_delivered"] + s["irq_coalesced"] + v["accounting"]["pending_at_exit"]


def test_high_rate_io_closed_loop_keeps_exactly_once(hostd):
    r = hostd.run_json("run", "--vcpus", "4", "--cpus", "0,1", "--workload", "io", "--io-service-ns", "0",
                       "--policy", "adaptive", "--duration", "2")
    assert r["checks"]["ok"]
    assert r["workload"]["writes"] > 1_000  # a high rate (~10k/s here), so that interrupts race halts


def test_processes_name_themselves(hostd):
    p = hostd.popen("run", "--vcpus", "2", "--workload", "idle", "--duration", "3")
    import time
    want = {"vm0/vcpu0", "vm0/vcpu1", "vm0/irqsrc"}
    names = set()
    deadline = time.monotonic() + 10
    while not want <= names and time.monotonic() < deadline:
        names = {k.name() for k in hostd.watch_children(p)}
        time.sleep(0.1)
    assert want <= names
    p.communicate(timeout=30)
    assert p.returncode == 0


def test_a_device_busy_with_ticks_still_hears_the_stop(hostd):
    """Ticks closer together than the device's spin window never let it sleep in epoll, where it
    otherwise looks at its control socket: it must look after firing them too, or the stop is missed."""
    import time

    t0 = time.monotonic()
    r = hostd.run_json("run", "--vcpus", "1", "--workload", "idle", "--tick-hz", "20000", "--policy", "fixed",
                       "--halt-poll-ns", "100000", "--duration", "1", timeout=60)
    assert r["checks"]["ok"] and r["vcpus"][0]["stats"]["irq_injected"] > 5_000
    assert time.monotonic() - t0 < 15  # a missed stop waits out the 10 s report timeout, then fails
