"""--neighbour: a duty-cycled process of ours on each vCPU's CPU (DESIGN §5), on run, tune and launch.

Parsing and its refusals, the result's neighbour block on both backends, a dead neighbour failing the
run, a SIGKILLed hostd taking its neighbours along, and launch/stat/stop through the daemon. Real
processes throughout; timings only as generous bounds (a neighbour gets at most its duty, and other
load on this machine may take some of it).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time

import psutil
import pytest

from hostd.cli import build_parser
from hostd.plumbing.errors import UsageError
from hostd.plumbing.neighbour import DEFAULT_PERIOD, NeighbourSpec, add_neighbour_option, baseline_ns, parse_neighbour
from hostd.plumbing.orphans import remove_stale_segments
from hostd.plumbing.units import parse_ns
from tests.test_faults import _wait_for_vcpus
from tests.test_serve import _wait, serve_daemon
from tests.test_tune import _track
from vcpu import abi

RUN = ("run", "--workload", "timer", "--duration", "1")


def test_duty_as_fraction_or_percentage_period_with_a_unit():
    assert parse_neighbour("0.5") == NeighbourSpec(0.5, parse_ns("", DEFAULT_PERIOD)) == NeighbourSpec(0.5, 2_000_000)
    assert parse_neighbour("50%") == NeighbourSpec(0.5, 2_000_000)
    assert parse_neighbour("10%:1ms") == NeighbourSpec(0.1, 1_000_000)
    assert parse_neighbour("0.25:500us") == NeighbourSpec(0.25, 500_000)
    assert parse_neighbour("1:1s") == NeighbourSpec(1.0, 1_000_000_000)
    assert parse_neighbour("100%:100000") == NeighbourSpec(1.0, 100_000)
    assert parse_neighbour("0.3:1ms").duty_ns == 300_000
    assert baseline_ns(2_000_000, 300_000_000) == 300_000_000
    assert baseline_ns(700_000_000, 300_000_000) == 700_000_000  # whole periods, at least the minimum
    assert baseline_ns(7_000_000, 300_000_000) == 301_000_000


@pytest.mark.parametrize("repeatable", [False, True])
def test_the_option_for_run_tune_launch_and_repeatable_for_compare(repeatable, capsys):
    p = argparse.ArgumentParser()
    add_neighbour_option(p, repeatable=repeatable)
    assert "--neighbour DUTY[:PERIOD]" in p.format_help()
    args = p.parse_args(["--neighbour", "10%", "--neighbour", "0.5:2ms"])
    assert args.neighbour == (["10%", "0.5:2ms"] if repeatable else "0.5:2ms")
    assert p.parse_args([]).neighbour is None
    for command in ("run", "tune", "launch"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert "--neighbour DUTY[:PERIOD]" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["0", "1.5", "150%", "0%", "-0.5", "nan", "", "half", ":2ms", "0.5:50us",
                                  "0.5:2s", "0.5:soon"])
def test_bad_neighbour_text_is_one_line_naming_the_option(text):
    with pytest.raises(UsageError) as exc:
        parse_neighbour(text)
    msg = str(exc.value)
    assert msg.startswith("--neighbour: ") and "\n" not in msg


@pytest.mark.parametrize("argv", [
    (*RUN, "--neighbour", "0"),
    (*RUN, "--neighbour", "1.5"),
    (*RUN, "--neighbour", "150%"),
    (*RUN, "--neighbour", "0.5:50us"),
    (*RUN, "--neighbour", "0.5:2s"),
    (*RUN, "--neighbour", "0.5", "--no-pin"),
    ("tune", "--workload", "timer", "--neighbour", "0"),
])
def test_bad_input_is_one_line_exit_2_and_starts_nothing(hostd, argv):
    p = hostd.popen(*argv)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "--neighbour" in err and "Traceback" not in err
    assert out == ""
    assert not [n for n in os.listdir("/dev/shm") if abi.segment_owner(n) == p.pid]


@pytest.mark.parametrize("backend", ["emu", "kvm"])
def test_run_reports_the_neighbours_cpu_beside_the_vm_and_alone(hostd, request, tmp_path, backend):
    if backend == "kvm":
        request.getfixturevalue("kvm")  # skips, saying why, where the kvm backend cannot run
    out = tmp_path / "res"
    r = hostd.run(*RUN, "--backend", backend, "--policy", "fixed", "--halt-poll-ns", "2000000",
                  "--neighbour", "0.5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "result.json").read_text())
    hostd.seen.update(v["pid"] for v in result["vcpus"])
    assert "neighbour: 50% of 2 ms on CPU(s)" in r.stdout  # the text report's line
    n = result["neighbour"]
    assert set(n) == {"duty", "period_ns", "cpus", "cpu_cores", "alone_cpu_cores", "cpu_lost_cores",
                      "runq_wait_us_per_period", "alone_runq_wait_us_per_period"}
    assert n["duty"] == 0.5 and n["period_ns"] == 2_000_000
    assert n["cpus"] == sorted(set(result["spec"]["vcpu_cpus"]))
    assert len(result["vcpus"]) == 1  # a neighbour is no vCPU
    # Alone it gets its duty, less what else runs on this machine; beside the VM no more than that.
    assert 0.2 <= n["alone_cpu_cores"] <= 0.6, n
    assert 0 <= n["cpu_cores"] <= 0.6, n
    assert n["cpu_lost_cores"] == pytest.approx(n["alone_cpu_cores"] - n["cpu_cores"], abs=1e-3)
    # It waits for its CPU each period at most a few of them (generous: the machine is shared).
    assert 0 <= n["alone_runq_wait_us_per_period"] <= 2_000 and 0 <= n["runq_wait_us_per_period"] <= 2_000, n
    assert result["checks"]["ok"]


def test_without_a_neighbour_the_block_is_null(hostd):
    r = hostd.run_json("run", "--workload", "idle", "--duration", "0.3")
    assert r["neighbour"] is None


def _run_dirs(owner: int) -> list[str]:
    return [n for n in os.listdir(tempfile.gettempdir()) if abi.run_dir_owner(n) == owner]


def test_a_neighbour_killed_mid_run_fails_the_run_and_leaves_nothing(hostd):
    p = hostd.popen(*RUN[:-1], "30", "--neighbour", "0.5")
    procs = _wait_for_vcpus(hostd, p, 1, neighbours=1)
    (cpu,) = procs["vm0/vcpu0"].cpu_affinity()
    neighbour = procs[f"vm0/neighbour{cpu}"]
    assert neighbour.cpu_affinity() == [cpu]
    t0 = time.monotonic()
    neighbour.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=15)
    assert time.monotonic() - t0 < 5
    assert p.returncode == 1, err
    assert f"neighbour{cpu}" in err and "SIGKILL" in err and "Traceback" not in err
    assert not _run_dirs(p.pid)
    # processes and segments: the hostd fixture's check


def test_sigkill_of_hostd_takes_its_neighbours_along(hostd):
    p = hostd.popen(*RUN[:-1], "30", "--neighbour", "0.5")
    kids = list(_wait_for_vcpus(hostd, p, 1, neighbours=1).values())
    p.kill()
    p.communicate()
    gone, alive = psutil.wait_procs(kids, timeout=3)
    assert not alive, f"outlived a SIGKILLed hostd: {[k.pid for k in alive]}"
    remove_stale_segments()  # what the next hostd does first: the dead run's segment and run dir
    assert not _run_dirs(p.pid)


def test_launch_keeps_its_neighbour_for_the_vms_life_and_stat_shows_its_cpu():
    with serve_daemon() as d:
        r = d.hostd("launch", "--workload", "idle", "--neighbour", "0.5", "--no-pin")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--neighbour" in r.stderr
        vm = d.launch("--workload", "idle", "--neighbour", "50%:1ms")
        (desc,) = d.call("ps")["vms"]
        procs = desc["neighbour"]["procs"]
        assert [p["cpu"] for p in procs] == sorted({v["cpu"] for v in desc["vcpu"]})
        assert all(psutil.Process(p["pid"]).name() == f"{vm}/neighbour{p['cpu']}" for p in procs)
        r = d.hostd("stat", "--json", "-i", "0.5")
        assert r.returncode == 0, r.stderr
        n = json.loads(r.stdout)["vms"][0]["neighbour"]
        assert n["duty"] == 0.5 and n["period_ns"] == 1_000_000
        assert 0.2 <= n["alone_cpu_cores"] <= 0.6 and 0 <= n["cpu_cores"] <= 0.6, n
        r = d.hostd("stat", "-1", "-i", "0.3")
        assert "neighbour 50% of 1 ms" in r.stdout, r.stdout
        stopped = d.call("stop", vm=vm)
        assert stopped["result"]["neighbour"]["duty"] == 0.5
        assert _wait(lambda: not any(psutil.pid_exists(p["pid"]) for p in procs), timeout=5)


def test_tune_shows_the_neighbours_cpu_lost_per_budget(hostd, tmp_path):
    out = tmp_path / "tune"
    r = hostd.run("tune", "--workload", "timer", "--range", "100us:1ms", "--points", "3", "--duration", "0.3",
                  "--max-duration", "0.3", "--neighbour", "0.5", "--out", str(out), timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "tune.json").read_text())
    _track(hostd, doc)
    assert doc["neighbour"] == {"duty": 0.5, "period_ns": 2_000_000}
    for p in doc["points"]:
        assert -0.6 <= p["neighbour_cpu_lost_cores"] <= 0.6 and 0 <= p["neighbour_cpu_cores"] <= 0.6, p
    assert "neighbour lost" in r.stdout  # the table's column
    header = (out / "points.csv").read_text().splitlines()[0].split(",")
    assert "neighbour_cpu_lost_cores" in header
