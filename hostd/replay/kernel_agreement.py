"""The kernel's own halt_poll_ns decisions as a reference for our `adaptive` policy.

kvm_vcpu_halt (virt/kvm/kvm_main.c) per halt: cap vcpu->halt_poll_ns to the max (silently, no
event); poll; block; then grow_halt_poll_ns or shrink_halt_poll_ns, each firing
kvm_halt_poll_ns(vcpu_id, new, old), or neither; and last of all kvm_vcpu_wakeup(halt_ns, waited,
valid). So on one vCPU thread a decision event belongs to the *next* wakeup event, its `old` is the
budget that halt polled for (already capped), and a halt with no decision event left the value as
it was (except for max 0, which zeroes it silently). That is enough to rebuild, halt by halt, the
budget the kernel used and the value it kept, from the thread's first logged decision on (before
it, the value is unknown: a trace usually starts in mid-life).

Two comparisons with vcpu.policy's AdaptivePoll under the same parameters:
- replay: our policy seeded with the kernel's value at its first logged decision, then left to
  run on the same halt durations (what `hostd replay --policy adaptive` would do);
- per decision: before each halt our policy is set to the kernel's own value, so each halt
  judges only the grow/shrink rule, and one disagreement cannot drag the next ones along.
A halt agrees when the budget used and the value kept after it are both equal.

The max: the module parameter halt_poll_ns unless the VM set its own with KVM_CAP_HALT_POLL
(kvm_vcpu_max_halt_poll_ns), which no trace records. The decisions bound it, though (old <= max;
a grow needs halt_ns < max; a shrink after a valid wake needs halt_ns > max), and a max outside
those bounds is reported as the likely cause of disagreements.
"""
from __future__ import annotations

from vcpu.policy import PolicySpec, make_host_policy

from hostd.trace.parse import Decision, Wakeup


class KernelAgreement:
    """One vCPU thread: feed it the thread's events in order (decision() and wakeup())."""

    def __init__(self, spec: PolicySpec) -> None:
        if spec.host_policy != "adaptive":
            raise ValueError("the kernel's decisions are compared with the adaptive policy")
        self.spec = spec
        self.max_ns = spec.halt_poll_ns
        self.pending: Decision | None = None
        self.kernel_value: int | None = None  # vcpu->halt_poll_ns after the last halt, once known
        self.replayed = make_host_policy(spec)  # the free-running replay
        self.judge = make_host_policy(spec)  # re-set to the kernel's value before every halt
        self.decisions = self.halts = self.before_first = self.unpaired = 0
        self.compared = self.agree_replay = self.agree_step = 0
        self.first_disagreement: dict | None = None
        # What the kernel's polling cost, on the halts whose budget is known (see cost()).
        self.polled = self.waited = self.poll_cpu = self.budget_sum = 0
        self._pre_waited = 0  # waited halts before the first decision: their budget is its `old`
        self._pre_poll_cpu = 0
        self.max_lo = 0  # the max the decisions allow: max_lo <= max < max_hi (None: unbounded)
        self.max_hi: int | None = None
        self.vcpu_id: int | None = None

    def decision(self, ev: Decision) -> None:
        self.decisions += 1
        self.vcpu_id = ev.vcpu_id
        if self.pending is not None:  # its wakeup event is missing (lost, or cut at the start)
            self.unpaired += 1
        self.pending = ev

    def wakeup(self, ev: Wakeup) -> int | None:
        """One halt; returns the budget the kernel polled for, or None while unknown."""
        self.halts += 1
        d, self.pending = self.pending, None
        if self.kernel_value is None:
            if d is None:  # before the thread's first decision: value unknown yet
                self.before_first += 1
                if ev.waited:
                    self._pre_waited += 1
                else:
                    self._pre_poll_cpu += ev.ns
                return None
            # The value was constant up to here (no decision changed it), so every earlier halt
            # polled for this same `old`.
            self.replayed.halt_poll_ns = d.old
            self.kernel_value = d.old
            self.poll_cpu += self._pre_poll_cpu + self._pre_waited * d.old
            self.budget_sum += self.before_first * d.old
            self.polled += self.before_first - self._pre_waited
            self.waited += self._pre_waited
        self._bound_max(ev, d)
        max_ns = self.max_ns
        k_budget = d.old if d is not None else min(self.kernel_value, max_ns)
        k_value = d.new if d is not None else (k_budget if max_ns else 0)

        ours = self._step(self.replayed, ev)
        self.judge.halt_poll_ns = self.kernel_value
        step = self._step(self.judge, ev)
        self.compared += 1
        if ours == (k_budget, k_value):
            self.agree_replay += 1
        if step == (k_budget, k_value):
            self.agree_step += 1
        elif self.first_disagreement is None:
            self.first_disagreement = {
                "pid": ev.pid, "line": ev.line, "ts": ev.ts, "halt": self.halts, "halt_ns": ev.ns,
                "waited": ev.waited, "valid": ev.valid,
                "kernel": {"budget_ns": k_budget, "halt_poll_ns_after": k_value,
                           "event": None if d is None else
                           f"{'grow' if d.grow else 'shrink'} {d.old} -> {d.new} (line {d.line})"},
                "ours": {"budget_ns": step[0], "halt_poll_ns_after": step[1]}}
        self.kernel_value = k_value
        self.budget_sum += k_budget
        if ev.waited:
            self.waited += 1
            self.poll_cpu += k_budget
        else:
            self.polled += 1
            self.poll_cpu += ev.ns
        return k_budget

    @staticmethod
    def _step(policy, ev: Wakeup) -> tuple[int, int]:
        budget = policy.begin_halt()
        policy.end_halt(ev.ns, ev.waited, ev.valid)
        return budget, policy.halt_poll_ns

    def _bound_max(self, ev: Wakeup, d: Decision | None) -> None:
        # kvm_vcpu_halt's branches, read backwards: what each outcome says about the max.
        if d is None:
            return
        self.max_lo = max(self.max_lo, d.old)
        if not ev.valid:
            return
        if d.grow:  # cur < max && halt_ns < max
            self.max_lo = max(self.max_lo, ev.ns + 1, d.old + 1)
        elif d.old and ev.ns > d.old:  # a long block: halt_ns > max
            self.max_hi = ev.ns if self.max_hi is None else min(self.max_hi, ev.ns)

    def max_consistent(self) -> bool:
        return self.max_lo <= self.max_ns and (self.max_hi is None or self.max_ns < self.max_hi)

    def result(self) -> dict:
        """The figures for the report; "agreement" is None when the thread logged no decision."""
        known = self.kernel_value is not None
        out = {"decisions": self.decisions, "halts": self.halts, "compared": self.compared,
               "before_first_decision": self.before_first, "unpaired_decisions": self.unpaired,
               "agreement": self.agree_replay / self.compared if self.compared else None,
               "agreement_per_decision": self.agree_step / self.compared if self.compared else None,
               "agree": self.agree_replay, "agree_per_decision": self.agree_step,
               "first_disagreement": self.first_disagreement, "vcpu_id": self.vcpu_id,
               "max_ns": self.max_ns, "max_bounds": [self.max_lo, self.max_hi],
               "max_consistent": self.max_consistent() if known else None}
        if known:
            out.update(polled=self.polled, waited=self.waited, poll_cpu_ns=self.poll_cpu, budget_ns_sum=self.budget_sum)
        return out


def merge(results: list[dict]) -> dict:
    """The total over vCPU threads (agreement over every compared halt)."""
    compared = sum(r["compared"] for r in results)
    agree = sum(r["agree"] for r in results)
    step = sum(r["agree_per_decision"] for r in results)
    firsts = [r["first_disagreement"] for r in results if r["first_disagreement"]]
    return {"decisions": sum(r["decisions"] for r in results), "halts": sum(r["halts"] for r in results),
            "compared": compared, "agree": agree, "agree_per_decision": step,
            "agreement": agree / compared if compared else None,
            "agreement_per_decision": step / compared if compared else None,
            "unpaired_decisions": sum(r["unpaired_decisions"] for r in results),
            "first_disagreement": min(firsts, key=lambda f: f["line"]) if firsts else None,
            # Each thread's VM may have its own max (KVM_CAP_HALT_POLL): bounds do not pool.
            "max_consistent": all(r["max_consistent"] is not False for r in results)}
