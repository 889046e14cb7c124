"""The CSVs of `hostd compare`: per experiment its summary (<exp>.csv) and its runs (<exp>_runs.csv),
and the same for the experiment beside a neighbour (neighbour.csv, neighbour_runs.csv)."""
from __future__ import annotations

import csv
import io as _io

from hostd.plumbing.neighbour_cases import EXPERIMENT as NEIGHBOUR, case_key, spec_of

CSV_COLUMNS = {
    "io": ("writes_per_s", "pct_of_bare_metal", "pct_of_idle_poll", "poll_success_pct", "halt_exits", "halt_successful_poll", "exits_per_s",
           "wake_p50_ns", "wake_p99_ns"),
    "idle": ("cpu_pct_per_vcpu", "halts_per_s", "failed_polls_per_s"),
    "timer": ("p50_ns", "p99_ns", "max_ns", "p50_cycles", "p99_cycles", "max_cycles", "wakes"),
}
NEIGHBOUR_COLUMNS = ("poll_success_pct", "polls_preempted_pct", "wake_p50_ns", "wake_p50_cycles", "wake_p99_ns",
                     "writes_per_s", "vcpu_cpu_cores", "neighbour_cpu_cores", "neighbour_alone_cpu_cores",
                     "neighbour_cpu_lost_cores")


def summary_csv(exp: str, summary: dict) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf)
    cols = CSV_COLUMNS[exp]
    stat = ("median", "min", "max", "value", "ci_low", "ci_high")  # value: the mean its 95% interval is for
    w.writerow(["policy", "n_runs"] + [f"{c}_{'mean' if s == 'value' else s}" for c in cols for s in stat])
    for pol, ms in summary.get(exp, {}).items():
        n = max((ms[c]["n"] for c in cols if c in ms), default=0)
        row = [pol, n]
        for c in cols:
            s = ms.get(c, {})
            row += [s.get(k) for k in stat]
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def runs_csv(exp: str, runs: list[dict]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf)
    cols = [c for c in CSV_COLUMNS[exp] if c not in ("pct_of_idle_poll", "pct_of_bare_metal")]
    w.writerow(["run", "policy", "repeat", "order", "duration_s", "overcommit"] + cols)
    for r in runs:
        if r["experiment"] != exp:
            continue
        spec = r["result"]["spec"]
        w.writerow([r["id"], r["policy"], r["repeat"], r["order"], spec["duration_s"], spec["overcommit"]]
                   + ["" if r["metrics"].get(c) is None else r["metrics"][c] for c in cols])
    return buf.getvalue()


def neighbour_summary_csv(doc: dict) -> str:
    """neighbour.csv: one row per (backend, case, workload, policy), each figure's median, min and max."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["backend", "neighbour", "workload", "policy", "n_runs"]
               + [f"{c}_{s}" for c in NEIGHBOUR_COLUMNS for s in ("median", "min", "max")])
    nb = doc.get("neighbour") or {}
    sides = [(doc["backend"], nb.get("summary") or {}), ("kvm", (nb.get("kvm") or {}).get("summary") or {})]
    for backend, summary in sides:
        for case, wls in summary.items():
            for wl, pols in wls.items():
                for pol, ms in pols.items():
                    row = [backend, case, wl, pol, max((v["n"] for v in ms.values()), default=0)]
                    for c in NEIGHBOUR_COLUMNS:
                        row += [ms.get(c, {}).get(s) for s in ("median", "min", "max")]
                    w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def neighbour_runs_csv(runs: list[dict]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "backend", "neighbour", "workload", "policy", "repeat", "order", "duration_s",
                "foreign_load", "disturbed", *NEIGHBOUR_COLUMNS])
    for r in runs:
        if r["experiment"] != NEIGHBOUR:
            continue
        w.writerow([r["id"], r["backend"], case_key(spec_of(r["neighbour"])), r["workload"], r["policy"], r["repeat"],
                    r["order"], r["result"]["spec"]["duration_s"], r["foreign_load"], r["disturbed"]]
                   + ["" if r["metrics"].get(c) is None else r["metrics"][c] for c in NEIGHBOUR_COLUMNS])
    return buf.getvalue()
