"""What `hostd compare` measures: its experiments, their policies and durations, and the plan a
command line makes of them (hostd.measure.cells measures it; the fourth experiment's cells are
hostd.measure.beside_neighbour's)."""
from __future__ import annotations

from dataclasses import dataclass, field

from hostd.output import side_by_side
from hostd.plumbing.neighbour import NeighbourSpec
from hostd.plumbing.neighbour_cases import DEFAULT_NEIGHBOURS, DURATION_S, REPEAT
from hostd.plumbing.policy_options import cycles_to_ns
from hostd.plumbing.published import IDLE_VCPUS
from hostd.plumbing.spec import VmSpec, place
from vcpu.policy import KVM_HALT_POLL_NS_DEFAULT, POLICIES, SEED_HALT_POLL_CYCLES, PolicySpec

EXPERIMENTS = ("io", "idle", "timer")
EXPERIMENT_POLICIES = {
    "io": POLICIES,  # none, fixed, adaptive, guest-haltpoll, idle-poll
    "idle": POLICIES,
    "timer": ("none", "fixed", "adaptive"),
}
# Seconds measured per cell. Defaults: 13 cells x 3 repeats, ~2 min on 2 cores with start-up.
# Quick: one repeat, ~30 s. Idle cells are long enough for several ticks of every vCPU at the
# default 2.5 Hz tick (5+ halts per vCPU per idle cell).
DURATIONS = {
    False: {"io": 2.0, "idle": 3.0, "timer": 1.5},
    True: {"io": 1.5, "idle": 2.0, "timer": 1.0},
}
# io under adaptive polling is bistable where the disk's writes put halts near the 200 us cap: a
# budget that has grown catches the next write and stays, one that has shrunk sees every halt above
# the cap and stays 0, so a run's successful polls follow the disk's speed in those seconds (the
# kernel's own three runs gave 17-87% here). The full comparison takes that cell's median over this
# many runs (extra repeats of that cell alone, each back to back on every backend; ~20 s more).
IO_ADAPTIVE_REPEAT = 7


# --- plan -------------------------------------------------------------------------------------

@dataclass
class Plan:
    quick: bool
    repeat: int
    tick_hz: float
    tsc_khz: int
    out: str
    durations: dict[str, float] = field(default_factory=dict)
    backends: tuple[str, ...] = ("emu",)  # the first is the tables' own; a second (kvm) is shown beside it
    kvm_unavailable: str | None = None  # why --backend both shows the emulator alone
    # Beside the emulator, kvm cells run --quick's durations: `./run.sh` (both) stays within ~4 min on
    # 2 cores. The kernel's rates and percentiles need no longer: its wakes are as many per second.
    side_durations: dict[str, float] = field(default_factory=lambda: dict(DURATIONS[True]))
    calibration: dict | None = None  # the profile the emulator's cells apply (Profile.to_dict()), or None
    # The fourth experiment (beside_neighbour): its neighbours, runs per cell and seconds per run.
    neighbours: tuple[NeighbourSpec, ...] = DEFAULT_NEIGHBOURS
    neighbour_repeat: int = REPEAT
    neighbour_adaptive_repeat: int = REPEAT
    neighbour_duration: float = DURATION_S[False]
    io_adaptive_repeat: int = 0  # runs of io's adaptive cell, if more than `repeat` (IO_ADAPTIVE_REPEAT)

    def repeats(self, experiment: str, policy: str) -> int:
        if experiment == "io" and policy == "adaptive":
            return max(self.repeat, self.io_adaptive_repeat)
        return self.repeat

    def duration(self, experiment: str, backend: str) -> float:
        return self.side_durations[experiment] if backend != self.backends[0] else self.durations[experiment]

    @property
    def fixed_ns(self) -> int:
        return cycles_to_ns(SEED_HALT_POLL_CYCLES, self.tsc_khz)

    def policy_spec(self, policy: str) -> PolicySpec:
        if policy == "fixed":
            return PolicySpec(policy="fixed", host_policy="fixed", halt_poll_ns=self.fixed_ns)
        if policy == "adaptive":
            return PolicySpec(policy="adaptive", host_policy="adaptive", halt_poll_ns=KVM_HALT_POLL_NS_DEFAULT)
        # none; guest-haltpoll (the haltpoll driver turns host polling off); idle-poll (never halts)
        return PolicySpec(policy=policy, host_policy="none", halt_poll_ns=0)

    def vm_spec(self, experiment: str, policy: str, backend: str = "emu", *, policy_spec: PolicySpec | None = None,
                duration: float | None = None, neighbour: NeighbourSpec | None = None) -> VmSpec:
        """The VM of a cell: the experiment is its workload; the other experiment (beside_neighbour)
        gives its own policy spec, duration and neighbour."""
        vcpus = IDLE_VCPUS if experiment == "idle" else 1
        vcpu_cpus, device_cpu, overcommit = place(vcpus, None, None, False)
        duration = self.duration(experiment, backend) if duration is None else duration
        spec = VmSpec(vm="vm0", vcpus=vcpus, workload=experiment, policy=policy_spec or self.policy_spec(policy),
                      vcpu_cpus=vcpu_cpus, device_cpu=device_cpu, overcommit=overcommit,
                      tick_hz=self.tick_hz, duration_s=duration, backend=backend,
                      calibration=self.calibration if backend == "emu" else None, neighbour=neighbour)
        spec.sample_capacity = int(min(4_000_000, max(65_536, duration * 200_000)))
        return spec

    def schedule(self) -> list[tuple[int, str, str]]:
        """(repeat, experiment, policy) in run order: repeats outermost, policies rotated per repeat;
        a cell with more repeats than the rest (io adaptive) takes its extra ones after them."""
        out = []
        for r in range(1, max(self.repeat, self.io_adaptive_repeat) + 1):
            for exp in EXPERIMENTS:
                pols = list(EXPERIMENT_POLICIES[exp])
                k = (r - 1) % len(pols)
                for pol in pols[k:] + pols[:k]:
                    if r <= self.repeats(exp, pol):
                        out.append((r, exp, pol))
        return out

    def cells(self) -> list[tuple[int, str, str, str]]:
        """schedule() with each cell measured on every backend in turn, back to back, so drift
        hits the emulator and the kernel alike: (repeat, experiment, policy, backend)."""
        return [(r, e, p, b) for r, e, p in self.schedule() for b in self.backends
                if b == "emu" or p in side_by_side.KVM_POLICIES]


def run_id(experiment: str, policy: str, repeat: int, backend: str = "emu") -> str:
    return f"{'kvm:' if backend == 'kvm' else ''}{experiment}/{policy}/r{repeat}"


def placement(plan: Plan) -> dict:
    """Where each experiment's VM runs: its vCPUs' CPUs, the device's, and whether they overcommit."""
    out = {}
    for exp in EXPERIMENTS:
        vcpus = IDLE_VCPUS if exp == "idle" else 1
        vcpu_cpus, device_cpu, overcommit = place(vcpus, None, None, False)
        out[exp] = {"vcpus": vcpus, "vcpu_cpus": vcpu_cpus, "device_cpu": device_cpu, "overcommit": overcommit}
    return out
