"""The output of `hostd replay --trace` (hostd.replay.trace_replay): the human report, the
per-policy CSV, the document and the plot; every figure comes from the report document (the
per-halt CSV is streamed during the replay, hostd.replay.halts_csv)."""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from hostd.output import plots
from hostd.output.console import DEFAULT_WIDTH, Column
from hostd.output.replay_text import format_rows
from hostd.plumbing.formats import RESULTS_FORMAT_VERSION
from hostd.plumbing.output import atomic_write, write_json

KERNEL, OPTIMUM = "kernel (traced)", "optimum (fixed)"


# --- human output ----------------------------------------------------------------------------------

def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x / 1000:,.1f} us"


def _budget_cell(name: str, s: dict) -> str:
    if name == "idle-poll":
        return "never halts"
    if name == "guest-haltpoll":
        return f"guest {_n(s.get('guest_budget_ns_mean'))}"
    if name == OPTIMUM:
        return _n(s["budget_ns"])
    return _n(s.get("budget_ns_mean"))


def _rows(scope: dict) -> list[dict]:
    rows = []
    o = scope["optimum"]
    for name, s in scope["policies"].items():
        ratio = s["success_ratio"]
        over = s["over_optimum_ns"]
        rows.append({"policy": name, "budget ns (mean)": _budget_cell(name, s),
                     "ended polling": "-" if ratio is None else f"{ratio:.1%}",
                     "blocked": _n(s["blocks"]),
                     "poll CPU/halt ns": _n(s["poll_cpu_ns"] / s["halts"] if s["halts"] else None),
                     "cost/halt ns": _n(s["cost_per_halt_ns"]),
                     "over optimum": "-" if over is None else f"{over:+,.0f}"})
    rows.append({"policy": OPTIMUM + (" ~" if o["sampled"] else ""), "budget ns (mean)": _n(o["budget_ns"]),
                 "ended polling": "-" if o["success_ratio"] is None else f"{o['success_ratio']:.1%}",
                 "blocked": "", "poll CPU/halt ns": "", "cost/halt ns": _n(o["cost_per_halt_ns"]),
                 "over optimum": "0"})
    return rows


def _table_notes(scope: dict) -> list[str]:
    o = scope["optimum"]
    out = []
    if KERNEL in scope["policies"]:
        out.append(f"  {KERNEL}: its budgets rebuilt from its decisions, its outcomes as traced; a blocked "
                   f"halt counts its whole budget (an upper bound: a poll stops early when another task is runnable)")
    if o["sampled"]:
        out.append(f"  ~ optimum over a uniform sample of {o['halts_used']:,} of {scope['halts']:,} halts")
    return out


def _kernel_lines(k: dict) -> list[str]:
    if not k["decisions"]:
        return ["  kernel decisions: none logged (no kvm_halt_poll_ns event: the kernel never changed "
                "halt_poll_ns, e.g. an idle guest whose halts all outlast the max); nothing to compare"]
    if not k["compared"]:
        return [f"  kernel decisions: {k['decisions']}, but no halt followed one; nothing to compare"]
    lines = [f"  kernel agreement: {k['agreement']:.2%} of {k['compared']:,} halts from the first logged decision "
             f"on ({k['decisions']:,} decisions), our adaptive replayed on them; "
             f"{k['agreement_per_decision']:.2%} judging each halt from the kernel's own value"]
    f = k["first_disagreement"]
    if f:
        kk, ours = f["kernel"], f["ours"]
        lines.append(f"  first disagreement: thread {f['pid']} halt {f['halt']:,} (line {f['line']:,}, "
                     f"t={f['ts']:.6f}): {f['halt_ns']:,} ns, {'waited' if f['waited'] else 'polled'}; kernel "
                     f"polled {kk['budget_ns']:,} and kept {kk['halt_poll_ns_after']:,}"
                     f"{' (' + kk['event'] + ')' if kk['event'] else ' (no event)'}; ours polled "
                     f"{ours['budget_ns']:,} and kept {ours['halt_poll_ns_after']:,}")
    if k["max_consistent"] is False and "max_bounds" in k:
        lo, hi = k["max_bounds"]
        lines.append(f"  note: these decisions need a max of at least {lo:,}"
                     + (f" and below {hi:,}" if hi is not None else "")
                     + f", not halt_poll_ns={k['max_ns']:,}: the VM likely set its own with "
                       f"KVM_CAP_HALT_POLL; give it with --halt-poll-ns")
    elif k["max_consistent"] is False:
        lines.append("  note: some threads' decisions contradict the max (see their notes)")
    if k["unpaired_decisions"]:
        lines.append(f"  {k['unpaired_decisions']} decisions had no wakeup event after them (lost events?)")
    return lines


def _blocks(doc: dict) -> list:
    """The report in order: its lines (str) and its tables (lists of rows)."""
    t, kp = doc["trace"], doc["kernel_params"]
    total = doc["total"]
    extra = []
    if t["unmatched"]:
        n, text = t["unmatched_examples"][0]["line"], t["unmatched_examples"][0]["text"]
        extra.append(f"{t['unmatched']:,} lines matched no layout and were skipped (first: line {n}: {text[:60]!r})")
    if t["truncated_last_line"]:
        extra.append("the last line is cut short (ignored)")
    if t["lost_events"]:
        extra.append(f"the kernel lost {t['lost_events']:,} events (ring buffer full): decisions may not line up")
    if t["other_events"]:
        extra.append(f"{t['other_events']:,} other events ignored")
    out = [f"trace {t['path']} ({t['format']}): {t['lines']:,} lines, {t['wakeups']:,} halts and "
           f"{t['decisions']:,} halt_poll_ns decisions; {total['vcpus']} vCPU thread(s) replayed",
           *(f"  {x}" for x in extra),
           f"kernel parameters: halt_poll_ns {kp['halt_poll_ns']:,}, grow {kp['halt_poll_ns_grow']}, "
           f"grow_start {kp['halt_poll_ns_grow_start']:,}, shrink {kp['halt_poll_ns_shrink']} ({kp['from']})"]
    a = doc["specs"].get("adaptive")
    if a and a["halt_poll_ns"] != kp["halt_poll_ns"]:
        out.append(f"  adaptive replayed with max {a['halt_poll_ns']:,} (flags)")
    f = doc["specs"].get("fixed")
    if f:
        out.append(f"  fixed replayed with budget {f['halt_poll_ns']:,}")
    out.append(f"cost model: a halt costs its poll CPU, plus P = {doc['penalty_ns']:,.0f} ns if it blocked "
               f"({doc['penalty_from']})")
    scopes = [(f"vCPU thread {v['pid']} {v['comm']}"
               + (f" (kvm vcpu {v['vcpu_id']})" if v["vcpu_id"] is not None else ""), v) for v in doc["vcpus"]]
    if len(scopes) > 1:
        scopes.append((f"total over {total['vcpus']} vCPU threads (each policy's state per thread, "
                       f"one budget for all in the optimum)", total))
    for title, s in scopes:
        h = s["halt_ns"]
        out += ["", f"{title}: {s['halts']:,} halt{'s' if s['halts'] != 1 else ''}, p50 {_us(h['p50'])}, "
                    f"p99 {_us(h['p99'])}; "
                    f"the kernel blocked {s['waited']:,}, caught {s['halts'] - s['waited']:,} while polling",
                _rows(s), *_table_notes(s), *_kernel_lines(s["kernel"])]
    return out


def format_report(doc: dict, width: int = DEFAULT_WIDTH) -> list[str]:
    """The report's lines, its tables split to `width` where they are wider."""
    out: list[str] = []
    for block in _blocks(doc):
        if isinstance(block, list):
            out += ["  " + line if line else "" for line in format_rows(block, numbered=False, left=1, width=width - 2)]
        else:
            out.append(block)
    return out


def print_report(doc: dict, report) -> None:
    """The report into a report object (hostd.output.markdown's): the tables as tables."""
    from rich.text import Text  # lazy: rich costs start-up time every hostd command would pay; only printing needs it

    for block in _blocks(doc):
        if isinstance(block, list):
            keys = list(block[0])
            report.table("", [Column(keys[0], "left")], [[Column(k) for k in keys[1:]]],
                         [list(r.values()) for r in block])
        elif block.strip():
            report.print(Text(block.strip()))




# --- files -----------------------------------------------------------------------------------------

def write_out(out: str, doc: dict, halts: np.ndarray) -> None:
    """summary.csv, replay.json and halts.png (of `halts`, the pooled sample) into `out`."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["scope", "pid", "comm", "policy", "halts", "budget_ns_mean", "polled_ok", "blocked",
                "poll_cpu_ns", "cost_per_halt_ns", "over_optimum_ns"])
    scopes = [(str(v["pid"]), v["pid"], v["comm"], v) for v in doc["vcpus"]] + [("total", "", "", doc["total"])]
    for scope, pid, comm, s in scopes:
        for name, p in s["policies"].items():
            w.writerow([scope, pid, comm, name, p["halts"], _csv_num(p.get("budget_ns_mean")), p["polled_ok"],
                        p["blocks"], p["poll_cpu_ns"], _csv_num(p["cost_per_halt_ns"]), _csv_num(p["over_optimum_ns"])])
        o = s["optimum"]
        w.writerow([scope, pid, comm, OPTIMUM, o["halts_used"], o["budget_ns"], "", "", "",
                    _csv_num(o["cost_per_halt_ns"]), 0])
    atomic_write(os.path.join(out, "summary.csv"), buf.getvalue())
    write_json(os.path.join(out, "replay.json"), {"format_version": RESULTS_FORMAT_VERSION, **doc})
    t = doc["total"]
    marks = []
    for name, p in t["policies"].items():
        if name == "idle-poll":
            continue
        guest = name == "guest-haltpoll"
        ns = p.get("guest_budget_ns_mean") if guest else p.get("budget_ns_mean")
        label = name + (" guest poll" if guest else "") + ("" if name in ("none", "fixed") else " (mean)")
        marks.append((label, ns, name.split(" ")[0]))
    marks.append((OPTIMUM, t["optimum"]["budget_ns"], "optimum"))
    plots.halt_budgets(os.path.join(out, "halts.png"), halts, marks,
                       f"{doc['trace']['path']}: {t['halts']:,} halts of {t['vcpus']} vCPU thread(s)")


def _csv_num(x: float | None) -> str:
    return "" if x is None else f"{x:.0f}"
