"""The printed tables of `hostd compare`: the seed's three experiments (and bare metal) beside the
2015 patch's figures, the kernel's columns with --backend both, the experiment beside a neighbour,
the fidelity table, and the verdict: a pure function of results.json's document."""
from __future__ import annotations

from hostd.output import fidelity_table, neighbour_tables, side_by_side
from hostd.output.console import Column, report_for
from hostd.output.figures import cell
from hostd.plumbing import calibration
from hostd.plumbing.published import IDLE_VCPUS, SEED
from hostd.plumbing.spec import DEFAULT_INTERVAL_US
from vcpu.policy import SEED_HALT_POLL_CYCLES


def print_tables(doc: dict, out, width: int | None = None) -> None:
    """Into `out`: a report (hostd.output.console, hostd.output.markdown), a rich Console or a
    stream, at `width` (default: hostd.output.console.width_for's)."""
    # lazy: rich costs start-up time every hostd command would pay; only printing needs it
    from rich.text import Text

    report = report_for(out, width)
    cfg, s = doc["config"], doc["summary"]
    reps = cfg["repeat"]
    io_adaptive = f" (io adaptive: {cfg['io_adaptive_repeat']})" if cfg.get("io_adaptive_repeat", reps) != reps else ""
    disturbed = set(doc.get("disturbed_runs", []))

    def name(exp: str, pol: str) -> str:
        ids = {rid for m in s[exp][pol].values() for rid in m.get("runs", [])}
        return pol + (" *" if ids & disturbed else "")

    spread = " (min-max)" if reps > 1 else ""
    side = doc["kvm"] if doc.get("kvm") and "summary" in doc["kvm"] else None

    def kvm_group(exp: str) -> list[list[Column]]:
        return [[Column(c) for c in side_by_side.columns(exp)]] if side else []

    def kvm_cells(exp: str, pol: str) -> list[str]:
        return side_by_side.cells(side, exp, pol, cell) if side else []

    def seed_column() -> Column:
        return Column("seed (2015)", "left", "dim italic")

    report.print(
        f"[bold]hostd compare[/bold]: median of {reps} run(s) per cell{io_adaptive}{', --quick' if cfg['quick'] else ''}; "
        f"fixed = {SEED_HALT_POLL_CYCLES:,} cycles = {cfg['fixed_halt_poll_ns']:,} ns at {cfg['tsc_khz']:,} kHz; "
        f"adaptive max {cfg['adaptive_halt_poll_ns']:,} ns; [italic]seed[/italic] = the 2015 patch's quoted figures, "
        f"not measured here")
    if doc["backend"] == "emu":
        report.print(f"emulator calibration: {calibration.name_of(cfg.get('calibration'))}")
    if doc["backend"] == "kvm":
        report.print("backend: kvm, the kernel's own halt polling (fixed runs as its adaptive polling capped at "
                     "the budget)")
    elif side:
        d = cfg["side_durations_s"]
        report.print(f"kernel (kvm) = the same cell on real KVM VMs, the kernel's own halt polling (fixed runs "
                     f"as its adaptive polling capped at the budget; runs of io {d['io']:g} s, idle {d['idle']:g} s, "
                     f"timer {d['timer']:g} s); emu / kvm = the emulator's figure over the kernel's")
    elif doc.get("kvm"):
        report.print(f"kvm: {doc['kvm']['unavailable']}; the emulator's columns alone")

    io = s.get("io", {})
    rows = []
    for pol, m in io.items():
        rows.append([name("io", pol), cell(m["writes_per_s"]), cell(m.get("pct_of_bare_metal"), 0, "%"),
                     cell(m.get("pct_of_idle_poll"), 0, "%"),
                     cell(m["poll_success_pct"], 0, "%", spread=False) if m["halt_exits"]["median"] else "no exits",
                     cell(m["exits_per_s"], spread=False), SEED["io"].get(pol, ""), *kvm_cells("io", pol)])
    bare = doc.get("bare_metal")
    for mode, pct in (("idle", "100%"), ("busy", cell(bare and bare["pct"].get("bare-busy"), 0, "%"))):
        if bare and bare[mode]["median"] is not None:
            star = " *" if set(bare[mode]["runs"]) & disturbed else ""
            rows.append([f"bare metal, other CPUs {mode}{star}", cell(bare[mode]), pct, "", "no vCPU", "", "",
                         *(["", "", "", ""] if side else [])])
    report.table(f"Latency-bound O_DSYNC writes (1 vCPU, {cfg['durations_s']['io']:g} s per run)",
                 [Column("policy", "left")],
                 [[Column(f"writes/s{spread}"), Column(f"% of bare metal{spread}\n(other CPUs idle)"),
                   Column(f"% of idle-poll{spread}"), Column("successful polls / exits"), Column("exits/s"),
                   seed_column()], *kvm_group("io")], rows)

    idle = s.get("idle", {})
    pl = cfg["placement"]["idle"]
    oc = (f"; overcommitted: {pl['vcpus']} vCPUs + device on {cfg['host_cpus']} CPUs "
          f"(vCPUs on CPU(s) {sorted(set(pl['vcpu_cpus']))}, device on {pl['device_cpu']})") if pl["overcommit"] else ""
    rows = [[name("idle", pol), cell(m["cpu_pct_per_vcpu"], 2, "%"), cell(m["halts_per_s"], 1),
             cell(m["failed_polls_per_s"], 1), SEED["idle"].get(pol, ""), *kvm_cells("idle", pol)]
            for pol, m in idle.items()]
    report.table(f"Idle cost: {IDLE_VCPUS}-vCPU idle guest, tick {cfg['tick_hz']:g} Hz per vCPU, "
                 f"{cfg['durations_s']['idle']:g} s per run{oc}", [Column("policy", "left")],
                 [[Column(f"host CPU per idle vCPU, % of a core{spread}"), Column(f"halts/s{spread}"),
                   Column(f"failed polls/s{spread}"), seed_column()], *kvm_group("idle")], rows)

    timer = s.get("timer", {})
    rows = [[name("timer", pol), *(f"{cell(m[q + '_ns'])}\n{cell(m[q + '_cycles'])}" for q in ("p50", "p99", "max")),
             SEED["timer"].get(pol, ""), *kvm_cells("timer", pol)] for pol, m in timer.items()]
    report.table(f"TSC-deadline timer: wake - deadline (1 vCPU, {DEFAULT_INTERVAL_US} us deadlines, "
                 f"{cfg['durations_s']['timer']:g} s per run)", [Column("policy", "left")],
                 [[*(Column(f"{q} ns{spread}\n{q} TSC cycles") for q in ("p50", "p99", "max")), seed_column()],
                  *kvm_group("timer")], rows)

    neighbour_tables.print_tables(doc, report, cell, disturbed)

    if doc.get("fidelity"):
        fidelity_table.print_table(doc["fidelity"], report)

    if disturbed:
        why = {r["id"]: r["disturbance"] for r in doc["runs"] if r.get("disturbed")}
        report.print("* includes a run disturbed by other processes even after re-measuring: "
                     + "; ".join(f"{rid} ({why.get(rid)})" for rid in sorted(disturbed)))
    retried = doc.get("retried_runs", [])
    if retried:
        report.print(f"re-measured because other processes disturbed them: {', '.join(retried)} "
                     "(the least disturbed attempt is kept; all are in results.json)")
    report.verdict("Verdict:", doc.get("verdict_lines") or [doc["verdict"]])
    if not doc["checks"]["ok"]:
        report.print(Text("Checks FAILED: " + "; ".join(doc["checks"]["failures"]), style="bold red"))
