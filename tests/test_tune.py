"""`hostd tune`: budgets, the recommendation rule, bad input, and two real sweeps (timer, idle)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hostd.plumbing.errors import UsageError
from hostd.experiments.optimum import optimal_budget, replay_cost
from hostd.experiments.replay import read_halts, replay
from hostd.experiments.tune import MIN_HIT_RATIO, parse_ns, parse_range, recommend, sweep_budgets
from vcpu.policy import PolicySpec


def test_budgets_are_zero_then_log_spaced_with_exact_ends():
    assert sweep_budgets(10_000, 1_000_000, 4) == [0, 10_000, 100_000, 1_000_000]
    b = sweep_budgets(10_000, 2_000_000, 7)
    assert b[0] == 0 and b[1] == 10_000 and b[-1] == 2_000_000 and len(b) == 7
    ratios = [b[i + 1] / b[i] for i in range(1, 6)]
    assert max(ratios) / min(ratios) < 1.01
    with pytest.raises(UsageError):
        sweep_budgets(1, 3, 10)  # not enough distinct whole-ns budgets


def test_units_and_ranges():
    assert parse_ns("--range", "250us") == 250_000
    assert parse_ns("--range", "2ms") == 2_000_000
    assert parse_ns("--range", "1500") == 1500
    assert parse_range("10us:1ms") == (10_000, 1_000_000)
    for bad in ("5:1", "0:100", "10", "a:b", "1:5000000000", "10us:10us"):
        with pytest.raises(UsageError):
            parse_range(bad)


def _points(figures, success, budgets=None):
    budgets = budgets or [0, 10, 100, 1000, 10000][: len(figures)]
    return [{"budget_ns": b, "figure": f, "success_ratio": s, "host_cpu_frac_per_vcpu": 0.01 * i}
            for i, (b, f, s) in enumerate(zip(budgets, figures, success))]


def test_higher_is_better_share_is_figure_over_best():
    pts = _points([300, 600, 990, 1000], [0, 0.5, 0.99, 1.0])
    rec = recommend(pts, 0.99, higher_is_better=True)
    assert rec["budget_ns"] == 100 and not rec["polling_buys_nothing"]
    assert [p["share_of_best"] for p in pts] == pytest.approx([0.3, 0.6, 0.99, 1.0])


def test_lower_is_better_share_is_of_the_reduction_over_budget_zero():
    # A 30 ns wobble between 219 and 189 ns does not keep the 100-ns point from qualifying.
    pts = _points([50_000, 48_000, 219, 189], [0, 0.05, 0.99, 0.99])
    rec = recommend(pts, 0.99, higher_is_better=False)
    assert rec["budget_ns"] == 100
    assert pts[2]["share_of_best"] == pytest.approx((50_000 - 219) / (50_000 - 189))
    assert rec["target_figure"] == pytest.approx(50_000 - 0.99 * (50_000 - 189))


def test_no_poll_hits_means_polling_buys_nothing_whatever_the_noise():
    pts = _points([200_000, 150_000, 240_000], [0, 0, MIN_HIT_RATIO / 2])
    rec = recommend(pts, 0.99, higher_is_better=False)
    assert rec["budget_ns"] == 0 and rec["polling_buys_nothing"]
    assert "buys nothing" in rec["reason"]


def test_budget_zero_already_good_enough():
    pts = _points([995, 1000, 1000], [0, 0.5, 0.9])
    rec = recommend(pts, 0.99, higher_is_better=True)
    assert rec["budget_ns"] == 0 and rec["polling_buys_nothing"]


BAD = [
    ["--range", "5:1"],
    ["--points", "1"],
    ["--points", "x"],
    ["--target", "1.5"],
    ["--target", "0"],
    ["--range", "1ms"],
    ["--range", "0:1ms"],
    ["--duration", "0"],
    ["--workload", "io", "--figure", "p99"],
    ["--figure", "p42"],
    ["--workload", "disk"],
]


@pytest.mark.parametrize("argv", BAD)
def test_bad_input_is_one_line_and_exit_2(capsys, argv):
    from hostd.cli import main

    try:
        code = main(["tune", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("hostd") and out == ""


@pytest.mark.parametrize("argv", [BAD[0], BAD[1]])
def test_bad_input_from_the_command_line(hostd, argv):
    r = hostd.run("tune", *argv, timeout=30)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr and r.stdout == ""


def _tune(hostd, *argv: str) -> dict:
    r = hostd.run("tune", *argv, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def _track(hostd, doc: dict) -> None:
    """Hand every vCPU pid the sweep had to the leak check of the `hostd` fixture."""
    for p in doc["points"]:
        hostd.seen.update(p["pids"])
    hostd.seen.update(doc["recommendation"]["idle_cost"].get("pids", []))


def test_timer_recommends_a_budget_that_covers_the_interval(hostd, tmp_path: Path):
    interval_ns, target = 200_000, 0.8
    out = tmp_path / "tune"
    r = _tune(hostd, "--workload", "timer", "--interval-us", "200", "--range", "50us:1ms", "--points", "4",
              "--duration", "0.5", "--target", str(target), "--json", "--out", str(out))
    doc = json.loads(r.stdout)
    _track(hostd, doc)
    assert [p["budget_ns"] for p in doc["points"]] == [0, 50_000, 224_000, 1_000_000]
    assert doc["checks"]["ok"], doc["checks"]
    rec = doc["recommendation"]
    assert rec["budget_ns"] >= interval_ns, (rec, doc["points"])
    assert rec["success_ratio"] >= target, (rec, doc["points"])
    assert not rec["polling_buys_nothing"]
    assert 0 <= rec["idle_cost"]["cpu_frac_per_vcpu"] < 0.5
    # Files: CSV with one row per point, a PNG, the pooled trace, the same document.
    assert json.loads((out / "tune.json").read_text())["recommendation"]["budget_ns"] == rec["budget_ns"]
    rows = list(csv.DictReader((out / "points.csv").open()))
    assert [int(r["budget_ns"]) for r in rows] == [0, 50_000, 224_000, 1_000_000]
    assert [r["recommended"] for r in rows].count("1") == 1
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The offline optimum, evaluated by replay on the real recorded trace, beats every swept budget.
    o = doc["optimum"]
    assert o["penalty_ns"] > 0 and o["halts_used"] > 100
    halts = read_halts(str(out / "sweep.halts"))
    assert len(halts) == o["halts_recorded"]
    best = optimal_budget(halts, o["penalty_ns"])
    assert best.budget_ns == o["budget_ns"]

    def cost(b: int) -> float:
        return replay_cost(replay(PolicySpec("fixed", "fixed", b), halts).summary, o["penalty_ns"])

    for b in doc["budgets_ns"]:
        assert cost(best.budget_ns) <= cost(b) + 1e-6
    names = [p["policy"] for p in o["policies"]]
    assert any(n.startswith("adaptive") for n in names) and any(n.startswith("guest-haltpoll") for n in names)
    assert min(p["over_optimum_ns"] for p in o["policies"]) >= -1e-6


def test_idle_with_ticks_far_apart_polling_buys_nothing(hostd, tmp_path: Path):
    out = tmp_path / "idle"
    r = _tune(hostd, "--workload", "idle", "--tick-hz", "4", "--range", "10us:100us", "--points", "3",
              "--duration", "1", "--out", str(out))
    assert "Recommendation: halt_poll_ns = 0" in r.stdout and "buys nothing" in r.stdout
    doc = json.loads((out / "tune.json").read_text())
    _track(hostd, doc)
    rec = doc["recommendation"]
    assert rec["budget_ns"] in (0, doc["budgets_ns"][1]) and rec["polling_buys_nothing"]
    assert doc["optimum"]["budget_ns"] == 0


def test_sigterm_mid_sweep_stops_everything(hostd):
    from tests.test_faults import _wait_for_vcpus

    p = hostd.popen("tune", "--workload", "timer", "--points", "3", "--duration", "5")
    _wait_for_vcpus(hostd, p, 1)
    p.terminate()
    out, err = p.communicate(timeout=20)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
