"""The PNG plots of `hostd compare` (matplotlib, Agg backend: no display needed).

- wake_latency_cdf.png: io experiment, wake latency (interrupt injected -> guest resumes) CDF
  per policy, log x;
- throughput_vs_idle_cpu.png: io writes/s (% of idle-poll) against host CPU per idle vCPU, one
  point per policy with its min-max as error bars, the seed's quoted range drawn as a labelled box;
- timer_latency.png: the TSC-deadline test's wake - deadline distribution for none / fixed /
  adaptive, log x, with the seed's quoted ranges shaded and labelled;
- neighbour_tradeoff.png: beside a neighbour, per policy and neighbour, what polling buys (timer:
  none's wake p50 over the policy's; io: writes/s over none's, at the same neighbour) against what
  it costs the neighbour (its CPU lost, cores), `none` the line at 1x; the emulator filled, the kernel hollow;

and `hostd tune`'s tradeoff.png (tune_tradeoff), `hostd replay --trace`'s halts.png (halt_budgets),
`hostd compare --table dyn2015|guest2019`'s <table>.png (table_plot).
"""
from __future__ import annotations

import io
import os
import textwrap

import numpy as np

from hostd.output import side_by_side
from hostd.output.tune_report import budget_label, verdict_label
from hostd.plumbing.output import atomic_write
from hostd.plumbing.published import QUOTED, ROWS

COLORS = {"none": "#d62728", "fixed": "#1f77b4", "adaptive": "#2ca02c", "guest-haltpoll": "#9467bd",
          "idle-poll": "#7f7f7f"}
MAX_POINTS = 4000  # an ECDF drawn through this many quantiles looks the same as through every sample


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str) -> None:
    """Whole or not at all, like every result file."""
    buf = io.BytesIO()
    if fig.get_layout_engine() is None:  # a figure with a layout of its own keeps it
        fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _pooled(samples: dict, exp: str, pol: str) -> np.ndarray:
    arrays = samples.get((exp, pol), [])
    if not arrays:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(arrays)


def _series(doc: dict, exp: str) -> list[tuple[dict, str, str, str]]:
    """(summary, sample key, line style, label suffix) of each backend compare ran: the tables'
    own solid, the kernel's beside it (--backend both) dashed."""
    out = [(doc["summary"], exp, "-", "")]
    kvm = side_by_side.summary_of(doc)
    if kvm is not None:
        out.append((kvm, side_by_side.sample_key(exp), "--", ", kernel (kvm)"))
    return out


def _ecdf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(np.maximum(x, 1))  # log axis: a 0 ns sample is drawn at 1 ns
    y = np.arange(1, x.size + 1) / x.size
    if x.size > MAX_POINTS:
        idx = np.unique(np.linspace(0, x.size - 1, MAX_POINTS).astype(int))
        x, y = x[idx], y[idx]
    return x, y


def wake_latency_cdf(path: str, doc: dict, samples: dict) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    drawn = False
    for summary, key, style, who in _series(doc, "io"):
        for pol in summary.get("io", {}):
            x = _pooled(samples, key, pol)
            if x.size == 0:
                continue
            xs, ys = _ecdf(x)
            med = float(np.median(x))
            ax.step(xs, ys, where="post", color=COLORS.get(pol), linestyle=style,
                    label=f"{pol}{who} (p50 {med / 1000:,.1f} us, n={x.size:,})")
            drawn = True
    ax.set_xscale("log")
    ax.set_xlabel("wake latency: interrupt injected -> guest resumes (ns, log scale)")
    ax.set_ylabel("fraction of wakes <= x")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("O_DSYNC write completions: wake latency CDF per halt-poll policy")
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    _save(plt, fig, path)


def throughput_vs_idle_cpu(path: str, doc: dict) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for summary, _, style, who in _series(doc, "io"):
        io, idle = summary.get("io", {}), summary.get("idle", {})
        for pol in io:
            y, x = io[pol].get("pct_of_idle_poll"), idle.get(pol, {}).get("cpu_pct_per_vcpu")
            if not y or not x or y["median"] is None or x["median"] is None:
                continue
            xe = [[x["median"] - x["min"]], [x["max"] - x["median"]]]
            ye = [[y["median"] - y["min"]], [y["max"] - y["median"]]]
            ax.errorbar(x["median"], y["median"], xerr=xe, yerr=ye, fmt="o" if not who else "s", ms=8, capsize=3,
                        mfc=None if not who else "none", color=COLORS.get(pol),
                        label=f"{pol}{who}: {y['median']:.0f}% at {x['median']:.2f}% of a core")
            ax.annotate(pol + who, (x["median"], y["median"]), textcoords="offset points", xytext=(6, 6), fontsize=9)
    # The seed's quoted figure, not a measurement: fixed at 99% of idle=poll, 1.5-2.5% per idle vCPU.
    lo, hi = doc["seed"]["idle_fixed_cpu_pct_range"]
    seed_y = doc["seed"]["io_fixed_pct_of_idle_poll"]
    ax.fill_between([lo, hi], seed_y - 1, seed_y + 1, color=COLORS["fixed"], alpha=0.2,
                    label=f"seed (2015, quoted): fixed {seed_y:.0f}% at {lo}-{hi}% of a core")
    ax.set_xscale("log")
    ax.set_xlabel("host CPU per idle vCPU (% of one core, log scale; 4-vCPU idle guest)")
    ax.set_ylabel("O_DSYNC writes/s (% of idle-poll)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Throughput vs idle cost, one point per policy (median, min-max bars)")
    ax.legend(loc="lower right", fontsize=8)
    _save(plt, fig, path)


def timer_latency(path: str, doc: dict, samples: dict) -> None:
    plt = _pyplot()
    khz = doc["config"]["tsc_khz"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    data = {(pol, style, who): np.maximum(_pooled(samples, key, pol), 1)
            for summary, key, style, who in _series(doc, "timer") for pol in summary.get("timer", {})}
    data = {p: x for p, x in data.items() if x.size}
    if data:
        lo = max(1.0, min(float(x.min()) for x in data.values()))
        hi = max(float(x.max()) for x in data.values())
        bins = np.logspace(np.log10(lo), np.log10(max(hi, lo * 10)), 60)
        for (pol, style, who), x in data.items():
            weights = np.full(x.size, 1.0 / x.size)
            ax.hist(x, bins=bins, weights=weights, histtype="step", lw=1.8, color=COLORS.get(pol), linestyle=style,
                    label=f"{pol}{who} (p50 {np.median(x):,.0f} ns, n={x.size:,})")
    # The seed's quoted ranges (cycles), converted to ns with this machine's TSC rate.
    with_poll, without = doc["seed"]["timer_cycles_with_poll"], doc["seed"]["timer_cycles_without_poll"]
    to_ns = lambda c: c * 1e6 / khz  # noqa: E731
    ax.axvspan(to_ns(with_poll[0]), to_ns(with_poll[1]), color=COLORS["fixed"], alpha=0.15,
               label=f"seed (2015, quoted): with halt_poll {with_poll[0]:,}-{with_poll[1]:,} cycles")
    ax.axvspan(to_ns(without[0]), to_ns(without[1]), color=COLORS["none"], alpha=0.1,
               label=f"seed (2015, quoted): without {without[0]:,}-{without[1]:,} cycles")
    ax.set_xscale("log")
    ax.set_xlabel("wake - deadline (ns, log scale)")
    ax.set_ylabel("fraction of wakes per bin")
    sec = ax.secondary_xaxis("top", functions=(lambda ns: ns * khz / 1e6, lambda c: c * 1e6 / khz))
    sec.set_xlabel(f"TSC cycles (at {khz:,} kHz)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("TSC-deadline timer latency distribution", pad=28)
    ax.legend(loc="upper right", fontsize=8)
    _save(plt, fig, path)


# Beside a neighbour: what polling buys, per workload: (metric, higher is better, y label).
GAINS = {
    "timer": ("wake_p50_ns", False, "timer: none's wake p50 / the policy's (x, log scale)"),
    "io": ("writes_per_s", True, "io: writes/s / none's (x)"),
}


def neighbour_tradeoff(path: str, doc: dict) -> None:
    """One panel per workload: per polling policy and neighbour, the gain over `none` beside the same
    neighbour against the neighbour's CPU lost; the emulator's points filled, the kernel's hollow."""
    plt = _pyplot()
    nb = doc["neighbour"]
    sides = [(nb["summary"], "o", "")] + ([(nb["kvm"]["summary"], "s", ", kernel (kvm)")] if nb.get("kvm") else [])
    fig, axes = plt.subplots(1, len(GAINS), figsize=(12, 5), dpi=110)
    for ax, (wl, (metric, higher, ylabel)) in zip(axes, GAINS.items()):
        labelled = set()
        for summary, marker, who in sides:
            for case, wls in summary.items():
                pols = wls.get(wl, {})
                base = (pols.get("none", {}).get(metric) or {}).get("median")
                for pol, m in pols.items():
                    if pol == "none":  # the reference: 1 by definition, drawn as the line
                        continue
                    x = (m.get("neighbour_cpu_lost_cores") or {}).get("median")
                    y = (m.get(metric) or {}).get("median")
                    if x is None or not y or not base:
                        continue
                    gain = y / base if higher else base / y
                    name = f"{pol}{who}"
                    ax.plot(x, gain, marker, ms=8, color=COLORS.get(pol), mfc="none" if who else None,
                            label=name if name not in labelled else None)
                    labelled.add(name)
                    ax.annotate(case, (x, gain), textcoords="offset points", xytext=(6, 4 if not who else -11),
                                fontsize=8)
        ax.axhline(1.0, color=COLORS["none"], lw=1, ls=":", label="none beside the same neighbour (1x)")
        ax.axvline(0.0, color="#888888", lw=0.8)
        if not higher:
            ax.set_yscale("log")
        ax.set_xlabel("the neighbour's CPU lost: alone minus beside the VM (cores)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{wl}: what polling buys vs what it costs the neighbour")
        ax.legend(loc="best", fontsize=8)
    _save(plt, fig, path)


def write_all(out: str, doc: dict, samples: dict) -> list[str]:
    """Write the PNGs into `out` (the neighbour's where that experiment ran); returns their file names."""
    names = ["wake_latency_cdf.png", "throughput_vs_idle_cpu.png", "timer_latency.png"]
    wake_latency_cdf(os.path.join(out, names[0]), doc, samples)
    throughput_vs_idle_cpu(os.path.join(out, names[1]), doc)
    timer_latency(os.path.join(out, names[2]), doc, samples)
    if (doc.get("neighbour") or {}).get("summary"):
        names.append("neighbour_tradeoff.png")
        neighbour_tradeoff(os.path.join(out, names[-1]), doc)
    return names


def tune_tradeoff(path: str, doc: dict) -> None:
    """hostd tune: the figure against host CPU per vCPU, one point per budget with its 95% interval
    as an error bar (an end the data cannot bound runs dotted to the edge), the recommendation starred."""
    plt = _pyplot()
    pts = [p for p in doc["points"] if p["figure"]["value"] is not None]
    rec = doc["recommendation"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    x = [100 * p["host_cpu_frac_per_vcpu"] for p in pts]
    y = [p["figure"]["value"] for p in pts]
    lo = [p["figure"]["ci_low"] for p in pts]
    hi = [p["figure"]["ci_high"] for p in pts]
    yerr = [[0 if v is None else yi - v for yi, v in zip(y, lo)], [0 if v is None else v - yi for yi, v in zip(y, hi)]]
    open_ends = " (dotted: unbounded)" if None in lo + hi else ""
    ax.errorbar(x, y, yerr=yerr, fmt="-o", color=COLORS["fixed"], ms=6, capsize=3,
                label=f"fixed budget (sweep), 95% interval{open_ends}")
    for i, (p, xi, yi) in enumerate(zip(pts, x, y)):  # labels alternate above/below: neighbours often crowd
        ax.annotate(budget_label(p["budget_ns"]), (xi, yi), textcoords="offset points",
                    xytext=(6, 6) if i % 2 == 0 else (6, -13), fontsize=9)
    chosen = [(xi, yi) for p, xi, yi in zip(pts, x, y) if p["budget_ns"] == rec["budget_ns"]]
    if chosen:
        label = verdict_label(rec)
        ax.plot(*chosen[0], "*", ms=18, color="#ff7f0e", zorder=5,
                label=f"recommended: {budget_label(rec['budget_ns'])}" + (f" ({label})" if label else ""))
    if rec.get("target_figure") is not None:
        what = "best's interval - " if doc["higher_is_better"] else "best's interval + "
        ax.axhline(rec["target_figure"], ls="--", color="#2ca02c", lw=1,
                   label=f"target: {what}{1 - doc['target']:.0%} of the {'best' if doc['higher_is_better'] else 'gain'}")
    if not doc["higher_is_better"]:
        ax.set_yscale("log")
    ax.margins(x=0.1, y=0.12)  # room for the labels of the outermost points
    bottom, top = ax.get_ylim()
    for xi, yi, a, b in zip(x, y, lo, hi):
        if a is None:
            ax.plot([xi, xi], [bottom, yi], ":", color=COLORS["fixed"], lw=1)
        if b is None:
            ax.plot([xi, xi], [yi, top], ":", color=COLORS["fixed"], lw=1)
    ax.set_ylim(bottom, top)
    ax.set_xlabel("host CPU per vCPU (% of one core)")
    ax.set_ylabel(doc["figure_label"] + (" (log scale)" if not doc["higher_is_better"] else ""))
    ax.set_title(f"hostd tune --workload {doc['workload']}: figure vs host CPU, points labelled by halt_poll_ns")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _save(plt, fig, path)


def halt_budgets(path: str, halts: np.ndarray, marks: list[tuple[str, float | None, str]], title: str) -> None:
    """hostd replay --trace: the halt-duration distribution (log x) with budgets marked, one vertical
    line per (label, budget ns, colour key); a budget of 0 or None cannot sit on a log axis and is
    named in the legend only."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    x = np.maximum(np.asarray(halts, dtype=np.int64), 1)
    if x.size:
        lo, hi = float(x.min()), float(x.max())
        bins = np.logspace(np.log10(lo), np.log10(max(hi, lo * 10)), 80)
        ax.hist(x, bins=bins, weights=np.full(x.size, 1.0 / x.size), color="#bbbbbb",
                label=f"halt durations (p50 {np.median(x) / 1000:,.1f} us, n={x.size:,})")
    ax.set_xscale("log")
    for label, ns, key in marks:
        optimum = key == "optimum"
        color = "black" if optimum else COLORS.get(key, "#8c564b")
        if ns is None or ns < 1:
            ax.plot([], [], color=color, lw=1.5, ls=":", label=f"{label}: 0 (never polls)")
            continue
        ax.axvline(ns, color=color, lw=2.5 if optimum else 1.5,
                   ls="--" if optimum else "-." if key == "kernel" else "-", label=f"{label}: {ns / 1000:,.1f} us")
    ax.set_xlabel("halt duration: HLT to wake, including the poll (ns, log scale)")
    ax.set_ylabel("fraction of halts per bin")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    _save(plt, fig, path)


# compare --table's series: (whose summary, marker, colour, filled, legend label), drawn side by side per config.
EMU_FIGURE = ("emu", "o", "C0", True, "emulator: measured (median, min-max)")
EMU_VCPU_CPU = ("emu", "s", "C1", True, "emulator: vCPU process's own CPU")
KERNEL_FIGURE = ("kvm", "D", "C3", False, "kernel (kvm): measured (median, min-max)")


def table_figure(doc: dict, table: str, config_names: dict, metric_names: dict):
    """compare --table: per row a panel, per config its quoted figure as a grey range (a line where
    the quote is one number) with the emulator's median and min-max beside it, and the kernel's where
    it was measured (--backend both). The quoted figures and the kernel's n/a cells are written under
    the configs' names, not in the data: small values put every point, band and label in the same
    few pixels. One legend below the panels, outside them. Returns the figure, unsaved."""
    plt = _pyplot()
    kvm = doc["kvm"]
    rows = [r for r in ROWS if r.table == table]
    panels = [(r, r.figure) for r in rows] + ([(rows[0], "pct_of_host")] if table == "guest2019" else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.6), dpi=110, squeeze=False,
                             layout="constrained")
    for ax, (row, metric) in zip(axes[0], panels):
        quoted = QUOTED[table]["pct_of_host" if metric == "pct_of_host" else row.key]
        na = kvm["cells"].get(table, {}).get(row.key, {})
        series = [(EMU_FIGURE, metric)] + ([(EMU_VCPU_CPU, "vcpu_cpu_pct")] if metric == "c0_pct" else [])
        if kvm["summary"] is not None:
            series.append((KERNEL_FIGURE, metric))
        offsets = np.linspace(-0.2, 0.2, len(series)) if len(series) > 1 else [0.0]
        ticks = []
        for x, config in enumerate(row.configs):
            lo, hi = quoted[config]
            ax.fill_between([x - 0.35, x + 0.35], lo, hi if hi > lo else lo * 1.002, color="0.8", zorder=0,
                            label="quoted (published, not measured here)")
            for ((side, marker, color, filled, label), m), dx in zip(series, offsets):
                summary = doc["summary"] if side == "emu" else kvm["summary"]
                s = summary.get(table, {}).get(row.key, {}).get(config, {}).get(m)
                if s and s["median"] is not None:
                    ax.errorbar([x + dx], [s["median"]], yerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]],
                                fmt=marker, color=color, mfc=None if filled else "none", capsize=4, label=label)
            q = f"quoted {lo:g}" + (f"-{hi:g}" if hi != lo else "") + ("%" if "pct" in metric else "")
            name = textwrap.fill(config_names[config].split(" (")[0], 18)  # guest2019's are a phrase each
            ticks.append("\n".join([name, q]
                                   + (["kernel: n/a"] if na.get(config) else [])))
        ax.set_xticks(range(len(row.configs)))
        ax.set_xticklabels(ticks, fontsize=7)
        ax.set_xlim(-0.5, len(row.configs) - 0.5)
        ax.set_title(metric_names[metric] if metric == "pct_of_host" else row.label, fontsize=8)
        if metric == "c0_pct":
            ax.set_yscale("log")
        ax.grid(True, axis="y", alpha=0.3)
    legend = {}  # one entry per label, whichever panel drew it first
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=len(legend), fontsize=7)
    return fig


def table_plot(path: str, doc: dict, table: str, config_names: dict, metric_names: dict) -> None:
    plt = _pyplot()
    _save(plt, table_figure(doc, table, config_names, metric_names), path)
