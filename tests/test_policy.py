"""Host halt-poll policies against the rules of kvm_vcpu_halt / grow_halt_poll_ns /
shrink_halt_poll_ns (Linux mainline), step by step."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vcpu.policy import (
    KVM_HALT_POLL_NS_DEFAULT,
    U32_MAX,
    AdaptivePoll,
    FixedPoll,
    NoPoll,
    PolicySpec,
    make_host_policy,
)


def drive(p: AdaptivePoll, halts: list[int], valid: bool = True) -> tuple[list[int], list[int]]:
    """Per halt: the budget begin_halt returned, and vcpu->halt_poll_ns after end_halt."""
    budgets, after = [], []
    for h in halts:
        b = p.begin_halt()
        budgets.append(b)
        p.end_halt(h, waited=h > b, valid=valid)
        after.append(p.halt_poll_ns)
    return budgets, after


def adaptive(max_ns: int = 100000, grow: int = 2, grow_start: int = 10000, shrink: int = 2) -> AdaptivePoll:
    return AdaptivePoll(max_ns, grow, grow_start, shrink)


def test_defaults_are_upstreams() -> None:
    p = make_host_policy(PolicySpec("adaptive", "adaptive", KVM_HALT_POLL_NS_DEFAULT))
    assert (p.max_ns, p.grow, p.grow_start, p.shrink) == (200000, 2, 10000, 2)
    assert p.halt_poll_ns == 0  # a new vCPU starts without polling


def test_grows_from_zero_to_grow_start_then_doubles_until_halts_fit() -> None:
    budgets, after = drive(adaptive(), [50000] * 6)
    assert budgets == [0, 10000, 20000, 40000, 80000, 80000]
    assert after == [10000, 20000, 40000, 80000, 80000, 80000]  # 50000 <= 80000: no change


def test_growth_overshoots_the_max_and_is_capped_at_the_next_halt() -> None:
    # Upstream's grow_halt_poll_ns no longer clamps; kvm_vcpu_halt caps before polling.
    budgets, after = drive(adaptive(max_ns=100000), [90000] * 7)
    assert budgets == [0, 10000, 20000, 40000, 80000, 100000, 100000]
    assert after[4] == 160000
    assert after[5:] == [100000, 100000]


def test_halt_equal_to_the_max_neither_grows_nor_shrinks() -> None:
    p = adaptive()
    drive(p, [50000] * 3)  # -> 40000
    assert drive(p, [100000]) == ([40000], [40000])


def test_lowering_the_max_live_caps_at_the_next_begin_halt() -> None:
    p = adaptive()
    drive(p, [50000] * 4)
    assert p.halt_poll_ns == 80000
    p.set_params(30000, 2, 10000, 2)
    assert p.halt_poll_ns == 80000  # untouched until the vCPU halts again
    assert p.begin_halt() == 30000
    assert p.halt_poll_ns == 30000


def test_max_is_reread_after_the_wake() -> None:
    p = adaptive()
    drive(p, [50000] * 2)
    assert p.begin_halt() == 20000
    p.set_params(0, 2, 10000, 2)  # halt_poll_ns=0 written while the vCPU was halted
    p.end_halt(15000, waited=False, valid=True)
    assert p.halt_poll_ns == 0


def test_long_halts_shrink_by_halves_and_reset_below_grow_start() -> None:
    p = adaptive()
    drive(p, [50000] * 4)  # -> 80000
    budgets, after = drive(p, [150000] * 4)
    assert budgets == [80000, 40000, 20000, 10000]
    assert after == [40000, 20000, 10000, 0]  # 10000/2 = 5000 < grow_start: reset to 0


def test_shrink_zero_resets_to_zero_like_older_kernels() -> None:
    p = adaptive(shrink=0)
    drive(p, [50000] * 4)
    assert drive(p, [150000]) == ([80000], [0])


def test_no_growth_when_the_halt_was_longer_than_the_max() -> None:
    budgets, after = drive(adaptive(), [150000] * 3)
    assert budgets == [0, 0, 0]
    assert after == [0, 0, 0]


def test_invalid_wakeup_shrinks_even_after_a_short_halt() -> None:
    p = adaptive()
    drive(p, [50000] * 4)  # -> 80000
    assert drive(p, [1000, 1000, 1000], valid=False) == ([80000, 40000, 20000], [40000, 20000, 10000])
    assert drive(p, [1000], valid=False) == ([10000], [0])


def test_max_zero_forces_zero() -> None:
    p = adaptive(max_ns=0)
    assert drive(p, [5000, 50, 10**9]) == ([0, 0, 0], [0, 0, 0])


def test_grow_start_above_the_max_is_capped() -> None:
    p = adaptive(max_ns=5000, grow_start=10000)
    assert drive(p, [3000, 3000]) == ([0, 5000], [10000, 5000])


def test_grow_zero_never_grows() -> None:
    assert drive(adaptive(grow=0), [50000] * 3) == ([0, 0, 0], [0, 0, 0])


def test_grow_wraps_like_unsigned_int() -> None:
    p = adaptive(max_ns=U32_MAX)
    p.halt_poll_ns = 3_000_000_000
    p.begin_halt()
    p.end_halt(3_500_000_000, waited=True, valid=True)
    assert p.halt_poll_ns == (6_000_000_000 & U32_MAX)


def test_fixed_polls_the_same_budget_and_never_adapts() -> None:
    p = FixedPoll(700000)
    for h, valid in [(10, True), (10**9, True), (5000, False)]:
        assert p.begin_halt() == 700000
        p.end_halt(h, waited=h > 700000, valid=valid)
        assert p.halt_poll_ns == 700000
    p.set_params(1000, 2, 10000, 2)
    assert (p.begin_halt(), p.halt_poll_ns, p.next_budget()) == (1000, 1000, 1000)


def test_none_never_polls() -> None:
    p = NoPoll(200000)
    for h in (10, 10**9):
        assert p.begin_halt() == 0
        p.end_halt(h, waited=True, valid=True)
        assert p.halt_poll_ns == 0 and p.next_budget() == 0


@pytest.mark.parametrize(("policy", "host", "cls"), [
    ("none", "none", NoPoll), ("fixed", "fixed", FixedPoll), ("adaptive", "adaptive", AdaptivePoll),
    ("guest-haltpoll", "none", NoPoll), ("guest-haltpoll", "adaptive", AdaptivePoll), ("idle-poll", "none", NoPoll),
])
def test_make_host_policy_follows_host_policy(policy: str, host: str, cls: type) -> None:
    p = make_host_policy(PolicySpec(policy, host, 123456, 3, 2000, 4))
    assert type(p) is cls and p.name == host
    assert (p.max_ns, p.grow, p.grow_start, p.shrink) == (123456, 3, 2000, 4)


def test_spec_round_trips_through_msgpack() -> None:
    spec = PolicySpec("guest-haltpoll", "adaptive", 5000, guest_halt_poll_allow_shrink=False, exit_cost_ns=700)
    assert PolicySpec.from_dict(msgpack.unpackb(msgpack.packb(spec.to_dict()))) == spec


@pytest.mark.parametrize(("policy", "host"), [("halt-poll", "none"), ("fixed", "guest-haltpoll")])
def test_spec_rejects_unknown_policies(policy: str, host: str) -> None:
    with pytest.raises(ValueError):
        PolicySpec(policy, host, 0)


_ops = st.lists(st.one_of(
    st.tuples(st.just("halt"), st.integers(0, 2_000_000), st.booleans()),
    st.tuples(st.just("set"), st.integers(0, 1_000_000), st.integers(0, 4)),
), max_size=60)


@given(ops=_ops, grow=st.integers(0, 4), grow_start=st.integers(0, 200000), shrink=st.integers(0, 4),
       max_ns=st.integers(0, 1_000_000))
def test_budget_always_within_zero_and_the_current_max(ops: list, grow: int, grow_start: int, shrink: int,
                                                      max_ns: int) -> None:
    p = AdaptivePoll(max_ns, grow, grow_start, shrink)
    for op in ops:
        if op[0] == "set":
            p.set_params(op[1], op[2], grow_start, shrink)
            continue
        budget = p.begin_halt()
        assert 0 <= budget <= p.max_ns
        assert budget == p.halt_poll_ns
        p.end_halt(op[1], waited=op[1] > budget, valid=op[2])
        assert p.halt_poll_ns >= 0
        # An update lands on 0 or at/above grow_start; anything else is the unchanged budget.
        assert p.halt_poll_ns in (0, budget) or p.halt_poll_ns >= grow_start
