"""The guest's cpuidle-haltpoll governor: the guest polls before HLT so a quick wakeup skips
the VM exit altogether.

Mirrored from Linux mainline v6.17-rc drivers/cpuidle/governors/haltpoll.c (haltpoll_select,
haltpoll_reflect, adjust_poll_limit, haltpoll_enable_device). Pure class; `poll_budget` and
`reflect` run in the vCPU hot path and only do int arithmetic on slotted attributes.
"""
from __future__ import annotations

from vcpu.policy import U32_MAX, PolicySpec


class GuestHaltPoll:
    """One per vCPU: dev->poll_limit_ns and the haltpoll module parameters."""

    __slots__ = ("guest_halt_poll_ns", "grow", "grow_start", "shrink", "allow_shrink", "poll_limit_ns")

    def __init__(self, guest_halt_poll_ns: int = 200000, grow: int = 2, grow_start: int = 50000,
                 shrink: int = 2, allow_shrink: bool = True) -> None:
        self.guest_halt_poll_ns = guest_halt_poll_ns
        self.grow = grow
        self.grow_start = grow_start
        self.shrink = shrink
        self.allow_shrink = allow_shrink
        # haltpoll_enable_device: every CPU starts at 0, i.e. HLT at once until a halt whose
        # residency was at most guest_halt_poll_ns grows it to grow_start.
        self.poll_limit_ns = 0

    def poll_budget(self) -> int:
        """The guest poll budget for this idle period (0 = HLT at once).

        haltpoll_select picks the poll state unless poll_limit_ns is 0, or the previous poll
        ran out without an event (then it halts). The runtime executes HLT right after a poll
        that ran out, within the same idle period, so the budget is simply poll_limit_ns
        (cpuidle_poll_time returns dev->poll_limit_ns when it is set).
        """
        return self.poll_limit_ns

    def reflect(self, halted: bool, block_ns: int) -> None:
        """After the idle period. halted=False: the guest poll ended on an event (no HLT);
        halted=True: it executed HLT and block_ns is the residency in the HLT state."""
        # haltpoll_reflect: only the halt state (index != 0) adjusts the limit.
        if not halted:
            return
        # adjust_poll_limit.
        limit = self.poll_limit_ns
        max_ns = self.guest_halt_poll_ns
        if limit < block_ns <= max_ns:
            # The wakeup came after the poll gave up but within the maximum: poll longer.
            val = (limit * self.grow) & U32_MAX  # `unsigned int val` in the kernel
            if val < self.grow_start:
                val = self.grow_start
            if val > max_ns:
                val = max_ns
            self.poll_limit_ns = val
        elif block_ns > max_ns and self.allow_shrink:
            # A long sleep: polling was wasted. shrink 0 resets; a result below grow_start
            # also resets to 0 (current upstream).
            val = limit // self.shrink if self.shrink else 0
            if val < self.grow_start:
                val = 0
            self.poll_limit_ns = val


def make_guest_policy(spec: PolicySpec) -> GuestHaltPoll | None:
    """The guest governor for `spec`, or None unless spec.policy is guest-haltpoll."""
    if spec.policy != "guest-haltpoll":
        return None
    return GuestHaltPoll(spec.guest_halt_poll_ns, spec.guest_halt_poll_grow, spec.guest_halt_poll_grow_start,
                         spec.guest_halt_poll_shrink, spec.guest_halt_poll_allow_shrink)
