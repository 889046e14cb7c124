"""Replaying halt durations through a policy offline, no processes: `hostd replay`'s engine, and
the one tune and a trace replay price policies with.

A halt is the time in ns from the moment the guest goes idle (HLT, or for
guest-haltpoll the start of its poll) to the interrupt that ends it. Per halt the replay reports
the budget the policy used, whether the wait ended while polling, and the budget after the
policy's update, using the same policy classes the vCPU processes run.

Row semantics:
- host policies: budget_ns = begin_halt(); polled_ok = the budget was > 0 and the interrupt came
  within it; next_budget_ns = what the next HLT will poll (the per-vCPU value capped to the max).
- guest-haltpoll adds guest_budget_ns / guest_polled_ok / guest_next_budget_ns. A halt that ends
  inside the guest poll never exits: budget_ns is null and polled_ok is true (nobody blocked).
  Otherwise the host sees an HLT of halt_ns - guest_budget_ns, and the guest governor reflects
  that residency plus the modelled exit cost.
- idle-poll: the guest never halts; it spins the whole time. budget_ns and next_budget_ns are
  null, polled_ok is true, and the poll CPU is the whole halt.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vcpu.emu.guest_haltpoll import make_guest_policy
from vcpu.policy import PolicySpec, make_host_policy


@dataclass
class ReplayResult:
    spec: PolicySpec
    rows: list[dict]
    summary: dict


class Replayer:
    """One policy replayed one halt at a time. replay() drives it over a list; a trace replay
    (hostd.replay.trace_replay) drives one per vCPU and policy over a stream too long to hold."""

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec
        self.host = make_host_policy(spec)
        self.guest = make_guest_policy(spec)
        self.halts = self.halted = self.polled = self.guest_polled = self.exits = self.poll_cpu = 0
        self.budget_sum = self.guest_budget_sum = 0

    def step(self, halt_ns: int, valid: bool = True) -> dict:
        """One halt of halt_ns; valid: the kernel's vcpu_valid_wakeup() (always true on x86)."""
        spec, host, guest = self.spec, self.host, self.guest
        self.halts += 1
        self.halted += halt_ns
        if spec.policy == "idle-poll":
            self.polled += 1
            self.poll_cpu += halt_ns
            return {"halt_ns": halt_ns, "budget_ns": None, "polled_ok": True, "next_budget_ns": None}
        row: dict = {"halt_ns": halt_ns}
        host_ns = halt_ns
        if guest is not None:
            guest_budget = guest.poll_budget()
            self.guest_budget_sum += guest_budget
            guest_ok = 0 < guest_budget and halt_ns <= guest_budget
            row["guest_budget_ns"] = guest_budget
            row["guest_polled_ok"] = guest_ok
            if guest_ok:
                guest.reflect(False, 0)
                self.guest_polled += 1
                self.polled += 1
                self.poll_cpu += halt_ns
                row.update(budget_ns=None, polled_ok=True, next_budget_ns=host.next_budget(),
                           guest_next_budget_ns=guest.poll_budget())
                return row
            self.poll_cpu += guest_budget
            host_ns = halt_ns - guest_budget
        self.exits += 1
        budget = host.begin_halt()
        self.budget_sum += budget
        ok = 0 < budget and host_ns <= budget
        host.end_halt(host_ns, waited=not ok, valid=valid)
        self.polled += ok
        self.poll_cpu += host_ns if ok else budget
        row.update(budget_ns=budget, polled_ok=ok, next_budget_ns=host.next_budget())
        if guest is not None:
            guest.reflect(True, host_ns + spec.exit_cost_ns)
            row["guest_next_budget_ns"] = guest.poll_budget()
        return row

    def summary(self) -> dict:
        n, halted, exits = self.halts, self.halted, self.exits
        summary = {
            "policy": self.spec.policy,
            "halts": n,
            "polled_ok": self.polled,
            "success_ratio": self.polled / n if n else None,
            "blocks": n - self.polled,
            "exits": exits,
            "poll_cpu_ns": self.poll_cpu,
            "halted_ns": halted,
            "poll_cpu_frac": self.poll_cpu / halted if halted else None,
            "exit_cost_ns": exits * self.spec.exit_cost_ns,
            "budget_ns_mean": self.budget_sum / exits if exits else None,  # host budget per exit
        }
        if self.guest is not None:
            summary["guest_polled_ok"] = self.guest_polled
            summary["guest_budget_ns_mean"] = self.guest_budget_sum / n if n else None
        return summary


def replay(spec: PolicySpec, halts: Iterable[int]) -> ReplayResult:
    """Drive fresh policy objects for `spec` through `halts` (ns each), one row per halt."""
    replayer = Replayer(spec)
    rows = [replayer.step(halt_ns) for halt_ns in halts]
    return ReplayResult(spec, rows, replayer.summary())
