"""`hostd compare --table dyn2015|guest2019`: two more published halt-polling tables, measured here.

- dyn2015: Wanpeng Li's dynamic halt-polling (2015, the adaptive algorithm KVM runs today):
  no-poll (`none`), always-poll (`fixed`, --always-poll-us) and dynamic-poll (`adaptive`, upstream
  defaults); %c0 of an idle vCPU's physical CPU with a rare and a 250 Hz tick, and the `rr`
  workload's round trip (the TCP_RR figure), mean and p99.
- guest2019: cpuidle-haltpoll's ping-pong: `rr` with no vCPU (host), host polling 300 us (the
  kernel's adaptive capped at 300 us, as halt_poll_ns=300000 means there) with no guest poll, and
  guest polling 300 us (guest-haltpoll, guest_halt_poll_ns=300000) with host polling off; latency
  and % of host (host latency / latency, as the quoted 93.8% = 31.33 / 33.40).

Quoted figures are constants shown only in columns labelled "quoted". Every other number comes
from a run stored whole in results.json; the verdicts are pure functions of the measured figures.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace

from hostd.commands.compare import DISTURBED, MAX_ATTEMPTS, RETRY_BUDGET, summarize
from hostd.output.progress import Progress
from hostd.measure.window import measure
from hostd.plumbing import backend as backends
from hostd.plumbing.c0 import C0Meter
from hostd.plumbing.errors import UsageError
from hostd.plumbing.spec import DEFAULT_RR_SERVICE_US, VmSpec, parse_int, place
from vcpu.policy import KVM_HALT_POLL_NS_DEFAULT, PolicySpec

TABLES = ("dyn2015", "guest2019")
DEFAULT_ALWAYS_POLL_US = 500
NOHZ_TICK_HZ = 1.0  # "idle (nohz)": a NOHZ guest still takes a rare wakeup; 1 Hz stands for it
GUEST2019_POLL_NS = 300_000
DURATIONS = {False: {"idle": 5.0, "rr": 3.0}, True: {"idle": 2.5, "rr": 1.5}}
CELL_OVERHEAD_S = 0.9  # start-up and teardown per run, for the progress bar's ETA only
# Verdict tolerances: two figures differ "in direction" only beyond BAND (relative); a measured
# figure "reproduces" a quoted one within TOLERANCE of the quoted range.
BAND = {"dyn2015": 0.10, "guest2019": 0.01}
TOLERANCE = 0.25

QUOTED = {
    "dyn2015": {
        "source": "Wanpeng Li, 'KVM: dynamic halt-polling' (2015): each vCPU pinned, 60 s per figure "
                  "(quoted, not measured here)",
        "idle_nohz": {"none": [0.15, 0.15], "fixed": [0.3, 0.3], "adaptive": [0.2, 0.2]},
        "idle_250hz": {"none": [1.1, 1.1], "fixed": [4.6, 14.0], "adaptive": [1.2, 1.2]},
        "rr": {"none": [34.0, 34.0], "fixed": [27.0, 27.0], "adaptive": [26.7, 26.7]},
    },
    "guest2019": {
        "source": "cpuidle-haltpoll (2019), small-packet ping-pong latency, us (quoted, not measured here)",
        "rr": {"host": [31.33, 31.33], "host-poll": [33.40, 33.40], "guest-poll": [32.73, 32.73]},
        "pct_of_host": {"host": [100.0, 100.0], "host-poll": [93.8, 93.8], "guest-poll": [95.7, 95.7]},
    },
}


@dataclass(frozen=True)
class Row:
    table: str
    key: str
    label: str
    workload: str
    configs: tuple[str, ...]
    figure: str  # the metric the verdict judges (and the quoted figures are of)
    tick_hz: float = 0.0


ROWS = (
    Row("dyn2015", "idle_nohz", f"idle vCPU, rare tick ({NOHZ_TICK_HZ:g} Hz): %c0 of its CPU", "idle",
        ("none", "fixed", "adaptive"), "c0_pct", NOHZ_TICK_HZ),
    Row("dyn2015", "idle_250hz", "idle vCPU, 250 Hz tick: %c0 of its CPU", "idle",
        ("none", "fixed", "adaptive"), "c0_pct", 250.0),
    Row("dyn2015", "rr", "rr (TCP_RR-like) round trip, us", "rr", ("none", "fixed", "adaptive"), "rtt_mean_us"),
    Row("guest2019", "rr", "rr ping-pong round trip, us", "rr", ("host", "host-poll", "guest-poll"), "rtt_mean_us"),
)
PAIRS = {  # the claims a table makes, as (config, reference) orderings its quoted figures show
    "dyn2015": (("fixed", "none"), ("adaptive", "none"), ("adaptive", "fixed")),
    "guest2019": (("host-poll", "host"), ("guest-poll", "host"), ("guest-poll", "host-poll")),
}


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
    from hostd.output.report import check_failures

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


# --- pure: aggregation and verdicts ------------------------------------------------------------------

def aggregate(runs: list[dict], backend: str = "emu") -> dict:
    """summary[table][row][config][metric] = compare.summarize(...) + run ids; guest2019 also gets
    pct_of_host per repeat, against that repeat's host run."""
    out: dict = {}
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["backend"] == backend:
            cells.setdefault((r["table"], r["row"], r["config"]), []).append(r)
    for (table, row, config), rs in cells.items():
        rs = sorted(rs, key=lambda r: r["repeat"])
        ms = {}
        for name in rs[0]["metrics"]:
            ms[name] = {**summarize([r["metrics"].get(name) for r in rs]), "runs": [r["id"] for r in rs]}
        if table == "guest2019":
            host = {r["repeat"]: r for r in cells.get((table, row, "host"), [])}
            pct, ids = [], []
            for r in rs:
                ref = host.get(r["repeat"])
                if ref and r["metrics"]["rtt_mean_us"] and ref["metrics"]["rtt_mean_us"]:
                    # The ratio first: x / x is exactly 1, where (100 * x) / x may miss 100 by an ulp.
                    pct.append(100.0 * (ref["metrics"]["rtt_mean_us"] / r["metrics"]["rtt_mean_us"]))
                    ids += [r["id"], ref["id"]]
            ms["pct_of_host"] = {**summarize(pct), "runs": sorted(set(ids))}
        out.setdefault(table, {}).setdefault(row, {})[config] = ms
    return out


def _direction(a: float, b: float, band: float) -> int:
    """+1 / -1 if a is above / below b by more than band (relative to b), else 0 (the same)."""
    if b == 0:
        return 0 if a == 0 else 1
    d = (a - b) / abs(b)
    return 0 if abs(d) <= band else (1 if d > 0 else -1)


WORDS = {1: "above", -1: "below", 0: "about equal to"}


def verdict(table: str, quoted: dict[str, list[float]], measured: dict[str, float | None]) -> dict:
    """reproduced: every claimed ordering holds and every figure is within TOLERANCE of its quoted
    range; in direction only: the orderings hold; not reproduced: an ordering fails. An ordering is
    a difference beyond the table's BAND; a quoted "about equal" holds within TOLERANCE."""
    band = BAND[table]
    if any(measured.get(c) is None for c in quoted):
        return {"verdict": "n/a", "why": "a figure was not measured"}
    mid = {c: (lo + hi) / 2 for c, (lo, hi) in quoted.items()}
    broken = []
    for a, b in PAIRS[table]:
        q, m = _direction(mid[a], mid[b], band), _direction(measured[a], measured[b], band)
        # "About equal" is a claim of no effect: it holds within TOLERANCE, as a magnitude does.
        if q == 0 and _direction(measured[a], measured[b], TOLERANCE) == 0:
            continue
        if q != m:
            broken.append(f"{a} {WORDS[m]} {b} ({measured[a]:.3g} vs {measured[b]:.3g}; quoted {WORDS[q]})")
    far = [f"{c} {measured[c]:.3g} vs quoted {lo:g}" + (f"-{hi:g}" if hi != lo else "")
           for c, (lo, hi) in quoted.items()
           if not lo * (1 - TOLERANCE) <= measured[c] <= hi * (1 + TOLERANCE)]
    if broken:
        return {"verdict": "not reproduced", "why": "; ".join(broken)}
    if far:
        return {"verdict": "in direction only", "why": "orderings hold; magnitudes differ: " + "; ".join(far)}
    return {"verdict": "reproduced", "why": f"orderings hold and every figure is within {TOLERANCE:.0%} of the quoted"}


# %c0 counts every task on the CPU; the vCPU process's own CPU share is the same cost without the
# neighbours a shared machine has. Judged too, labelled as the proxy it is.
PROXY = {"c0_pct": "vcpu_cpu_pct"}


def verdicts(summary: dict, disturbed: set[str] = frozenset()) -> dict:
    """verdict[table][row or row:proxy], from the measured medians."""
    out: dict = {}
    for table in TABLES:
        for row, quoted in QUOTED[table].items():
            if row == "source":
                continue
            data_row = "rr" if row == "pct_of_host" else row
            figure = "pct_of_host" if row == "pct_of_host" else next(r.figure for r in ROWS
                                                                    if r.table == table and r.key == row)
            cells = summary.get(table, {}).get(data_row)
            if cells is None:
                continue
            for fig, key in ((figure, row), (PROXY.get(figure), f"{row}:proxy")):
                if fig is None:
                    continue
                measured = {c: cells.get(c, {}).get(fig, {}).get("median") for c in quoted}
                v = {"figure": fig, **verdict(table, quoted, measured)}
                runs = {i for c in quoted for i in cells.get(c, {}).get(fig, {}).get("runs", [])}
                if fig == "c0_pct" and runs & disturbed:
                    v["why"] += " (other processes used the CPU during some runs: %c0 counts them)"
                out.setdefault(table, {})[key] = v
    return out


def kvm_cells(plan: TablePlan) -> dict:
    """kvm[table][row][config] = None (measured) or the reason the kernel cannot run it here."""
    if "kvm" not in plan.backends and not plan.kvm_unavailable:
        return {}
    out: dict = {}
    for row in plan.rows():
        for config in row.configs:
            out.setdefault(row.table, {}).setdefault(row.key, {})[config] = plan.kvm_na(row, config)
    return out


def build_document(plan: TablePlan, runs: list[dict]) -> dict:
    summary = aggregate(runs)
    kvm_summary = aggregate(runs, "kvm") if "kvm" in plan.backends else None
    c0_sources = sorted({r["c0_source"] for r in runs if r["row"].startswith("idle")})
    failures = [f"{r['id']}: {f}" for r in runs for f in r["check_failures"]]
    return {
        "command": "hostd compare --table " + ",".join(plan.tables),
        "config": {
            "tables": list(plan.tables), "quick": plan.quick, "repeat": plan.repeat, "durations_s": plan.durations,
            "backends": list(plan.backends), "calibration": plan.calibration, "always_poll_ns": plan.always_poll_ns,
            "adaptive_halt_poll_ns": KVM_HALT_POLL_NS_DEFAULT, "guest2019_poll_ns": GUEST2019_POLL_NS,
            "rr_service_ns": plan.rr_service_ns, "nohz_tick_hz": NOHZ_TICK_HZ,
            "c0_source": c0_sources, "verdict_band": BAND, "verdict_tolerance": TOLERANCE,
            "pct_of_host": "host rr latency / this rr latency, per repeat (as the quoted 93.8% = 31.33 / 33.40)",
            "rr_span": "guest clock right before sending the request -> guest clock once it runs again after "
                       "the answer's interrupt",
        },
        "quoted": {t: QUOTED[t] for t in plan.tables},
        "summary": summary,
        "kvm": {"summary": kvm_summary, "cells": kvm_cells(plan), "unavailable": plan.kvm_unavailable},
        "verdicts": verdicts(summary, {r["id"] for r in runs if r["disturbed"]}),
        "disturbed_runs": [r["id"] for r in runs if r["disturbed"]],
        "checks": {"ok": not failures, "failures": failures},
        "runs": runs,
    }


def run_tables(plan: TablePlan, out: str, progress: bool = True) -> dict:
    """Measure, write CSVs, plots and results.json under out, and return the document."""
    from hostd.output import tables_out

    runs = measure_tables(plan, progress)
    doc = build_document(plan, runs)
    tables_out.write(out, doc)
    return doc


def parse_tables(text: str) -> tuple[str, ...]:
    if text == "all":
        return ("seed",) + TABLES
    if text not in ("seed",) + TABLES:
        raise UsageError(f"--table: unknown table {text!r} (choose from seed, {', '.join(TABLES)}, all)")
    return (text,)


def plan_from_compare(args, plan, which: list[str]) -> TablePlan | None:
    """The tables' plan from `hostd compare`'s options and plan (None if no table but the seed's)."""
    if args.always_poll_us is not None and "dyn2015" not in which:
        raise UsageError("--always-poll-us: only with --table dyn2015 or all")
    if not which:
        return None
    if args.json and args.table == "all":
        raise UsageError("--json: one table at a time (--table all writes a results.json per table)")
    always = DEFAULT_ALWAYS_POLL_US if args.always_poll_us is None else parse_int(
        "--always-poll-us", args.always_poll_us, 1, 4_000_000)
    return TablePlan(tuple(which), plan.quick, plan.repeat, plan.tsc_khz, always_poll_ns=always * 1000,
                     backends=plan.backends, kvm_unavailable=plan.kvm_unavailable, calibration=plan.calibration)


def main(args, plan: TablePlan, out: str, nested: bool) -> int:
    """Each table measured in turn; its folder is out (out/<table> after the seed's, with --table all)."""
    import json
    import signal

    from hostd.output import tables_out
    from hostd.measure.window import Terminated, on_sigterm
    from hostd.plumbing.orphans import remove_stale_segments

    remove_stale_segments()
    old = signal.signal(signal.SIGTERM, on_sigterm)
    rc = 0
    try:
        for table in plan.tables:
            one = replace(plan, tables=(table,))
            folder = os.path.join(out, table) if nested or len(plan.tables) > 1 else out
            doc = run_tables(one, folder)
            if args.json:
                json.dump(doc, sys.stdout)
                sys.stdout.write("\n")
            else:
                tables_out.print_doc(doc, sys.stdout)
                sys.stdout.write(f"\nresults: {os.path.join(folder, 'results.json')} (+ CSV and PNG plot)\n")
            for f in doc["checks"]["failures"]:
                sys.stderr.write(f"hostd: check failed: {f}\n")
            rc = rc if doc["checks"]["ok"] else 1
    except (KeyboardInterrupt, Terminated):
        sys.stderr.write("hostd: compare interrupted; every process stopped and its segment removed\n")
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    return rc
