"""`hostd compare`: the pure aggregation and verdict, the CLI's errors, and one quick run end to end."""
from __future__ import annotations

import argparse
import csv
import json
import os
from io import StringIO

import pytest

from hostd.analysis import compare_summary, stats
from hostd.commands import compare
from hostd.measure import beside_neighbour, cells, compare_plan, disturbance
from hostd.output import compare_tables, figures, machine_note

from hostd.plumbing import hoststats, neighbour_cases
from hostd.plumbing.errors import UsageError
from hostd.plumbing.neighbour import NeighbourSpec
from tests import json_keys


# --- pure aggregation ---------------------------------------------------------------------------

def _core(s: dict) -> dict:
    return {k: s[k] for k in ("median", "min", "max", "n")}


def _verdict(*args, **kw) -> str:
    """The seed's verdict as one text: its claims, then its notes."""
    claims, notes = compare_summary.verdict_lines(*args, **kw)
    return " ".join(claims + notes)


def test_summarize_is_median_with_min_max_and_skips_missing() -> None:
    assert _core(stats.summarize([3.0, 1.0, 2.0])) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert _core(stats.summarize([4, 1, None, 2, 10])) == {"median": 3.0, "min": 1, "max": 10, "n": 4}
    assert stats.summarize([None, None]) == {"median": None, "min": None, "max": None, "value": None,
                                               "ci_low": None, "ci_high": None, "n": 0}
    assert stats.summarize([7]) == {"median": 7, "min": 7, "max": 7, "value": 7.0, "ci_low": None,
                                      "ci_high": None, "n": 1}


def test_summarize_carries_the_mean_and_its_interval_across_repeats() -> None:
    s = stats.summarize([1.0, 2.0, 3.0])
    assert s["value"] == 2.0 and s["n"] == 3
    assert s["ci_high"] - 2.0 == pytest.approx(2.0 - s["ci_low"]) == pytest.approx(4.303 / 3 ** 0.5, abs=1e-3)


def _io(policy: str, rep: int, writes: float, exits: int = 100, ok: int = 50) -> dict:
    return {"id": compare_plan.run_id("io", policy, rep), "experiment": "io", "policy": policy, "repeat": rep,
            "metrics": {"writes_per_s": writes, "halt_exits": exits, "halt_successful_poll": ok,
                        "poll_success_pct": 100.0 * ok / exits if exits else None}}


def test_aggregate_pct_of_idle_poll_is_per_repeat_then_median() -> None:
    runs = [
        _io("idle-poll", 1, 1000.0), _io("fixed", 1, 900.0), _io("none", 1, 300.0),
        _io("idle-poll", 2, 2000.0), _io("fixed", 2, 1900.0), _io("none", 2, 1000.0),
        _io("idle-poll", 3, 1000.0), _io("fixed", 3, 800.0), _io("none", 3, 400.0),
    ]
    s = compare_summary.aggregate(runs)["io"]
    assert list(s) == ["none", "fixed", "idle-poll"]  # the run order of policies, not input order
    fixed = s["fixed"]
    assert _core(fixed["writes_per_s"]) == {"median": 900.0, "min": 800.0, "max": 1900.0, "n": 3}
    assert fixed["writes_per_s"]["runs"] == ["io/fixed/r1", "io/fixed/r2", "io/fixed/r3"]
    assert fixed["writes_per_s"]["value"] == pytest.approx(1200.0)
    # Per repeat: 90%, 95%, 80% -> median 90, not 900 / 1000 of the medians by accident only.
    assert fixed["pct_of_idle_poll"]["median"] == pytest.approx(90.0)
    assert fixed["pct_of_idle_poll"]["min"] == pytest.approx(80.0)
    assert fixed["pct_of_idle_poll"]["max"] == pytest.approx(95.0)
    assert "io/idle-poll/r2" in fixed["pct_of_idle_poll"]["runs"]  # traceable to both runs
    assert s["none"]["pct_of_idle_poll"]["median"] == pytest.approx(40.0)  # 30, 50, 40
    assert s["idle-poll"]["pct_of_idle_poll"] == {"median": 100.0, "min": 100.0, "max": 100.0, "value": 100.0,
                                                  "ci_low": 100.0, "ci_high": 100.0, "n": 3,
                                                  "runs": ["io/idle-poll/r1", "io/idle-poll/r2", "io/idle-poll/r3"]}


def test_aggregate_idle_and_timer_cells() -> None:
    runs = [{"id": f"idle/none/r{r}", "experiment": "idle", "policy": "none", "repeat": r,
             "metrics": {"cpu_pct_per_vcpu": c, "halts_per_s": 10.0, "failed_polls_per_s": 0.0}}
            for r, c in ((1, 0.3), (2, 0.1), (3, 0.2))]
    runs.append({"id": "timer/fixed/r1", "experiment": "timer", "policy": "fixed", "repeat": 1,
                 "metrics": {"p50_ns": None, "p50_cycles": None}})
    s = compare_summary.aggregate(runs)
    assert s["idle"]["none"]["cpu_pct_per_vcpu"]["median"] == pytest.approx(0.2)
    assert s["timer"]["fixed"]["p50_ns"]["median"] is None  # no wake at all: shown as "-"
    assert figures.cell(s["timer"]["fixed"]["p50_ns"]) == "-"
    assert figures.cell(s["idle"]["none"]["cpu_pct_per_vcpu"], 2, "%") == "0.20% (0.10-0.30)"
    assert figures.cell({"median": 5278.6, "min": 5278.6, "max": 5278.6, "n": 1}) == "5,279"


def test_schedule_interleaves_policies_and_rotates_their_order() -> None:
    plan = compare_plan.Plan(quick=False, repeat=2, tick_hz=2.5, tsc_khz=2_000_000, out="x",
                      durations=dict(compare_plan.DURATIONS[False]))
    sched = plan.schedule()
    assert len(sched) == 2 * (5 + 5 + 3)
    first = [p for r, e, p in sched if r == 1 and e == "io"]
    second = [p for r, e, p in sched if r == 2 and e == "io"]
    assert first == ["none", "fixed", "adaptive", "guest-haltpoll", "idle-poll"]
    assert second == ["fixed", "adaptive", "guest-haltpoll", "idle-poll", "none"]
    assert [r for r, _, _ in sched] == sorted(r for r, _, _ in sched)  # every policy once before the next repeat
    # The seed's 2,000,000 cycles at 2 GHz: 1 ms.
    assert plan.fixed_ns == 1_000_000
    assert plan.policy_spec("fixed").halt_poll_ns == 1_000_000
    assert plan.policy_spec("adaptive").halt_poll_ns == 200_000
    assert plan.policy_spec("guest-haltpoll").host_policy == "none"
    assert plan.vm_spec("idle", "none").vcpus == 4
    # io's adaptive cell, bistable on a disk whose halts sit near the cap, takes more runs: after the
    # other cells' repeats, that cell alone, on every backend back to back.
    plan.io_adaptive_repeat, plan.backends = 4, ("emu", "kvm")
    sched = plan.schedule()
    assert len(sched) == 2 * (5 + 5 + 3) + 2
    assert sched[-2:] == [(3, "io", "adaptive"), (4, "io", "adaptive")]
    assert plan.cells()[-4:] == [(3, "io", "adaptive", "emu"), (3, "io", "adaptive", "kvm"),
                                 (4, "io", "adaptive", "emu"), (4, "io", "adaptive", "kvm")]


MEDIANS = {
    "io": {"none": {"writes_per_s": 2000.0, "pct_of_idle_poll": 30.0},
           "fixed": {"writes_per_s": 6500.0, "pct_of_idle_poll": 97.4},
           "adaptive": {"writes_per_s": 6000.0, "pct_of_idle_poll": 90.0},
           "guest-haltpoll": {"writes_per_s": 6400.0, "pct_of_idle_poll": 96.0},
           "idle-poll": {"writes_per_s": 6670.0, "pct_of_idle_poll": 100.0}},
    "idle": {"none": {"cpu_pct_per_vcpu": 0.1, "halts_per_s": 10.0, "failed_polls_per_s": 0.0},
             "fixed": {"cpu_pct_per_vcpu": 1.9, "halts_per_s": 10.0, "failed_polls_per_s": 9.0},
             "adaptive": {"cpu_pct_per_vcpu": 0.2, "halts_per_s": 10.0, "failed_polls_per_s": 0.0},
             "guest-haltpoll": {"cpu_pct_per_vcpu": 0.5, "halts_per_s": 10.0, "failed_polls_per_s": 0.0},
             "idle-poll": {"cpu_pct_per_vcpu": 100.0, "halts_per_s": 0.0, "failed_polls_per_s": 0.0}},
    "timer": {"none": {"p50_cycles": 60000}, "fixed": {"p50_cycles": 600}, "adaptive": {"p50_cycles": 50000}},
}


def test_verdict_is_computed_from_the_numbers() -> None:
    v = _verdict(MEDIANS, fixed_ns=770_380, overcommit=True, cores=2)
    assert "770 us" in v
    assert "reached 97% of idle-poll's writes/s (seed: 99%)" in v
    assert "3.2x the 2,000 writes/s of no polling (30% of idle-poll)" in v
    assert "at 1.90% of a core per idle vCPU against 0.10% of a core without polling" in v
    assert "adaptive 90% at 0.20% of a core; guest-haltpoll 96% at 0.50% of a core" in v
    assert "600 cycles with fixed vs 60,000 cycles without polling, 100x lower" in v
    assert "with polling below the seed's range, without within the seed's range" in v
    assert "90% of those polls failed" in v
    assert "is reproduced here, at an idle cost within the seed's 1.5-2.5%" in v
    assert "overcommitted (4 vCPUs + device on 2 CPUs)" in v


def test_verdict_follows_other_numbers() -> None:
    m = json.loads(json.dumps(MEDIANS))
    m["io"]["fixed"]["pct_of_idle_poll"] = 60.0
    m["idle"]["fixed"]["cpu_pct_per_vcpu"] = 0.4
    v = _verdict(m, fixed_ns=1_000_000)
    assert "reached 60% of idle-poll" in v
    assert "is not reproduced here, at an idle cost below the seed's" in v
    assert "overcommitted" not in v
    m["io"]["fixed"]["pct_of_idle_poll"] = 85.0
    m["idle"]["fixed"]["cpu_pct_per_vcpu"] = 3.0
    v = _verdict(m, fixed_ns=1_000_000)
    assert "is largely reproduced here, at an idle cost above" in v
    m["io"]["fixed"]["pct_of_idle_poll"] = 300.0  # idle-poll starved by a neighbour
    v = _verdict(m, fixed_ns=1_000_000)
    assert "probably starved of its CPU" in v and "reproduced here" not in v
    # ...unless the calibration charges idle=poll the kernel's injection into a running vCPU.
    v = _verdict(m, fixed_ns=1_000_000, running_inject_ns=446_000)
    assert "charges each interrupt into a running vCPU the 446 us" in v and "starved" not in v
    # Missing cells never crash the verdict.
    assert "n/a" in _verdict({"io": {"fixed": {}}}, fixed_ns=1)


def _summary(fixed: list[float], none: list[float]) -> dict:
    """aggregate() over io, idle and timer runs where fixed and none measured these values per repeat."""
    runs = []
    for pol, values in (("fixed", fixed), ("none", none)):
        for r, v in enumerate(values, 1):
            runs += [{"id": f"{e}/{pol}/r{r}", "experiment": e, "policy": pol, "repeat": r, "metrics": {k: v}}
                     for e, k in (("io", "writes_per_s"), ("idle", "cpu_pct_per_vcpu"), ("timer", "p50_cycles"))]
    return compare_summary.aggregate(runs)


def test_verdict_calls_overlapping_cells_indistinguishable() -> None:
    s = _summary([5000.0, 9000.0, 2000.0], [4000.0, 3000.0, 5000.0])  # medians 5,000 vs 4,000, wide spread
    v = _verdict(compare_summary.medians(s), fixed_ns=1_000_000, summary=s)
    assert "indistinguishable here from the 4,000 writes/s of no polling" in v and "1.2x" not in v
    assert "without polling (indistinguishable here; seed: 1.5-2.5%)" in v
    assert "5,000 cycles with fixed vs 4,000 cycles without polling, indistinguishable here" in v
    assert "One run per cell" not in v


def test_verdict_orders_cells_whose_intervals_are_apart() -> None:
    s = _summary([9000.0, 9100.0, 8900.0], [3000.0, 3050.0, 2950.0])
    v = _verdict(compare_summary.medians(s), fixed_ns=1_000_000, summary=s)
    assert "3.0x the 3,000 writes/s of no polling" in v and "indistinguishable" not in v
    # A single run per cell has no interval: the ordering stays, with a caution.
    one = _summary([9000.0], [3000.0])
    v = _verdict(compare_summary.medians(one), fixed_ns=1_000_000, summary=one)
    assert "3.0x the 3,000 writes/s" in v and "One run per cell has no interval across repeats" in v


def test_foreign_load_is_busy_time_not_ours_in_cores() -> None:
    # The VM's CPUs were busy 3 s of a 2 s window (2 CPUs), 2 s of it ours: half a core of neighbours.
    assert hoststats.foreign_load(3.0, 2.0, 2.0) == pytest.approx(0.5)
    assert hoststats.foreign_load(1.9, 2.0, 2.0) == 0.0  # jiffy rounding never goes negative
    assert hoststats.foreign_load(1.0, 0.0, 0.0) == 0.0
    assert hoststats.cpu_busy_s([0]) > 0


def test_the_machines_own_idle_setting_is_named_only_on_a_haltpoll_guest() -> None:
    note = machine_note.own_idle_note({"cpuidle_driver": "haltpoll", "guest_halt_poll_ns": 0}, "the io writes/s")
    assert "polls up to 0 ns" in note and "200,000" in note and note.endswith("so the io writes/s.")
    assert machine_note.own_idle_note({"cpuidle_driver": "haltpoll", "guest_halt_poll_ns": 200000}, "x")
    assert machine_note.own_idle_note({"cpuidle_driver": "intel_idle", "guest_halt_poll_ns": None}, "x") == ""
    assert machine_note.own_idle_note({"cpuidle_driver": None, "guest_halt_poll_ns": None}, "x") == ""
    # This machine's own, as read: the note is there exactly where the driver is haltpoll.
    own = hoststats.own_idle()
    assert bool(machine_note.own_idle_note(own, "x")) == (own["cpuidle_driver"] == "haltpoll")


def test_disturbance_names_its_cause_only_where_it_matters() -> None:
    def res(attempted, preempted):
        return {"vcpus": [{"stats": {"halt_attempted_poll": attempted, "halt_poll_preempted": preempted}}]}
    quiet = res(1500, 15)
    assert disturbance.disturbance("io", "fixed", quiet, 0.05) is None
    assert disturbance.disturbance("io", "none", quiet, 0.6) == "other processes used 0.60 of a core beside it"
    assert disturbance.disturbance("timer", "fixed", res(1500, 1100), 0.05) == \
        "73% of its polls were cut short by preemption"
    assert disturbance.disturbance("timer", "fixed", res(10, 9), 0.0) is None  # too few polls to say
    # A halting idle guest leaves its CPU to whoever wants it; idle-poll's share is what it reports.
    assert disturbance.disturbance("idle", "none", quiet, 0.99) is None
    assert disturbance.disturbance("idle", "idle-poll", res(0, 0), 0.5) is not None


def test_polls_our_neighbour_preempts_are_no_disturbance_but_others_load_still_is() -> None:
    res = {"vcpus": [{"stats": {"halt_attempted_poll": 1500, "halt_poll_preempted": 1400}}]}
    assert disturbance.disturbance("timer", "adaptive", res, 0.05) == "93% of its polls were cut short by preemption"
    assert disturbance.disturbance("timer", "adaptive", res, 0.05, ours=True) is None
    assert disturbance.disturbance("io", "adaptive", res, 0.6, ours=True) == "other processes used 0.60 of a core beside it"


def _neighbour_result(preempted: int, foreign: float) -> dict:
    """A timer run's §8 result, as far as compare reads it, beside a 50% neighbour."""
    stats = {"halt_exits": 1500, "halt_attempted_poll": 1500, "halt_successful_poll": 1500 - preempted,
             "halt_poll_preempted": preempted, "irq_injected": 1500, "irq_delivered": 1500, "irq_coalesced": 0,
             "lost_wakeup": 0}
    return {"spec": {"backend": "emu", "policy": "adaptive", "duration_s": 1.0},
            "vcpus": [{"index": 0, "stats": stats, "guest": {"guest_halt_poll_success": 0, "idle_periods": 1500},
                       "host": {"cpu_frac": 0.4}, "accounting": {"exactly_once": True}}],
            "workload": {"name": "timer", "latency_ns": {"p50": 9000, "p99": 30000, "count": 1500},
                         "latency_cycles": {"p50": 23000}},
            "neighbour": {"duty": 0.5, "period_ns": 2_000_000, "cpus": [1], "cpu_cores": 0.42,
                          "alone_cpu_cores": 0.5, "cpu_lost_cores": 0.08},
            "host_cpus": {"foreign_load": foreign}}


@pytest.mark.parametrize("foreign, attempts, disturbed", [(0.0, 1, False), (0.6, disturbance.MAX_ATTEMPTS, True)])
def test_a_neighbour_cell_is_not_retried_or_starred_for_the_polls_it_preempts(monkeypatch, foreign, attempts,
                                                                              disturbed) -> None:
    """measure_all beside our neighbour: 90% of the polls preempted is the experiment; others' load
    is still measured again and flagged."""
    plan = compare_plan.Plan(quick=True, repeat=1, tick_hz=2.5, tsc_khz=2_000_000, out="x",
                      durations=dict(compare_plan.DURATIONS[True]), neighbours=(NeighbourSpec(0.5, 2_000_000),))
    job = next(j for j in cells.jobs(plan) if j.neighbour is not None and j.workload == "timer"
               and j.policy == "adaptive")
    calls = []

    def fake(plan_, make_spec, what):
        spec = make_spec()
        assert spec.neighbour == NeighbourSpec(0.5, 2_000_000) and spec.policy.halt_poll_ns == 2_000_000
        calls.append(what)
        return _neighbour_result(1350, foreign), None, foreign

    monkeypatch.setattr(cells, "_measure_cell", fake)
    monkeypatch.setattr(cells, "jobs", lambda plan_: [job])
    monkeypatch.setattr(cells, "RETRY_BUDGET", 10.0)  # one cell alone: let the budget allow its retries
    runs, samples = cells.measure_all(plan, progress=False)
    (run,) = runs
    assert len(calls) == attempts and run["disturbed"] is disturbed and not samples
    assert run["poll_preempted_frac"] == 0.9 and run["metrics"]["polls_preempted_pct"] == 90.0
    assert run["neighbour"] == {"duty": 0.5, "period_ns": 2_000_000} and run["id"] == "neighbour/50%:2ms/timer/adaptive/r1"
    assert (run["disturbance"] or "").startswith("other processes") if disturbed else run["disturbance"] is None


# --- CLI errors ---------------------------------------------------------------------------------

def _args(*argv: str) -> argparse.Namespace:
    from hostd.cli import build_parser
    return build_parser().parse_args(["compare", *argv])


@pytest.mark.parametrize("argv, msg", [
    (("--repeat", "0"), "--repeat"),
    (("--repeat", "two"), "--repeat"),
    (("--tick-hz", "-1"), "--tick-hz"),
    (("--tick-hz", "nan"), "--tick-hz"),
    (("--tsc-khz", "0"), "--tsc-khz"),
    (("--neighbour", "0"), "--neighbour"),
    (("--neighbour", "0.5:50us"), "--neighbour"),
])
def test_bad_options_are_usage_errors(argv, msg, tmp_path) -> None:
    with pytest.raises(UsageError, match=msg):
        compare.plan_from_args(_args(*argv, "--out", str(tmp_path / "o")))


def test_neighbours_given_are_added_to_the_fourth_experiment_only(tmp_path) -> None:
    plan = compare.plan_from_args(_args("--neighbour", "25%", "--neighbour", "0.1", "--out", str(tmp_path / "o")))
    assert plan.neighbours == (NeighbourSpec(0.1, 2_000_000), NeighbourSpec(0.5, 2_000_000),
                               NeighbourSpec(0.25, 2_000_000))  # the defaults, then each new one once
    assert plan.neighbour_repeat == 1 and plan.neighbour_duration == 1.0 and plan.repeat == 3
    cells = beside_neighbour.cells(plan)
    assert {c.case for c in cells} == {"alone", "10%:2ms", "50%:2ms", "25%:2ms"}
    # cases x (timer, io) x (none, adaptive, guest-haltpoll), the emulator alone; adaptive's twice more
    assert len(cells) == 4 * 2 * 3 + 4 * 2 * 2
    assert sorted(c.repeat for c in cells if c.policy == "adaptive" and c.case == "alone" and c.workload == "io") == [1, 2, 3]
    assert all(spec.neighbour is None for _, e, p, b in plan.cells() for spec in [plan.vm_spec(e, p, b)])
    quick = compare.plan_from_args(_args("--quick", "--repeat", "2", "--out", str(tmp_path / "o")))
    assert quick.neighbour_repeat == 2 and quick.neighbour_duration == neighbour_cases.DURATION_S[True]
    assert beside_neighbour.repeats(quick, "adaptive") == 2 == len({c.repeat for c in beside_neighbour.cells(quick)})
    # adaptive capped at 2 ms for the timer, the seed's 2M cycles for io; guest-haltpoll's guest poll alike.
    assert beside_neighbour.policy_spec(plan, "timer", "adaptive").halt_poll_ns == 2_000_000
    assert beside_neighbour.policy_spec(plan, "io", "adaptive").halt_poll_ns == plan.fixed_ns
    g = beside_neighbour.policy_spec(plan, "io", "guest-haltpoll")
    assert (g.host_policy, g.halt_poll_ns, g.guest_halt_poll_ns) == ("none", 0, plan.fixed_ns)


def test_neighbour_only_with_the_seed_table(hostd) -> None:
    r = hostd.run("compare", "--table", "dyn2015", "--neighbour", "30%", timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--neighbour" in r.stderr and "Traceback" not in r.stderr
    r = hostd.run("compare", "--neighbour", "2", timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--neighbour" in r.stderr


def test_out_must_not_be_a_file(tmp_path, hostd) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    r = hostd.run("compare", "--quick", "--out", str(f), timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--out" in r.stderr and "Traceback" not in r.stderr
    r = hostd.run("compare", "--repeat", "-3", timeout=60)
    assert r.returncode == 2 and "--repeat" in r.stderr and "Traceback" not in r.stderr


# --- end to end -------------------------------------------------------------------------------------

def check_neighbour_experiment(doc: dict, out) -> None:
    """The fourth experiment in a quick emulator-only compare: every cell, each run with its neighbour,
    figures in sane ranges, and the one finding robust to a noisy 2-core machine: the guest's poll,
    which does not yield, ends more of its idle periods than the host's, which gives way."""
    nb = doc["neighbour"]
    runs = [r for r in doc["runs"] if r["experiment"] == beside_neighbour.EXPERIMENT]
    assert len(runs) == 3 * 2 * 3  # (alone, 10%, 50%) x (timer, io) x (none, adaptive, guest-haltpoll)
    assert [c["key"] for c in nb["config"]["cases"]] == ["alone", "10%:2ms", "50%:2ms"]
    assert list(nb["summary"]) == ["alone", "10%:2ms", "50%:2ms"] and nb["kvm"] is None
    assert nb["config"]["repeat"] == 1 and nb["config"]["duration_s"] == neighbour_cases.DURATION_S[True]
    for r in runs:
        case = r["id"].split("/")[1]
        assert r["neighbour"] == (None if case == "alone" else {"duty": float(case[:2]) / 100, "period_ns": 2_000_000})
        got = r["result"]["neighbour"]
        assert (got is None) == (case == "alone") and (got is None or got["duty"] == r["neighbour"]["duty"])
        assert r["result"]["spec"]["duration_s"] == pytest.approx(nb["config"]["duration_s"], rel=0.2)
        assert "preemption" not in (r["disturbance"] or "")  # our neighbour's preempting polls is the experiment
        assert r["result"]["checks"]["ok"]
    for case, duty in (("10%:2ms", 0.1), ("50%:2ms", 0.5)):
        for wl in ("timer", "io"):
            for pol, m in nb["summary"][case][wl].items():
                alone = m["neighbour_alone_cpu_cores"]["median"]
                assert 0.3 * duty <= alone <= duty + 0.1, (case, wl, pol, alone)
                assert -0.2 <= m["neighbour_cpu_lost_cores"]["median"] <= duty, (case, wl, pol)
                assert 0 < m["vcpu_cpu_cores"]["median"] <= 1.05, (case, wl, pol)
    t50 = nb["summary"]["50%:2ms"]["timer"]
    ok = {p: t50[p]["poll_success_pct"]["median"] for p in t50}
    assert ok["none"] == 0 and ok["guest-haltpoll"] > ok["adaptive"], ok
    assert t50["adaptive"]["polls_preempted_pct"]["median"] > 0  # the neighbour did cut host polls short
    assert "Beside a neighbour spinning 50% of 2 ms" in doc["verdict"]
    assert (out / "neighbour_tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "neighbour_runs.csv") as f:
        assert len(list(csv.DictReader(f))) == len(runs)
    buf = StringIO()
    compare_tables.print_tables(doc, buf)
    text = " ".join(buf.getvalue().split())  # rich wraps lines at its width
    assert "Beside a neighbour: timer" in text and "Beside a neighbour: io" in text and "50% of 2 ms" in text
    assert "one run of 0.5 s per cell" in text


def ordering_violations(doc: dict) -> list[str]:
    """The issue's measured ordering (DESIGN §7's direction, not its magnitudes); [] if it holds."""
    s = doc["summary"]
    w = {p: c["writes_per_s"]["median"] for p, c in s["io"].items()}
    cpu = {p: c["cpu_pct_per_vcpu"]["median"] for p, c in s["idle"].items()}
    t50 = {p: c["p50_ns"]["median"] for p, c in s["timer"].items()}
    checks = [
        # The raw emulator's idle-poll and fixed both spin through every write: they tie up to the
        # disk's own run-to-run noise (one 1.5 s run each: 0.83-1.1 seen here), both above none.
        (w["idle-poll"] >= 0.75 * w["fixed"], f"writes/s idle-poll >= 0.75 x fixed: {w}"),
        (w["idle-poll"] > w["none"], f"writes/s idle-poll > none: {w}"),
        (w["fixed"] > w["none"], f"writes/s fixed > none: {w}"),
        # adaptive and guest-haltpoll never poll on a 400 ms idle halt (their budgets stay 0), so
        # they cost what none costs up to noise: none is the lowest within 10% or 0.05 % of a
        # core (0.5 ms/s; an idle vCPU's whole cost is about that), below every poller.
        (cpu["none"] <= max(1.1 * min(cpu.values()), min(cpu.values()) + 0.05), f"idle CPU none lowest: {cpu}"),
        (cpu["fixed"] > cpu["none"], f"idle CPU fixed > none: {cpu}"),
        (cpu["idle-poll"] > cpu["none"], f"idle CPU idle-poll > none: {cpu}"),
        (t50["fixed"] < t50["none"], f"timer p50 fixed < none: {t50}"),
    ]
    return [msg for ok, msg in checks if not ok]


def _io_service_p50(doc: dict) -> dict[str, int]:
    """Each io cell's write service p50 (ns): how fast the disk was in that cell's run."""
    return {r["id"]: r["result"]["device"]["io_service_ns"]["p50"] for r in doc["runs"] if r["experiment"] == "io"}


def _runs_of(violation: str) -> set[str]:
    """The quick comparison's runs an ordering_violations() message compares."""
    what = violation.split(":")[0]
    exp = {"writes/s": "io", "idle CPU": "idle", "timer p50": "timer"}[next(
        k for k in ("writes/s", "idle CPU", "timer p50") if what.startswith(k))]
    return {f"{exp}/{p}/r1" for p in compare_plan.EXPERIMENT_POLICIES[exp] if f" {p} " in f" {what} "}


def s_fixed_pct(doc: dict) -> float:
    return doc["summary"]["io"]["fixed"]["pct_of_bare_metal"]["median"]


def quick_compare(hostd, out) -> dict:
    r = hostd.run("compare", "--quick", "--out", str(out), "--json", timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    for run in doc["runs"]:  # let the fixture prove every vCPU process is gone
        hostd.seen.update(v["pid"] for v in run["result"]["vcpus"])
    return doc


@pytest.mark.timeout(600)
def test_quick_compare_end_to_end(tmp_path, hostd) -> None:
    out = tmp_path / "res"
    doc = quick_compare(hostd, out)
    json_keys.check("compare --quick", doc)
    # The folder is complete, and results.json is what --json printed.
    files = set(os.listdir(out))
    expected = {"results.json", "io.csv", "idle.csv", "timer.csv", "io_runs.csv", "idle_runs.csv",
                "timer_runs.csv", "wake_latency_cdf.png", "throughput_vs_idle_cpu.png", "timer_latency.png",
                "neighbour.csv", "neighbour_runs.csv", "neighbour_tradeoff.png"}
    assert expected <= files, files
    assert not [f for f in files if f.startswith(".tmp-")]
    assert json.loads((out / "results.json").read_text()) == doc
    for png in (f for f in expected if f.endswith(".png")):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "io.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["policy"] for row in rows] == ["none", "fixed", "adaptive", "guest-haltpoll", "idle-poll"]

    assert doc["config"]["quick"] and doc["config"]["repeat"] == 1
    assert doc["config"]["own_idle"] == hoststats.own_idle()
    note = machine_note.own_idle_note(doc["config"]["own_idle"], "every wake latency and io writes/s above, on both backends")
    assert (note in doc["verdict_lines"]) if note else all("cpuidle-haltpoll" not in v for v in doc["verdict_lines"])
    assert len([r for r in doc["runs"] if r["experiment"] in compare_plan.EXPERIMENTS]) == 13
    assert all(r["neighbour"] is None and r["result"]["neighbour"] is None
               for r in doc["runs"] if r["experiment"] in compare_plan.EXPERIMENTS)  # the seed's: never beside one
    # The bare-metal reference, both ways, in the repeat; % of bare metal against the idle-CPUs figure.
    assert sorted(r["id"] for r in doc["runs"] if r["experiment"] == "bare-metal") == [
        "bare-metal/busy/r1", "bare-metal/idle/r1"]
    assert doc["bare_metal"]["idle"]["median"] > 0 and "idle" in doc["bare_metal"]["reference"]
    assert s_fixed_pct(doc) == pytest.approx(100 * doc["summary"]["io"]["fixed"]["writes_per_s"]["median"]
                                             / doc["bare_metal"]["idle"]["median"])
    assert doc["checks"]["ok"], doc["checks"]
    assert all(run["result"]["checks"]["ok"] for run in doc["runs"])

    # Every table number traces to a run: each summary cell names its runs, and their §8 results agree.
    by_id = {run["id"]: run for run in doc["runs"]}
    s = doc["summary"]
    for pol, cell in s["io"].items():
        (rid,) = cell["writes_per_s"]["runs"]
        assert cell["writes_per_s"]["median"] == by_id[rid]["result"]["workload"]["ops_per_s"]
    for pol, cell in s["idle"].items():
        (rid,) = cell["cpu_pct_per_vcpu"]["runs"]
        assert cell["cpu_pct_per_vcpu"]["median"] == 100 * by_id[rid]["result"]["workload"]["cpu_frac_per_vcpu"]
        assert by_id[rid]["result"]["spec"]["vcpus"] == 4
    for pol, cell in s["timer"].items():
        (rid,) = cell["p50_ns"]["runs"]
        assert cell["p50_ns"]["median"] == by_id[rid]["result"]["workload"]["latency_ns"]["p50"]
    assert by_id["io/fixed/r1"]["result"]["spec"]["halt_poll_ns"] == doc["config"]["fixed_halt_poll_ns"]

    assert "fixed polling" in doc["verdict"] and doc["seed"]["io_fixed_pct_of_idle_poll"] == 99.0
    check_neighbour_experiment(doc, out)

    # The measured ordering on this machine, in one quick run per cell. Other users' processes on
    # the vCPU's CPU starve a spinning vCPU (idle-poll, a polling one) for whole time slices, and
    # compare flags such runs; the disk's own speed moves between cells too (write service p50
    # 176-260 us within one quiet comparison here: fixed 1,587 writes/s against none's 1,867 with
    # 82% of its polls successful). So a miss is measured once more, as a whole comparison.
    bad = ordering_violations(doc)
    if bad:
        first = (bad, doc["disturbed_runs"], _io_service_p50(doc))
        doc = quick_compare(hostd, tmp_path / "again")
        bad = ordering_violations(doc)
        # Each miss's runs disturbed both times, as compare itself says: others' load that lasted
        # (a 60% stress-ng on both cores did), not an ordering of ours to answer for.
        if bad and all(_runs_of(msg) <= set(first[1]) & set(doc["disturbed_runs"]) for msg in bad):
            pytest.skip(f"the runs behind {bad} were disturbed in both attempts")
        foreign = [(r["id"], r["foreign_load"]) for r in doc["runs"]]
        assert not bad, (f"{bad}; disturbed runs {doc['disturbed_runs']}, io service p50 {_io_service_p50(doc)}, "
                         f"foreign load {foreign} (first attempt: {first[0]}, disturbed {first[1]}, "
                         f"io service p50 {first[2]})")
