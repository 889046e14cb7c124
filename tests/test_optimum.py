"""hostd.analysis.optimum: the offline cost model, checked by brute force, by hypothesis against the replay
engine on synthetic traces, and on one real trace recorded by `hostd run`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostd.analysis.optimum import fixed_cost, optimal_budget, penalty_from_latencies, replay_cost
from hostd.commands.replay import read_halts
from hostd.replay.replayer import replay
from vcpu.policy import PolicySpec


def fixed(budget: int) -> PolicySpec:
    return PolicySpec(policy="fixed", host_policy="fixed", halt_poll_ns=budget)


def replayed_cost(halts: list[int], budget: int, penalty: float) -> float:
    return replay_cost(replay(fixed(budget), halts).summary, penalty)


def test_hand_computed_example():
    # P = 100: B=0 costs 4*100 = 400; B=10 hits 10, misses three: 10 + 3*110 = 340;
    # B=20: 10+20 + 2*120 = 270; B=500: 10+20+500 + 600 = 1130; B=1000: 1530.
    halts = [10, 20, 500, 1000]
    assert fixed_cost(halts, 0, 100) == 400
    assert fixed_cost(halts, 10, 100) == 340
    assert fixed_cost(halts, 15, 100) == 10 + 3 * 115  # between two halts: dearer than at the left end
    best = optimal_budget(halts, 100)
    assert (best.budget_ns, best.cost_ns) == (20, 270)
    assert best.cost_per_halt_ns == 67.5


def test_optimum_at_zero_when_halts_are_long_and_penalty_small():
    best = optimal_budget([1_000_000] * 5, 50_000)
    assert best.budget_ns == 0 and best.cost_ns == 5 * 50_000


def test_short_halts_and_a_big_penalty_favour_polling_them_all():
    halts = [3000, 5000, 4000]
    assert optimal_budget(halts, 1_000_000).budget_ns == 5000


def test_zero_length_halts_are_caught_by_a_one_ns_budget():
    best = optimal_budget([0, 0, 0], 10_000)
    assert (best.budget_ns, best.cost_ns) == (1, 0)
    assert replayed_cost([0, 0, 0], 1, 10_000) == 0


def test_empty_trace_and_bad_penalty():
    assert optimal_budget([], 5).budget_ns == 0
    with pytest.raises(ValueError):
        optimal_budget([1], -1)


def test_penalty_from_latencies():
    assert penalty_from_latencies(2_000, 40_000)[0] == 38_000
    assert penalty_from_latencies(50_000, 40_000)[0] == 0  # floored
    value, how = penalty_from_latencies(None, 40_000)
    assert value == 40_000 and "upper bound" in how
    assert penalty_from_latencies(2_000, None)[0] == 0


traces = st.lists(st.one_of(st.integers(0, 2_000), st.integers(0, 2_000_000)), min_size=1, max_size=60)
penalties = st.integers(0, 1_000_000)


@settings(max_examples=150, deadline=None)
@given(halts=traces, penalty=penalties, budgets=st.lists(st.integers(0, 3_000_000), min_size=1, max_size=8))
def test_optimum_replayed_is_never_worse_than_any_swept_fixed_budget(halts, penalty, budgets):
    best = optimal_budget(halts, penalty)
    at_best = replayed_cost(halts, best.budget_ns, penalty)
    assert at_best == pytest.approx(best.cost_ns)  # the model and the replay engine agree
    for b in budgets:
        assert at_best <= replayed_cost(halts, b, penalty) + 1e-6


@settings(max_examples=100, deadline=None)
@given(halts=st.lists(st.integers(0, 300), min_size=1, max_size=25), penalty=st.integers(0, 400))
def test_optimum_matches_brute_force_over_every_budget(halts, penalty):
    # Every whole-ns budget from 0 past the longest halt: nothing beats the exact search.
    costs = [fixed_cost(halts, b, penalty) for b in range(0, max(halts) + 3)]
    best = optimal_budget(halts, penalty)
    assert best.cost_ns == pytest.approx(min(costs))
    assert best.budget_ns == int(np.argmin(costs))  # ties go to the smallest budget


def test_optimum_on_a_real_trace(hostd, tmp_path: Path):
    out = tmp_path / "run"
    r = hostd.run("run", "--workload", "io", "--io-service-ns", "40000", "--policy", "fixed",
                  "--halt-poll-ns", "100000", "--duration", "0.6", "--out", str(out))
    assert r.returncode == 0, r.stderr
    halts = read_halts(str(out / "vcpu0.halts"))
    assert len(halts) > 50
    penalty = 30_000
    best = optimal_budget(halts, penalty)
    at_best = replayed_cost(halts, best.budget_ns, penalty)
    for b in (0, 10_000, 20_000, 40_000, 50_000, 100_000, 200_000, 1_000_000):
        assert at_best <= replayed_cost(halts, b, penalty) + 1e-6
