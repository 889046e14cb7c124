"""The guest cpuidle-haltpoll governor against drivers/cpuidle/governors/haltpoll.c
(adjust_poll_limit, haltpoll_reflect), step by step."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vcpu.emu.guest_haltpoll import GuestHaltPoll, make_guest_policy
from vcpu.policy import PolicySpec


def limits(g: GuestHaltPoll, blocks: list[int]) -> list[int]:
    """poll_limit_ns after each HLT with the given residency."""
    out = []
    for b in blocks:
        g.reflect(True, b)
        out.append(g.poll_limit_ns)
    return out


def test_starts_at_zero_so_the_first_idle_halts_at_once() -> None:
    g = GuestHaltPoll()
    assert (g.guest_halt_poll_ns, g.grow, g.grow_start, g.shrink, g.allow_shrink) == (200000, 2, 50000, 2, True)
    assert g.poll_limit_ns == 0 and g.poll_budget() == 0


def test_grows_from_zero_to_grow_start_then_multiplies_and_clamps() -> None:
    g = GuestHaltPoll()
    # 30000 > 0 -> grow_start; 60000 > 50000 -> 100000; 150000 > 100000 -> 200000 (clamped).
    assert limits(g, [30000, 60000, 150000]) == [50000, 100000, 200000]
    assert g.poll_budget() == 200000


def test_no_change_when_the_residency_was_within_the_limit_or_exactly_the_max() -> None:
    g = GuestHaltPoll()
    limits(g, [30000, 60000])  # -> 100000
    assert limits(g, [100000, 20000]) == [100000, 100000]
    limits(g, [150000])  # -> 200000
    assert limits(g, [200000]) == [200000]  # not > guest_halt_poll_ns: no shrink either


def test_residency_exactly_the_max_still_grows() -> None:
    g = GuestHaltPoll()
    g.poll_limit_ns = 100000
    assert limits(g, [200000]) == [200000]  # block_ns <= guest_halt_poll_ns is inclusive


def test_long_residency_shrinks_and_resets_below_grow_start() -> None:
    g = GuestHaltPoll()
    limits(g, [30000, 60000, 150000])  # -> 200000
    assert limits(g, [300000] * 4) == [100000, 50000, 0, 0]  # 50000/2 < grow_start: 0


def test_shrink_landing_exactly_on_grow_start_is_kept() -> None:
    g = GuestHaltPoll(grow_start=50000)
    g.poll_limit_ns = 100000
    assert limits(g, [10**6]) == [50000]


def test_allow_shrink_n_never_shrinks() -> None:
    g = GuestHaltPoll(allow_shrink=False)
    limits(g, [30000, 60000])
    assert limits(g, [10**9, 10**9]) == [100000, 100000]


def test_shrink_zero_resets() -> None:
    g = GuestHaltPoll(shrink=0)
    limits(g, [30000, 60000, 150000])
    assert limits(g, [300000]) == [0]


def test_grow_start_above_the_max_is_clamped() -> None:
    g = GuestHaltPoll(guest_halt_poll_ns=30000, grow_start=50000)
    assert limits(g, [20000]) == [30000]


def test_a_guest_poll_success_changes_nothing() -> None:
    g = GuestHaltPoll()
    limits(g, [30000])
    for _ in range(3):
        g.reflect(False, 0)
        g.reflect(False, 10**9)  # the poll state (index 0) never adjusts, whatever is passed
    assert g.poll_limit_ns == 50000


def test_make_guest_policy_only_for_guest_haltpoll() -> None:
    for policy, host in [("none", "none"), ("fixed", "fixed"), ("adaptive", "adaptive"), ("idle-poll", "none")]:
        assert make_guest_policy(PolicySpec(policy, host, 0)) is None
    g = make_guest_policy(PolicySpec("guest-haltpoll", "none", 0, guest_halt_poll_ns=400000, guest_halt_poll_grow=3,
                                     guest_halt_poll_grow_start=20000, guest_halt_poll_shrink=4,
                                     guest_halt_poll_allow_shrink=False))
    assert g is not None
    assert (g.guest_halt_poll_ns, g.grow, g.grow_start, g.shrink, g.allow_shrink) == (400000, 3, 20000, 4, False)
    assert g.poll_limit_ns == 0


@given(events=st.lists(st.tuples(st.booleans(), st.integers(0, 10**6)), max_size=80),
       max_ns=st.integers(0, 500000), grow=st.integers(0, 4), grow_start=st.integers(0, 300000),
       shrink=st.integers(0, 4), allow_shrink=st.booleans())
def test_limit_stays_within_zero_and_the_max(events: list, max_ns: int, grow: int, grow_start: int, shrink: int,
                                             allow_shrink: bool) -> None:
    g = GuestHaltPoll(max_ns, grow, grow_start, shrink, allow_shrink)
    for halted, block_ns in events:
        before = g.poll_limit_ns
        g.reflect(halted, block_ns)
        assert 0 <= g.poll_limit_ns <= max_ns
        if not halted:
            assert g.poll_limit_ns == before
