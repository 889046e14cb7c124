"""Reliability: overcommit, external load, soak, any input, and half-written results."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostd.cli import build_parser
from hostd.plumbing.errors import UsageError
from hostd.plumbing.output import write_json
from hostd.measure.window import spec_from_args
from vcpu import abi
from vcpu.policy import HALT_POLL_NS_GROW_DEFAULT

from .conftest import ROOT


def test_overcommit_8_vcpus_on_2_cores_with_large_budgets(hostd):
    common = ("run", "--vcpus", "8", "--cpus", "0,1", "--workload", "io", "--io-service-ns", "20000",
              "--duration", "3")
    polled = hostd.run_json(*common, "--policy", "fixed", "--halt-poll-ns", "5000000")
    blocked = hostd.run_json(*common, "--policy", "none")
    assert polled["spec"]["overcommit"]
    for r in (polled, blocked):
        assert r["checks"]["exactly_once"] and r["checks"]["lost_wakeup"] == 0
    # vCPUs sharing a core preempt each other's polls: the need_resched() stand-in cuts them short.
    assert sum(v["stats"]["halt_poll_preempted"] for v in polled["vcpus"]) > 0
    ratio = polled["workload"]["ops_per_s"] / blocked["workload"]["ops_per_s"]
    print(f"overcommit writes/s, fixed 5 ms / none: {ratio:.2f}")
    assert ratio > 0.3


@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng not installed (apt-get install stress-ng)")
def test_timer_run_under_external_cpu_load(hostd):
    load = subprocess.Popen(["stress-ng", "--cpu", "2", "--timeout", "20"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(0.5)
        r = hostd.run_json("run", "--vcpus", "2", "--workload", "timer", "--policy", "fixed",
                           "--halt-poll-ns", "500000", "--duration", "3")
    finally:
        os.killpg(load.pid, signal.SIGKILL)
        load.wait()
    assert r["checks"]["exactly_once"] and r["checks"]["lost_wakeup"] == 0
    assert r["workload"]["wakes"] > 100


def _rss_tree(pids):
    total = {}
    for pid in pids:
        try:
            total[pid] = psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _slots(words, nvcpus):
    return [{name: words[abi.slot_base(i) + off] for name, off in abi.C.items()} for i in range(nvcpus)]


# Half a minute in the suite (20 s of it watched, the cap moved every second): the suite stays well under
# 10 minutes on 2 cores; HPEMU_SOAK_S=600 for the long one.
SOAK_S = float(os.environ.get("HPEMU_SOAK_S", "30"))
# The soak moves the live cap (as `hostd set` does) between these every second: with 1 ms halts the
# adaptive budget grows from 0 toward 1.28 ms under the high cap and shrinks back to 0 under the low
# one, so the gauges are seen moving both ways whatever the machine's noise.
SOAK_CAPS_NS = (2_000_000, 200_000)


@pytest.mark.timeout(SOAK_S + 90)
def test_soak(hostd):
    """2 vCPUs for half a minute (HPEMU_SOAK_S=600 for the long one): memory flat, counters monotonic,
    gauges within their bounds while the adaptive budget grows and shrinks."""
    seconds = SOAK_S
    p = hostd.popen("run", "--vcpus", "2", "--workload", "timer", "--policy", "adaptive", "--interval-us", "1000",
                    "--halt-poll-ns", str(SOAK_CAPS_NS[1]), "--duration", str(seconds), "--json")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = [k.pid for k in hostd.watch_children(p) if k.name().startswith("vm0/")]
        segs = [n for n in os.listdir("/dev/shm") if abi.segment_owner(n) == p.pid]
        if len(kids) == 3 and segs:
            break
        time.sleep(0.1)
    words = abi.attach(segs[0])
    pids = [p.pid, *kids]
    time.sleep(min(20, seconds / 6))  # warm-up: allocators and caches settle
    rss0 = _rss_tree(pids)
    prev = _slots(words, 2)
    moves = {"up": 0, "down": 0}
    end = time.monotonic() + seconds - min(20, seconds / 6) - 5
    tick = 0
    while time.monotonic() < end:
        abi.set_param(words, 2, "halt_poll_ns", SOAK_CAPS_NS[tick // 4 % 2])
        time.sleep(0.25)
        tick += 1
        cur = _slots(words, 2)
        for a, b in zip(prev, cur):
            for name in abi.C:
                if name in abi.GAUGES:
                    continue
                assert b[name] >= a[name], f"counter {name} went backwards: {a[name]} -> {b[name]}"
            # A cap change applies at the next halt, so the budget may sit above the new cap until then;
            # and upstream's grow_halt_poll_ns does not clamp: a budget under the cap grows past it (to
            # at most grow x the cap: 1.28 ms -> 2.56 ms under 2 ms), clamped at the next HLT.
            assert 0 <= b["halt_poll_ns"] < HALT_POLL_NS_GROW_DEFAULT * max(SOAK_CAPS_NS)
            assert b["guest_halt_poll_ns"] == 0  # adaptive: no guest governor
            moves["up"] += b["halt_poll_ns"] > a["halt_poll_ns"]
            moves["down"] += b["halt_poll_ns"] < a["halt_poll_ns"]
        prev = cur
    rss1 = _rss_tree(pids)
    words.release()
    out, err = p.communicate(timeout=seconds)
    assert p.returncode == 0, err
    result = json.loads(out)
    assert result["checks"]["ok"]
    print(f"halt_poll_ns moves seen: {moves}")
    assert moves["up"] >= 2 and moves["down"] >= 2, moves
    for pid, before in rss0.items():
        growth = (rss1[pid] - before) / before
        print(f"pid {pid}: rss {before >> 10} KiB -> {rss1[pid] >> 10} KiB ({100 * growth:+.1f}%)")
        assert growth < 0.05


# --- any input: works or is refused with one line -------------------------------------------
numbers = st.one_of(
    st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=8),
)
OPTIONS = ["--vcpus", "--cpus", "--device-cpu", "--interval-us", "--tick-hz", "--io-service-ns",
           "--halt-poll-ns", "--halt-poll", "--tsc-khz", "--duration", "--halt-poll-ns-grow",
           "--halt-poll-ns-shrink", "--guest-halt-poll-ns", "--exit-cost-ns"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workload=st.sampled_from(["idle", "io", "timer", "disk", ""]),
    policy=st.sampled_from(["none", "fixed", "adaptive", "guest-haltpoll", "idle-poll", "x"]),
    values=st.dictionaries(st.sampled_from(OPTIONS), numbers, max_size=4),
)
def test_any_run_options_validate_or_raise_one_line(workload, policy, values):
    argv = ["run", "--workload", workload, "--policy", policy]
    for k, v in values.items():
        argv += [f"{k}={v}"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's own refusal: one line, exit 2 (see cli._Parser)
        assert exc.code == 2
        return
    try:
        spec, _ = spec_from_args(args)
    except UsageError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and msg.startswith("--")
        return
    assert spec.vcpus >= 1 and spec.duration_s > 0 and spec.policy.halt_poll_ns >= 0


@settings(max_examples=8, deadline=None)
@given(values=st.dictionaries(st.sampled_from(["--vcpus", "--halt-poll-ns", "--tick-hz", "--cpus"]),
                              st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["0-1", "x", "1e3", "2"])),
                              max_size=3))
def test_any_input_to_a_real_run_leaves_nothing(values):
    argv = [sys.executable, "-m", "hostd", "run", "--workload", "idle", "--duration", "0.3"]
    for k, v in values.items():
        argv.append(f"{k}={v}")
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode in (0, 2), err
    assert "Traceback" not in err
    if p.returncode == 2:
        assert len(err.strip().splitlines()) == 1
    assert not [n for n in os.listdir("/dev/shm") if abi.segment_owner(n) == p.pid]


# --- result files are whole or absent -------------------------------------------------------
def test_a_writer_killed_mid_write_leaves_the_old_file_or_none(tmp_path):
    target = tmp_path / "results.json"
    write_json(str(target), {"generation": 0})
    big = {"generation": 1, "pad": "x" * (8 << 20)}
    code = (
        "import sys; from hostd.plumbing.output import write_json; import json;"
        f"write_json({str(target)!r}, json.loads(sys.stdin.read()))"
    )
    payload = json.dumps(big)
    for delay in (0.0, 0.01, 0.03, 0.08):
        p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE)
        p.stdin.write(payload.encode())
        p.stdin.close()
        time.sleep(delay)
        p.kill()
        p.wait()
        content = json.loads(target.read_text())  # never partial: it parses
        assert content["generation"] in (0, 1)
    leftovers = [n for n in os.listdir(tmp_path) if n != "results.json"]
    assert all(n.startswith(".tmp-") for n in leftovers)
