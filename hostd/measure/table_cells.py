"""The cells of `hostd compare --table dyn2015|guest2019`: the plan, each run's figures, and measuring them.

- dyn2015: Wanpeng Li's dynamic halt-polling (2015, the adaptive algorithm KVM runs today):
  no-poll (`none`), always-poll (`fixed`, --always-poll-us) and dynamic-poll (`adaptive`, upstream
  defaults); %c0 of an idle vCPU's physical CPU with a rare and a 250 Hz tick, and the `rr`
  workload's round trip (the TCP_RR figure), mean and p99.
- guest2019: cpuidle-haltpoll's ping-pong: `rr` with no vCPU (host), host polling 300 us (the
  kernel's adaptive capped at 300 us, as halt_poll_ns=300000 means there) with no guest poll, and
  guest polling 300 us (guest-haltpoll, guest_halt_poll_ns=300000) with host polling off.

The tables' rows and quoted figures are hostd/plumbing/published.py's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hostd.measure.disturbance import DISTURBED, MAX_ATTEMPTS, RETRY_BUDGET
from hostd.measure.window import measure
from hostd.output.progress import Progress
from hostd.output.report import check_failures
from hostd.plumbing import backend as backends
from hostd.plumbing.c0 import C0Meter
from hostd.plumbing.errors import UsageError
from hostd.plumbing.published import ROWS, Row
from hostd.plumbing.spec import DEFAULT_RR_SERVICE_US, VmSpec, place
from vcpu.policy import KVM_HALT_POLL_NS_DEFAULT, PolicySpec

DEFAULT_ALWAYS_POLL_US = 500
GUEST2019_POLL_NS = 300_000
DURATIONS = {False: {"idle": 5.0, "rr": 3.0}, True: {"idle": 2.5, "rr": 1.5}}
CELL_OVERHEAD_S = 0.9  # start-up and teardown per run, for the progress bar's ETA only


@dataclass
class TablePlan:
    tables: tuple[str, ...]
    quick: bool
    repeat: int
    tsc_khz: int
    always_poll_ns: int = DEFAULT_ALWAYS_POLL_US * 1000
    rr_service_ns: int = DEFAULT_RR_SERVICE_US * 1000
    backends: tuple[str, ...] = ("emu",)
    kvm_unavailable: str | None = None
    durations: dict[str, float] = field(default_factory=dict)
    calibration: dict | None = None  # the emulator's profile (Profile.to_dict()), or None

    def __post_init__(self) -> None:
        self.durations = self.durations or dict(DURATIONS[self.quick])

    def rows(self) -> list[Row]:
        return [r for r in ROWS if r.table in self.tables]

    def policy(self, config: str) -> PolicySpec:
        if config == "fixed":
            return PolicySpec(policy="fixed", host_policy="fixed", halt_poll_ns=self.always_poll_ns)
        if config == "adaptive":
            return PolicySpec(policy="adaptive", host_policy="adaptive", halt_poll_ns=KVM_HALT_POLL_NS_DEFAULT)
        if config == "host-poll":
            return PolicySpec(policy="adaptive", host_policy="adaptive", halt_poll_ns=GUEST2019_POLL_NS)
        if config == "guest-poll":
            return PolicySpec(policy="guest-haltpoll", host_policy="none", halt_poll_ns=0,
                              guest_halt_poll_ns=GUEST2019_POLL_NS)
        return PolicySpec(policy="none", host_policy="none", halt_poll_ns=0)  # none; host (no vCPU at all)

    def kvm_na(self, row: Row, config: str) -> str | None:
        """Why the kernel cannot run this cell here, or None: asked of the backend's own checks."""
        if self.kvm_unavailable:
            return self.kvm_unavailable
        if row.workload == "rr":
            return "the kvm backend's guest has no rr workload" + (
                "; and it has no guest-haltpoll (no cpuidle-haltpoll driver in its guest)"
                if config == "guest-poll" else "")
        try:  # always-poll is the 2015 never-shrink fixed: only the module-parameter path runs it
            backends.check("kvm", self.policy(config), module_params=config == "fixed")
        except UsageError as exc:
            return str(exc)
        return None

    def vm_spec(self, row: Row, config: str, backend: str) -> VmSpec:
        cpus, device, overcommit = place(1, None, None, False)
        dur = self.durations[row.workload]
        spec = VmSpec(vm="vm0", vcpus=1, workload=row.workload, policy=self.policy(config), vcpu_cpus=cpus,
                      device_cpu=device, overcommit=overcommit, tick_hz=row.tick_hz or 1.0, duration_s=dur,
                      io_service_ns=self.rr_service_ns if row.workload == "rr" else None, backend=backend,
                      calibration=self.calibration if backend == "emu" else None, extra={"bare": True} if config == "host" else {})
        spec.sample_capacity = int(max(65_536, dur * 100_000))
        return spec

    def cells(self) -> list[tuple[int, Row, str, str]]:
        """(repeat, row, config, backend): repeats outermost, configs rotated per repeat."""
        out = []
        for r in range(1, self.repeat + 1):
            for row in self.rows():
                k = (r - 1) % len(row.configs)
                for config in row.configs[k:] + row.configs[:k]:
                    for b in self.backends:
                        if b == "emu" or self.kvm_na(row, config) is None:
                            out.append((r, row, config, b))
        return out


def run_metrics(row: Row, result: dict, c0: dict[int, float]) -> dict:
    v = result["vcpus"][0]
    out = {"foreign_load": result["host_cpus"]["foreign_load"], "vcpu_cpu_pct": 100.0 * v["host"]["cpu_frac"]}
    if row.workload == "idle":
        out["c0_pct"] = c0[v["cpu"]]
        out["halts_per_s"] = result["workload"]["halts_per_s"]
        return out
    w = result["workload"]
    exits = v["stats"]["halt_exits"]
    out.update({
        "rtt_mean_us": None if w["rtt_mean_ns"] is None else w["rtt_mean_ns"] / 1000,
        "rtt_p99_us": None if w["rtt_ns"]["p99"] is None else w["rtt_ns"]["p99"] / 1000,
        "transactions_per_s": w["transactions_per_s"],
        "poll_success_pct": 100.0 * v["stats"]["halt_successful_poll"] / exits if exits else None,
    })
    return out


def measure_tables(plan: TablePlan, progress: bool) -> list[dict]:
    cells = plan.cells()
    weights = [plan.durations[row.workload] + CELL_OVERHEAD_S for _, row, _, _ in cells]
    retry_budget = RETRY_BUDGET * sum(weights)
    runs = []
    with Progress(weights, progress) as bar:
        for k, ((rep, row, config, backend), weight) in enumerate(zip(cells, weights), 1):
            rid = f"{'kvm:' if backend == 'kvm' else ''}{row.table}/{row.key}/{config}/r{rep}"
            attempts = []
            while True:  # as compare does: a run other processes disturbed is measured again
                bar.start_cell(f"[{k}/{len(cells)}] {rid}" + (" (again: machine busy)" if attempts else ""), weight)
                spec = plan.vm_spec(row, config, backend)
                meter = C0Meter(spec.vcpu_cpus)
                result, _ = measure(spec, plan.tsc_khz, progress=False, window=meter)
                attempts.append((result["host_cpus"]["foreign_load"], result, meter))
                if attempts[-1][0] < DISTURBED or len(attempts) >= MAX_ATTEMPTS or retry_budget < weight:
                    break
                retry_budget -= weight
                bar.end_cell(weight, f"  [{k}/{len(cells)}] {rid}: other processes busy; measuring again", extra=True)
            foreign, result, meter = min(attempts, key=lambda a: a[0])
            m = run_metrics(row, result, meter.pct)
            runs.append({"id": rid, "table": row.table, "row": row.key, "config": config, "repeat": rep,
                         "backend": backend, "metrics": m, "c0_source": meter.source[spec.vcpu_cpus[0]],
                         "disturbed": foreign >= DISTURBED,
                         "discarded_attempts": [{"foreign_load": a[0], "metrics": run_metrics(row, a[1], a[2].pct)}
                                                for a in attempts if a[1] is not result],
                         "check_failures": check_failures(result), "result": result})
            fig = m.get(row.figure)
            bar.end_cell(weight, f"  [{k}/{len(cells)}] {rid}: {row.figure} "
                         f"{'-' if fig is None else f'{fig:.2f}'}, foreign load {m['foreign_load']:.2f}")
    return runs


def kvm_cells(plan: TablePlan) -> dict:
    """kvm[table][row][config] = None (measured) or the reason the kernel cannot run it here."""
    if "kvm" not in plan.backends and not plan.kvm_unavailable:
        return {}
    out: dict = {}
    for row in plan.rows():
        for config in row.configs:
            out.setdefault(row.table, {}).setdefault(row.key, {})[config] = plan.kvm_na(row, config)
    return out
