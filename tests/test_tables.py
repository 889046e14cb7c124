"""compare --table dyn2015|guest2019: verdicts and aggregation (pure), and the plan's cells."""
from __future__ import annotations

import pytest

from hostd.analysis.tables_summary import aggregate, verdict, verdicts
from hostd.commands import tables
from hostd.measure.table_cells import TablePlan
from hostd.plumbing.published import QUOTED, ROWS, TABLES


def test_verdict_reproduced_direction_only_and_not():
    q = QUOTED["dyn2015"]["rr"]  # none 34, fixed 27, adaptive 26.7
    assert verdict("dyn2015", q, {"none": 33.0, "fixed": 28.0, "adaptive": 27.5})["verdict"] == "reproduced"
    v = verdict("dyn2015", q, {"none": 140.0, "fixed": 72.0, "adaptive": 71.0})
    assert v["verdict"] == "in direction only" and "none 140 vs quoted 34" in v["why"]
    v = verdict("dyn2015", q, {"none": 30.0, "fixed": 40.0, "adaptive": 41.0})
    assert v["verdict"] == "not reproduced" and "fixed above none" in v["why"]
    assert verdict("dyn2015", q, {"none": 30.0, "fixed": None, "adaptive": 41.0})["verdict"] == "n/a"


def test_verdict_takes_a_quoted_range_as_a_range():
    q = QUOTED["dyn2015"]["idle_250hz"]  # fixed quoted 4.6-14
    v = verdict("dyn2015", q, {"none": 1.0, "fixed": 13.0, "adaptive": 1.05})
    assert v["verdict"] == "reproduced", v


def test_quoted_about_equal_holds_within_tolerance():
    q = QUOTED["dyn2015"]["idle_250hz"]  # none 1.1, adaptive 1.2: about equal
    assert verdict("dyn2015", q, {"none": 1.87, "fixed": 14.4, "adaptive": 2.22})["verdict"] == "in direction only"
    v = verdict("dyn2015", q, {"none": 1.87, "fixed": 14.4, "adaptive": 3.0})
    assert v["verdict"] == "not reproduced" and "adaptive above none" in v["why"]


def _run(table, row, config, rep, **metrics):
    return {"id": f"{table}/{row}/{config}/r{rep}", "table": table, "row": row, "config": config, "repeat": rep,
            "backend": "emu", "metrics": metrics}


def test_pct_of_host_is_per_repeat_host_over_latency():
    runs = [_run("guest2019", "rr", c, rep, rtt_mean_us=x)
            for c, rep, x in (("host", 1, 30.0), ("host-poll", 1, 40.0), ("host", 2, 60.0), ("host-poll", 2, 60.0))]
    s = aggregate(runs)["guest2019"]["rr"]
    assert s["host-poll"]["pct_of_host"]["min"] == pytest.approx(75.0)
    assert s["host-poll"]["pct_of_host"]["max"] == pytest.approx(100.0)
    assert s["host"]["pct_of_host"]["median"] == pytest.approx(100.0)
    assert "guest2019/rr/host/r1" in s["host-poll"]["pct_of_host"]["runs"]
    assert {"value", "ci_low", "ci_high", "n"} <= set(s["host-poll"]["rtt_mean_us"])


def test_verdicts_judge_c0_and_its_proxy_and_flag_neighbours():
    runs = [_run("dyn2015", "idle_nohz", c, 1, c0_pct=x, vcpu_cpu_pct=y)
            for c, x, y in (("none", 80.0, 0.15), ("fixed", 90.0, 0.3), ("adaptive", 20.0, 0.2))]
    v = verdicts(aggregate(runs), {"dyn2015/idle_nohz/none/r1"})["dyn2015"]
    assert v["idle_nohz"]["verdict"] == "not reproduced" and "other processes" in v["idle_nohz"]["why"]
    assert v["idle_nohz:proxy"]["verdict"] == "reproduced"


def test_plan_cells_and_kernel_cells_that_cannot_run():
    plan = TablePlan(TABLES, quick=True, repeat=2, tsc_khz=2_600_000, backends=("emu", "kvm"))
    cells = plan.cells()
    emu = [c for c in cells if c[3] == "emu"]
    assert len(emu) == 2 * 12
    # rr has no kvm guest, always-poll needs the never-shrink module parameters: never run on kvm.
    assert all(c[1].workload == "idle" and c[2] != "fixed" for c in cells if c[3] == "kvm")
    rr = next(r for r in ROWS if r.table == "guest2019")
    assert "no rr workload" in plan.kvm_na(rr, "host-poll")
    assert "guest-haltpoll" in plan.kvm_na(rr, "guest-poll")
    idle = ROWS[0]
    assert plan.kvm_na(idle, "fixed")  # a reason, from the backend's own check
    assert plan.policy("guest-poll").guest_halt_poll_ns == 300_000
    assert plan.policy("host-poll").halt_poll_ns == 300_000 and plan.policy("fixed").halt_poll_ns == 500_000


def test_guest2019_measured_end_to_end_in_process(tmp_path):
    """The real processes, short: every figure measured, written, and nothing left behind."""
    import json
    import os

    import psutil

    from tests.conftest import segments_of

    plan = TablePlan(("guest2019",), quick=True, repeat=1, tsc_khz=2_600_000, durations={"idle": 0.5, "rr": 0.5})
    doc = tables.run_tables(plan, str(tmp_path), progress=False)
    assert doc["checks"]["ok"], doc["checks"]
    rr = doc["summary"]["guest2019"]["rr"]
    assert set(rr) == {"host", "host-poll", "guest-poll"}
    assert all(rr[c]["rtt_mean_us"]["median"] > 20 for c in rr)  # the 20 us service is inside every round trip
    assert rr["host"]["pct_of_host"]["median"] == 100.0
    assert rr["guest-poll"]["poll_success_pct"]["median"] is not None
    assert doc["verdicts"]["guest2019"]["pct_of_host"]["verdict"] in (
        "reproduced", "in direction only", "not reproduced")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {r["id"] for r in saved["runs"]} == {f"guest2019/rr/{c}/r1" for c in rr}
    assert (tmp_path / "guest2019.png").stat().st_size > 0 and (tmp_path / "guest2019.csv").exists()
    # multiprocessing's resource tracker (started by SharedMemory) is the one child meant to outlive a VM.
    left = [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
    assert not left
    assert not segments_of({os.getpid()})


@pytest.mark.timeout(120)
def test_compare_table_guest2019_end_to_end(tmp_path, hostd):
    import json

    out = tmp_path / "res"
    r = hostd.run("compare", "--table", "guest2019", "--quick", "--out", str(out), "--json", timeout=110)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    for run in doc["runs"]:  # let the fixture prove every vCPU process is gone
        hostd.seen.update(v["pid"] for v in run["result"]["vcpus"])
    assert json.loads((out / "results.json").read_text()) == doc
    assert (out / "guest2019.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["config"]["tables"] == ["guest2019"] and doc["quoted"]["guest2019"]["rr"]["host"] == [31.33, 31.33]
    by_id = {run["id"]: run for run in doc["runs"]}
    for config, cell in doc["summary"]["guest2019"]["rr"].items():  # every figure traces to its run
        (rid,) = cell["rtt_mean_us"]["runs"]
        assert cell["rtt_mean_us"]["median"] == by_id[rid]["result"]["workload"]["rtt_mean_ns"] / 1000
    assert by_id["guest2019/rr/host/r1"]["result"]["spec"]["rr"]["bare"]
    assert set(doc["verdicts"]["guest2019"]) == {"rr", "pct_of_host"}


@pytest.mark.parametrize("argv, msg", [
    (["--table", "nope"], "--table: unknown table"),
    (["--table", "seed", "--always-poll-us", "300"], "--always-poll-us: only with"),
    (["--table", "all", "--json"], "--json: one table at a time"),
])
def test_compare_table_bad_input_one_line_exit_2(hostd, argv, msg):
    r = hostd.run("compare", *argv, timeout=60)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
