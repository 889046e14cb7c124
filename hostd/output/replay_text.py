"""`hostd replay`'s text: the policy's line, the per-halt table and the summary (the table also
lays out `hostd replay --trace`'s report, hostd.output.trace_report)."""
from __future__ import annotations

from vcpu.policy import PolicySpec

EDGE_ROWS = 20  # human output shows the first and last this many rows of a long replay


def describe(spec: PolicySpec) -> str:
    """One line naming the policy and the parameters it actually reads."""
    host = {
        "none": "no host polling",
        "fixed": f"fixed halt_poll_ns={spec.halt_poll_ns}",
        "adaptive": f"adaptive halt_poll_ns={spec.halt_poll_ns} grow={spec.halt_poll_ns_grow} "
                    f"grow_start={spec.halt_poll_ns_grow_start} shrink={spec.halt_poll_ns_shrink}",
    }[spec.host_policy]
    if spec.policy == "idle-poll":
        return "policy idle-poll: the guest never halts"
    if spec.policy == "guest-haltpoll":
        guest = (f"guest_halt_poll_ns={spec.guest_halt_poll_ns} grow={spec.guest_halt_poll_grow} "
                 f"grow_start={spec.guest_halt_poll_grow_start} shrink={spec.guest_halt_poll_shrink} "
                 f"allow_shrink={'Y' if spec.guest_halt_poll_allow_shrink else 'N'}")
        return f"policy guest-haltpoll: {guest}; host: {host}"
    return f"policy {spec.policy}: {host}"


def format_rows(rows: list[dict], numbered: bool = True, left: int = 0, width: int | None = None) -> list[str]:
    """A right-aligned table (its first `left` columns left-aligned), rows numbered unless told
    otherwise; long replays keep the first and last EDGE_ROWS rows. Wider than `width`, its columns
    are split over tables one under the other, each led by the number and the `left` columns."""
    if not rows:
        return []
    keys = list(rows[0])
    shown = list(enumerate(rows, 1))
    omitted = 0
    if len(shown) > 2 * EDGE_ROWS:
        omitted = len(shown) - 2 * EDGE_ROWS
        shown = shown[:EDGE_ROWS] + shown[-EDGE_ROWS:]

    def cell(v: object) -> str:
        return "-" if v is None else ("yes" if v else "no") if isinstance(v, bool) else str(v)

    table = [["#", *keys]] + [[str(i), *(cell(r[k]) for k in keys)] for i, r in shown]
    if not numbered:
        table = [line[1:] for line in table]
    widths = [max(len(line[c]) for line in table) for c in range(len(table[0]))]
    lead = list(range(max(left, int(numbered))))
    parts: list[list[int]] = [[]]
    for c in range(len(lead), len(widths)):
        if parts[-1] and width and sum(widths[k] + 2 for k in lead + parts[-1] + [c]) - 2 > width:
            parts.append([])
        parts[-1].append(c)
    out: list[str] = []
    for part in parts:
        cols = lead + part
        block = ["  ".join(line[c].ljust(widths[c]) if c < left else line[c].rjust(widths[c]) for c in cols)
                 for line in table]
        if omitted:
            block.insert(1 + EDGE_ROWS, f"... {omitted} more halts (--json prints every row) ...")
        out += ([""] if out else []) + block
    return out


def format_summary(summary: dict) -> list[str]:
    ratio = summary["success_ratio"]
    lines = [f"halts {summary['halts']}: {summary['polled_ok']} ended while polling"
             f"{f' ({ratio:.1%})' if ratio is not None else ''}, "
             f"{summary['blocks']} blocked, {summary['exits']} exits to the host"]
    if "guest_polled_ok" in summary:
        lines.append(f"guest poll ended {summary['guest_polled_ok']} halts without an exit")
    if summary["poll_cpu_frac"] is not None:
        lines.append(f"poll CPU {summary['poll_cpu_ns']} ns = {summary['poll_cpu_frac']:.1%} "
                     f"of the {summary['halted_ns']} ns halted")
    if summary["exit_cost_ns"]:
        lines.append(f"modelled exit cost {summary['exit_cost_ns']} ns")
    return lines
