"""Host-side halt-poll policies: how long a halted vCPU busy-polls before it blocks.

Pure classes, no I/O. `begin_halt`/`end_halt` run in the vCPU hot path, so they do plain int
arithmetic on slotted attributes and allocate nothing.

Mirrored from Linux mainline v6.17-rc virt/kvm/kvm_main.c (kvm_vcpu_halt, grow_halt_poll_ns,
shrink_halt_poll_ns, kvm_vcpu_max_halt_poll_ns) and arch/x86/include/asm/kvm_host.h
(KVM_HALT_POLL_NS_DEFAULT). The `fixed` policy is the 2015 RFC patch ("kvm: x86: add halt_poll
module parameter"): one budget, no adaptation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

HOST_POLICIES = ("none", "fixed", "adaptive")
POLICIES = ("none", "fixed", "adaptive", "guest-haltpoll", "idle-poll")

# arch/x86/include/asm/kvm_host.h: x86's default for the halt_poll_ns module parameter.
KVM_HALT_POLL_NS_DEFAULT = 200000
# kvm_main.c module parameter defaults.
HALT_POLL_NS_GROW_DEFAULT = 2
HALT_POLL_NS_GROW_START_DEFAULT = 10000
# Current upstream halves on shrink (default 2). Kernels before 2024 defaulted to 0, which
# resets the per-vCPU value to 0 on every shrink; pass --halt-poll-ns-shrink 0 for that.
HALT_POLL_NS_SHRINK_DEFAULT = 2
# The 2015 patch's "mostly random" setting, in TSC cycles.
SEED_HALT_POLL_CYCLES = 2_000_000

# The kernel's module parameters and per-vCPU values are `unsigned int`.
U32_MAX = 0xFFFFFFFF


@dataclass
class PolicySpec:
    """What hostd sends to each vCPU; msgpack-able through to_dict/from_dict."""

    policy: str  # one of POLICIES
    # The host side actually used: equals `policy` for none/fixed/adaptive; "none" for
    # idle-poll (the guest never halts); for guest-haltpoll "none" by default because the
    # cpuidle-haltpoll driver turns host polling off (arch/x86/kernel/kvm.c
    # arch_haltpoll_enable -> kvm_disable_host_haltpoll writes 0 to MSR_KVM_POLL_CONTROL, which
    # makes kvm_arch_no_poll() true: no host poll and no grow/shrink).
    host_policy: str
    halt_poll_ns: int  # fixed: the budget; adaptive: the maximum (module param halt_poll_ns)
    halt_poll_ns_grow: int = HALT_POLL_NS_GROW_DEFAULT
    halt_poll_ns_grow_start: int = HALT_POLL_NS_GROW_START_DEFAULT
    halt_poll_ns_shrink: int = HALT_POLL_NS_SHRINK_DEFAULT
    guest_halt_poll_ns: int = 200000
    guest_halt_poll_grow: int = 2
    guest_halt_poll_grow_start: int = 50000
    guest_halt_poll_shrink: int = 2
    guest_halt_poll_allow_shrink: bool = True
    exit_cost_ns: int = 0  # modelled VM exit+entry round trip paid by each halt reaching the host

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; expected one of {POLICIES}")
        if self.host_policy not in HOST_POLICIES:
            raise ValueError(f"unknown host policy {self.host_policy!r}; expected one of {HOST_POLICIES}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PolicySpec:
        return cls(**d)


class HostPolicy:
    """The host's halt-poll decision for one vCPU (the `kvm_vcpu_halt` side)."""

    __slots__ = ("halt_poll_ns", "max_ns", "grow", "grow_start", "shrink")
    name = ""

    def __init__(self, max_ns: int = 0, grow: int = HALT_POLL_NS_GROW_DEFAULT,
                 grow_start: int = HALT_POLL_NS_GROW_START_DEFAULT,
                 shrink: int = HALT_POLL_NS_SHRINK_DEFAULT) -> None:
        self.halt_poll_ns = 0  # vcpu->halt_poll_ns, reported as the stat `halt_poll_ns`
        self.set_params(max_ns, grow, grow_start, shrink)

    def set_params(self, max_ns: int, grow: int, grow_start: int, shrink: int) -> None:
        """Live module parameters (KVM's are 0644); may be called between any two halts."""
        self.max_ns = max_ns
        self.grow = grow
        self.grow_start = grow_start
        self.shrink = shrink

    def begin_halt(self) -> int:
        """At HLT: the poll budget in ns for this halt (0 = block at once)."""
        raise NotImplementedError

    def end_halt(self, halt_ns: int, waited: bool, valid: bool) -> None:
        """After the wake. halt_ns: HLT to wake incl. polling; waited: the vCPU was scheduled
        out; valid: vcpu_valid_wakeup()."""
        raise NotImplementedError

    def next_budget(self) -> int:
        """The budget the next begin_halt will return if the parameters stay as they are."""
        raise NotImplementedError


class NoPoll(HostPolicy):
    """`none`: never poll, never adapt. Also the host side of guest-haltpoll, where
    kvm_arch_no_poll() skips both the poll and the grow/shrink in kvm_vcpu_halt."""

    __slots__ = ()
    name = "none"

    def begin_halt(self) -> int:
        return 0

    def end_halt(self, halt_ns: int, waited: bool, valid: bool) -> None:
        pass

    def next_budget(self) -> int:
        return 0


class FixedPoll(HostPolicy):
    """`fixed`: the 2015 patch's kvm_emulate_halt — poll `halt_poll` every halt, no adaptation."""

    __slots__ = ()
    name = "fixed"

    def set_params(self, max_ns: int, grow: int, grow_start: int, shrink: int) -> None:
        HostPolicy.set_params(self, max_ns, grow, grow_start, shrink)
        self.halt_poll_ns = max_ns

    def begin_halt(self) -> int:
        return self.halt_poll_ns

    def end_halt(self, halt_ns: int, waited: bool, valid: bool) -> None:
        pass

    def next_budget(self) -> int:
        return self.halt_poll_ns


class AdaptivePoll(HostPolicy):
    """`adaptive`: upstream's per-vCPU grow/shrink of vcpu->halt_poll_ns, capped by the
    halt_poll_ns module parameter (kvm_vcpu_max_halt_poll_ns; no KVM_CAP_HALT_POLL override)."""

    __slots__ = ()
    name = "adaptive"

    def begin_halt(self) -> int:
        # kvm_vcpu_halt: the per-vCPU value is capped to the max read at HLT, so lowering the
        # module parameter takes effect at the next halt.
        if self.halt_poll_ns > self.max_ns:
            self.halt_poll_ns = self.max_ns
        return self.halt_poll_ns

    def end_halt(self, halt_ns: int, waited: bool, valid: bool) -> None:
        # kvm_vcpu_halt, after the wake. `waited` only feeds the stats there (a poll counts as
        # successful if the vCPU never scheduled out); the adaptation looks at halt_ns alone.
        # max_ns is re-read here, as the kernel recomputes it in case it changed mid-halt.
        if not valid:
            self._shrink()
            return
        max_ns = self.max_ns
        if not max_ns:
            self.halt_poll_ns = 0
            return
        cur = self.halt_poll_ns
        if halt_ns <= cur:
            return
        if cur and halt_ns > max_ns:  # a long block: polling was wasted, shrink
            self._shrink()
        elif cur < max_ns and halt_ns < max_ns:  # a short halt the poll just missed: grow
            self._grow()

    def next_budget(self) -> int:
        return min(self.halt_poll_ns, self.max_ns)

    def _grow(self) -> None:
        # grow_halt_poll_ns. Upstream no longer clamps to the max here (older kernels did);
        # begin_halt does, so halt_poll_ns may exceed the max until the next HLT, e.g.
        # 160000 -> 320000 with max 200000.
        if not self.grow:
            return
        val = (self.halt_poll_ns * self.grow) & U32_MAX  # unsigned int arithmetic
        if val < self.grow_start:
            val = self.grow_start
        self.halt_poll_ns = val

    def _shrink(self) -> None:
        # shrink_halt_poll_ns: shrink 0 resets to 0; a result below grow_start also resets to 0,
        # so the next grow restarts from grow_start.
        val = self.halt_poll_ns // self.shrink if self.shrink else 0
        if val < self.grow_start:
            val = 0
        self.halt_poll_ns = val


_HOST_CLASSES: dict[str, type[HostPolicy]] = {"none": NoPoll, "fixed": FixedPoll, "adaptive": AdaptivePoll}


def make_host_policy(spec: PolicySpec) -> HostPolicy:
    return _HOST_CLASSES[spec.host_policy](
        spec.halt_poll_ns, spec.halt_poll_ns_grow, spec.halt_poll_ns_grow_start, spec.halt_poll_ns_shrink)
