"""Output of `hostd compare --table dyn2015|guest2019`: printed tables, CSVs, one plot per table."""
from __future__ import annotations

import csv
import io as _io
import os

from hostd.output import plots
from hostd.output.console import Column, report_for
from hostd.output.figures import cell
from hostd.plumbing import calibration
from hostd.plumbing.output import atomic_write, write_json
from hostd.plumbing.published import QUOTED, ROWS

CSV_STATS = ("median", "min", "max", "value", "ci_low", "ci_high", "n")
SHOWN = {  # per row: (metric, digits, unit) columns measured
    "idle": (("c0_pct", 2, "%"), ("vcpu_cpu_pct", 2, "%"), ("foreign_load", 2, "")),
    "rr": (("rtt_mean_us", 1, ""), ("rtt_p99_us", 1, ""), ("poll_success_pct", 0, "%")),
}
LABELS = {"c0_pct": "%c0 of the vCPU's CPU", "vcpu_cpu_pct": "vCPU process CPU", "foreign_load": "others' load (cores)",
          "rtt_mean_us": "mean us", "rtt_p99_us": "p99 us", "poll_success_pct": "polls ok / exits",
          "pct_of_host": "% of host"}
CONFIG_LABELS = {"none": "no-poll (none)", "fixed": "always-poll (fixed)", "adaptive": "dynamic-poll (adaptive)",
                 "host": "host (no vCPU)", "host-poll": "host poll 300 us, no guest poll",
                 "guest-poll": "guest poll 300 us, host poll off"}


def _quoted(table: str, row: str, config: str) -> str:
    q = QUOTED[table].get(row, {}).get(config)
    if q is None:
        return ""
    text = f"{q[0]:g}" + (f"-{q[1]:g}" if q[1] != q[0] else "")
    if table == "guest2019":
        pct = QUOTED[table]["pct_of_host"][config][0]
        text += f" ({pct:g}% of host)"
    return text + ("%" if row.startswith("idle") else "")


def _metrics(row) -> tuple:
    m = SHOWN[row.workload]
    return m + ((("pct_of_host", 1, "%"),) if row.table == "guest2019" else ())


def print_doc(doc: dict, out, width: int | None = None) -> None:
    """Into `out`: a report (hostd.output.console, hostd.output.markdown) or a stream, at `width`."""
    # lazy: rich costs start-up time every hostd command would pay; only printing needs it
    from rich.text import Text

    report = report_for(out, width)
    cfg = doc["config"]
    kvm = doc["kvm"]
    disturbed = set(doc["disturbed_runs"])
    spread = " (min-max)" if cfg["repeat"] > 1 else ""
    c0 = f"%c0 from {' and '.join(cfg['c0_source'])}; " if cfg["c0_source"] else ""
    report.print(f"median of {cfg['repeat']} run(s) per cell; {c0}"
                 f"always-poll {cfg['always_poll_ns'] / 1000:g} us, dynamic-poll max "
                 f"{cfg['adaptive_halt_poll_ns'] / 1000:g} us (upstream defaults); rr: device answers after {cfg['rr_service_ns'] / 1000:g} us; "
                 f"round trip = {cfg['rr_span']}")
    report.print(f"emulator calibration: {calibration.name_of(cfg.get('calibration'))}")
    for table in cfg["tables"]:
        if table not in QUOTED:
            continue
        names = []
        for row in (r for r in ROWS if r.table == table):
            for metric, _, _ in _metrics(row):
                if LABELS[metric] + spread not in names:
                    names.append(LABELS[metric] + spread)
        groups = [[Column("quoted", style="dim italic"), *(Column(n) for n in names)]]
        if kvm["cells"]:
            groups.append([Column("kernel (kvm)")])
        reasons: list[str] = []  # kernel cells that cannot run here: n/a [k], the reason below the table
        rows = []
        for row in (r for r in ROWS if r.table == table):
            cells = doc["summary"].get(table, {}).get(row.key, {})
            for config in row.configs:
                ms = cells.get(config, {})
                ids = {i for m in ms.values() for i in m.get("runs", [])}
                vals = {LABELS[m] + spread: cell(ms.get(m), d, u) for m, d, u in _metrics(row)}
                extra = []
                if kvm["cells"]:
                    na = kvm["cells"].get(table, {}).get(row.key, {}).get(config)
                    ks = (kvm["summary"] or {}).get(table, {}).get(row.key, {}).get(config, {})
                    if na and na not in reasons:
                        reasons.append(na)
                    extra = [f"n/a [{reasons.index(na) + 1}]" if na else cell(ks.get(row.figure), 2)]
                rows.append([row.label if config == row.configs[0] else "",
                             CONFIG_LABELS[config] + (" *" if ids & disturbed else ""), _quoted(table, row.key, config),
                             *(vals.get(n, "") for n in names), *extra])
        report.table(f"{table}: {QUOTED[table]['source']}", [Column("row", "left"), Column("config", "left")],
                     groups, rows)
        for k, why in enumerate(reasons, 1):
            report.print(Text(f"  [{k}] kernel cell not run: {why}"))
        report.verdict("Verdict:", [f"{row.removesuffix(':proxy')} ({v['figure']}"
                                    f"{', proxy for %c0' if row.endswith(':proxy') else ''}): {v['verdict']} - {v['why']}"
                                    for row, v in doc["verdicts"].get(table, {}).items()])
    if disturbed:
        report.print(f"* includes a run during which other processes used >= 0.3 of a core of the VM's CPUs: "
                     f"{', '.join(sorted(disturbed))}")
    if not doc["checks"]["ok"]:
        report.print(Text("Checks FAILED: " + "; ".join(doc["checks"]["failures"]), style="bold red"))


def summary_csv(doc: dict, table: str) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["backend", "row", "config", "metric", *CSV_STATS, "quoted_lo", "quoted_hi", "runs"])
    for backend, summary in (("emu", doc["summary"]), ("kvm", doc["kvm"]["summary"] or {})):
        for row, configs in summary.get(table, {}).items():
            for config, ms in configs.items():
                for metric, s in ms.items():
                    qrow = "pct_of_host" if metric == "pct_of_host" else row
                    q = QUOTED[table].get(qrow, {}).get(config) if metric in ("c0_pct", "rtt_mean_us",
                                                                             "pct_of_host") else None
                    w.writerow([backend, row, config, metric, *("" if s.get(k) is None else s[k] for k in CSV_STATS),
                                *(q or ["", ""]), " ".join(s["runs"])])
    return buf.getvalue()


def write(out: str, doc: dict) -> list[str]:
    os.makedirs(out, exist_ok=True)
    files = []
    for table in doc["config"]["tables"]:
        if table not in QUOTED:
            continue
        atomic_write(os.path.join(out, f"{table}.csv"), summary_csv(doc, table))
        plots.table_plot(os.path.join(out, f"{table}.png"), doc, table, CONFIG_LABELS, LABELS)
        files += [f"{table}.csv", f"{table}.png"]
    doc["files"] = ["results.json"] + files
    write_json(os.path.join(out, "results.json"), doc)  # last: its presence means the folder is complete
    return doc["files"]
