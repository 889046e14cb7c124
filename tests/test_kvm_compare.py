"""`hostd compare --backend both|kvm`: the kernel's cells beside the emulator's, and the refusals."""
import io as _io
import os
from dataclasses import replace

import psutil
from rich.console import Console

from hostd.cli import build_parser
from hostd.analysis import fidelity
from hostd.commands import compare
from hostd.measure import beside_neighbour, cells, compare_plan
from hostd.output import compare_verdict, fidelity_table, figures, neighbour_tables, side_by_side
from hostd.plumbing.neighbour import NeighbourSpec
from tests.conftest import segments_of


def _s(median):
    return {"median": median, "min": median, "max": median, "n": 1}


EMU = {"io": {"none": {"writes_per_s": _s(4000.0), "poll_success_pct": _s(0.0)},
              "fixed": {"writes_per_s": _s(5400.0), "poll_success_pct": _s(98.0)},
              "guest-haltpoll": {"writes_per_s": _s(2700.0), "poll_success_pct": _s(0.0)}},
       "timer": {"none": {"p50_cycles": _s(133_000.0), "p99_cycles": _s(800_000.0)},
                 "fixed": {"p50_cycles": _s(2_000.0), "p99_cycles": _s(900_000.0)}}}
KVM = {"io": {"none": {"writes_per_s": _s(3500.0), "poll_success_pct": _s(0.0)},
              "fixed": {"writes_per_s": _s(4500.0), "poll_success_pct": _s(96.0)},
              "idle-poll": {"writes_per_s": _s(1700.0), "poll_success_pct": _s(None)}},
       "timer": {"none": {"p50_cycles": _s(88_000.0), "p99_cycles": _s(600_000.0)},
                 "fixed": {"p50_cycles": _s(40_000.0), "p99_cycles": _s(100_000.0)}}}


def test_ratios_are_emulator_over_kernel_and_null_where_either_is_missing():
    r = side_by_side.ratios(EMU, KVM)
    assert r["io"]["fixed"]["writes_per_s"] == 5400 / 4500
    assert r["timer"]["fixed"]["p50_cycles"] == 2000 / 40000
    assert r["io"]["none"]["poll_success_pct"] is None  # the kernel's 0: no ratio
    assert r["io"]["idle-poll"]["writes_per_s"] is None  # no emulator cell
    assert "guest-haltpoll" not in r["io"]  # not a kvm policy


def test_cells_pair_each_kernel_figure_with_its_ratio():
    side = side_by_side.document(EMU, KVM)
    row = side_by_side.cells(side, "timer", "fixed", figures.cell)
    assert row == ["40,000", "0.05x", "100,000", "9.0x"]
    assert side_by_side.cells(side, "io", "guest-haltpoll", figures.cell) == ["-", "-", "-", "-"]
    assert len(side_by_side.columns("io")) == len(row)


def test_verdict_says_how_far_the_emulators_gain_is_from_the_kernels():
    text = " ".join(side_by_side.verdict_lines(EMU, KVM))
    assert "4,500 writes/s against 3,500" in text and "an idle=poll guest made 1,700 (fixed: 265% of it)" in text
    assert "40,000 cycles with polling and 88,000 without (2.2x)" in text
    assert "the emulator shows 66x, 30 times the kernel's gain" in text


def test_both_falls_back_to_the_emulator_with_the_reason(monkeypatch):
    monkeypatch.setenv("HPEMU_KVM_DEV", "/nonexistent")
    backends, why = compare._backends("both")
    assert backends == ("emu",) and "/nonexistent" in why and "\n" not in why


def test_both_runs_each_cell_on_each_backend_back_to_back(kvm):
    plan = compare_plan.Plan(quick=True, repeat=1, tick_hz=2.5, tsc_khz=2_000_000, out="x",
                      durations=dict(compare_plan.DURATIONS[True]), backends=compare._backends("both")[0])
    order = plan.cells()
    assert ("emu", "kvm") == plan.backends
    assert (1, "io", "none", "emu") in order and (1, "io", "none", "kvm") in order
    assert (1, "io", "guest-haltpoll", "kvm") not in order
    i = order.index((1, "timer", "fixed", "emu"))
    assert order[i + 1] == (1, "timer", "fixed", "kvm")
    assert compare_plan.run_id("io", "none", 1, "kvm") == "kvm:io/none/r1"


def test_compare_on_kvm_alone_refuses_in_one_line_without_kvm(hostd):
    p = hostd.popen("compare", "--quick", "--backend", "kvm", env=dict(os.environ, HPEMU_KVM_DEV="/nonexistent"))
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2 and err.count("\n") == 1 and "/nonexistent" in err


def test_fidelity_rows_mark_what_is_within_reach_and_explain_known_misses():
    from hostd.analysis import fidelity

    emu = {**EMU, "idle": {"fixed": {"cpu_pct_per_vcpu": _s(0.28), "halts_per_s": _s(2.8),
                                     "failed_polls_per_s": _s(2.8)}}}
    kvm = {**KVM, "idle": {"fixed": {"cpu_pct_per_vcpu": _s(0.05), "halts_per_s": _s(2.8),
                                     "failed_polls_per_s": _s(0.0)}}}
    rows = {r["key"]: r for r in fidelity.rows(emu, kvm)}
    assert rows["io.fixed"]["ratio"] == 5400 / 4500 and rows["io.fixed"]["within"]  # 1.2x
    assert rows["io.none"]["within"] and rows["io.none"]["why"] is None  # 4,000 / 3,500 = 1.14x: no reason shown
    assert not rows["timer.fixed.p50"]["within"] and rows["timer.fixed.p50"]["why"] is None  # 0.05x, unexplained
    assert rows["idle.fixed"]["why"] and not rows["idle.fixed"]["within"]  # the kernel's fixed polled on 0% of halts
    assert fidelity_table.mark(rows["idle.fixed"]) == "✗ explained"
    assert rows["io.idle-poll"]["ratio"] is None and fidelity_table.mark(rows["io.idle-poll"]) == "-"
    line = fidelity_table.summary_line(list(rows.values()), "none (the raw emulator)")
    assert "timer.fixed.p50" in line and "io.fixed" not in line.split("outside:")[1]
    csv_text = fidelity_table.to_csv(list(rows.values()))
    assert csv_text.splitlines()[0].startswith("figure,key,emulator,kernel,emu_over_kvm")
    assert len(csv_text.splitlines()) == 1 + len(fidelity.ROWS)


# --- fidelity: an explanation is printed only where its condition holds in this run's figures --------

def _fid(emu: dict, kvm: dict, key: str) -> dict:
    from hostd.analysis import fidelity
    return next(r for r in fidelity.rows(emu, kvm) if r["key"] == key)


def _cells(exp: str, pol: str, **metrics) -> dict:
    """A summary in the shape side_by_side.median_of reads: summary[exp][pol][metric]["median"]."""
    return {exp: {pol: {m: _s(v) for m, v in metrics.items()}}}


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for p in parts:
        for exp, pols in p.items():
            for pol, ms in pols.items():
                out.setdefault(exp, {}).setdefault(pol, {}).update(ms)
    return out


def _explained(r: dict, *numbers: str) -> None:
    assert not r["within"] and r["why"] and fidelity_table.mark(r) == "✗ explained", r
    for n in numbers:
        assert n in r["why"], (n, r["why"])
    assert r["why"] in fidelity_table.to_csv([r])


def _plain_miss(r: dict) -> None:
    assert r["ratio"] is not None and not r["within"] and r["why"] is None and fidelity_table.mark(r) == "✗", r
    assert fidelity_table.to_csv([r]).splitlines()[1].endswith(",False,")


def test_fidelity_keeps_only_explanations_with_a_condition_on_the_runs_figures():
    from hostd.analysis import fidelity

    assert set(fidelity.EXPLAINED) == {"idle.fixed", "idle.none", "idle.adaptive", "io.adaptive",
                                       "timer.none.p99", "timer.fixed.p99"}
    for x in fidelity.EXPLAINED.values():
        assert callable(x.condition) and callable(x.text)
    # Narrative with nothing in the run to check it: a miss there is a plain ✗ with its numbers.
    emu = _merge(_cells("io", "none", writes_per_s=6000.0), _cells("io", "fixed", poll_success_pct=50.0),
                 _cells("timer", "fixed", poll_success_pct=50.0))
    kvm = _merge(_cells("io", "none", writes_per_s=3000.0), _cells("io", "fixed", poll_success_pct=98.0),
                 _cells("timer", "fixed", poll_success_pct=99.0))
    for key in ("io.none", "io.fixed.success", "timer.fixed.success"):
        _plain_miss(_fid(emu, kvm, key))
    assert fidelity.explain("io.none", emu, kvm) is None


def test_fidelity_explains_idle_fixed_only_where_only_the_emulator_polled():
    def run(kvm_failed: float):
        emu = _cells("idle", "fixed", cpu_pct_per_vcpu=0.27, halts_per_s=2.8, failed_polls_per_s=2.7)
        kvm = _cells("idle", "fixed", cpu_pct_per_vcpu=0.05, halts_per_s=2.8, failed_polls_per_s=kvm_failed)
        return _fid(emu, kvm, "idle.fixed")

    _explained(run(0.0), "under 5% of its idle halts (0%)", "(96% of 2.8 halts/s)")
    _plain_miss(run(2.7))  # the kernel polled too: its fixed is the 2015 one here, the reason does not hold
    _plain_miss(run(None))  # no failed-poll figure: nothing to check


def test_fidelity_explains_idle_none_and_adaptive_only_for_a_sliver_of_a_core_without_polls():
    for pol in ("none", "adaptive"):
        def run(emu_cpu: float, emu_failed: float = 0.0):
            emu = _cells("idle", pol, cpu_pct_per_vcpu=emu_cpu, halts_per_s=10.0, failed_polls_per_s=emu_failed)
            kvm = _cells("idle", pol, cpu_pct_per_vcpu=0.05, halts_per_s=10.0, failed_polls_per_s=0.0)
            return _fid(emu, kvm, f"idle.{pol}")

        _explained(run(0.07), "emulator 0%, kernel 0%", "differ by 0.020% of a core", "emulator 0.07%, kernel 0.05%")
        _plain_miss(run(0.30))  # 6x and 0.25% of a core apart: not a sliver
        _plain_miss(run(0.07, emu_failed=8.0))  # the emulator polled on 80% of its halts


def test_fidelity_explains_io_adaptive_only_where_both_blocked_and_none_misses_the_same_way():
    def run(emu_none: float, kvm_success: float = 20.0):
        emu = _merge(_cells("io", "adaptive", writes_per_s=4300.0, poll_success_pct=2.0),
                     _cells("io", "none", writes_per_s=emu_none))
        kvm = _merge(_cells("io", "adaptive", writes_per_s=3300.0, poll_success_pct=kvm_success),
                     _cells("io", "none", writes_per_s=3500.0))
        return _fid(emu, kvm, "io.adaptive")

    _explained(run(4550.0), "(emulator 98%, kernel 80%)", "io writes/s, none: 1.30x")
    _plain_miss(run(3600.0))  # without polling the emulator is within: the block path does not explain it
    _plain_miss(run(2500.0))  # none misses the other way
    _plain_miss(run(4550.0, kvm_success=60.0))  # the kernel's adaptive polled successfully on most halts


def test_fidelity_judges_successful_polls_in_points():
    def run(emu_success: float, kvm_success: float):
        emu = _cells("io", "adaptive", poll_success_pct=emu_success)
        kvm = _cells("io", "adaptive", poll_success_pct=kvm_success)
        return _fid(emu, kvm, "io.adaptive.success")

    # Two small shares: 0.5x as a ratio, 2 points apart.
    r = run(2.0, 4.0)
    assert r["check"] == "points" and r["within"] and r["diff"] == -2.0 and fidelity_table.mark(r) == "✓", r
    assert run(71.0, 81.0)["within"]  # -10 points
    r = run(20.0, 60.0)
    assert not r["within"] and r["why"] is None and r["diff"] == -40.0, r
    assert "+-15 points" in fidelity_table.to_csv([r])


def test_fidelity_explains_timer_none_p99_only_where_its_p50_is_within():
    def run(emu_p50: float):
        emu = _cells("timer", "none", p50_cycles=emu_p50, p99_cycles=300_000.0)
        kvm = _cells("timer", "none", p50_cycles=90_000.0, p99_cycles=200_000.0)
        return _fid(emu, kvm, "timer.none.p99")

    _explained(run(100_000.0), "within (1.11x)")
    _plain_miss(run(140_000.0))  # the p50 misses too: not only the tail


def test_fidelity_explains_timer_fixed_p99_only_where_the_kernel_blocked_past_the_tail():
    def run(kvm_success: float, emu_p99: float = 20_000.0, emu_success: float = 99.9):
        emu = _cells("timer", "fixed", p99_cycles=emu_p99, poll_success_pct=emu_success)
        kvm = _cells("timer", "fixed", p99_cycles=90_000.0, poll_success_pct=kvm_success)
        return _fid(emu, kvm, "timer.fixed.p99")

    _explained(run(98.5), "blocked on 1.5% of its timer halts", "emulator's blocked on 0.1%")
    _plain_miss(run(99.3))  # the kernel blocked on 0.7%, under the 1% a p99 reaches: its p99 is a poll hit too
    _plain_miss(run(98.5, emu_success=97.0))  # the emulator's p99 is a blocked wake as well
    _plain_miss(run(98.5, emu_p99=200_000.0))  # the emulator's tail is the longer one: the reason points the other way


# --- beside a neighbour: its fidelity rows, and the experiment on both backends ------------------------

def _nb(**by_cell) -> dict:
    """A neighbour summary: _nb(**{"50%:2ms/timer/adaptive": {"wake_p50_ns": 9000, ...}})."""
    out: dict = {}
    for where, metrics in by_cell.items():
        case, wl, pol = where.split("/")
        out.setdefault(case, {}).setdefault(wl, {})[pol] = {m: _s(v) for m, v in metrics.items()}
    return out


def _nrow(emu: dict, kvm: dict, key: str) -> dict:
    return next(r for r in fidelity.neighbour_rows(emu, kvm) if r["key"] == key)


def test_neighbour_fidelity_judges_ratios_points_and_cores():
    emu = _nb(**{"50%:2ms/timer/adaptive": {"wake_p50_ns": 11_000, "poll_success_pct": 30.0,
                                            "neighbour_cpu_lost_cores": 0.07},
                 "50%:2ms/timer/guest-haltpoll": {"wake_p50_ns": 5_000, "poll_success_pct": 99.0}})
    kvm = _nb(**{"50%:2ms/timer/adaptive": {"wake_p50_ns": 10_000, "poll_success_pct": 50.0,
                                            "neighbour_cpu_lost_cores": 0.05}})
    rows = {r["key"]: r for r in fidelity.neighbour_rows(emu, kvm)}
    assert len(rows) == len(fidelity.NEIGHBOUR_ROWS)  # one neighbour; guest-haltpoll has no kernel side
    p50, ok, lost = (rows[f"neighbour.50%:2ms.timer.adaptive.{k}"] for k in ("p50", "success", "lost"))
    assert p50["within"] and p50["check"] == "ratio" and fidelity_table.ratio_text(p50) == "1.10x"
    assert not ok["within"] and ok["diff"] == -20.0 and fidelity_table.ratio_text(ok) == "-20 points" and ok["why"] is None
    assert lost["within"] and fidelity_table.ratio_text(lost) == "+0.020 core" and lost["digits"] == 3
    assert fidelity_table.mark(rows["neighbour.50%:2ms.io.none.writes"]) == "-"  # not measured: neither a hit nor a miss
    line = fidelity_table.summary_line(list(rows.values()), "none")
    assert "2 of 3 figures" in line and "±15 points" in line and "neighbour.50%:2ms.timer.adaptive.success" in line
    assert "emu_minus_kvm,check,within" in fidelity_table.to_csv(list(rows.values())).splitlines()[0]
    assert fidelity.neighbour_rows(emu, None) == []


def test_neighbour_fidelity_explains_only_where_its_condition_holds_in_the_run():
    # The same miss without a neighbour: not the neighbour's doing.
    emu = _nb(**{"alone/io/none": {"writes_per_s": 2000.0}, "10%:2ms/io/none": {"writes_per_s": 1800.0}})
    kvm = _nb(**{"alone/io/none": {"writes_per_s": 3000.0}, "10%:2ms/io/none": {"writes_per_s": 2900.0}})
    _explained(_nrow(emu, kvm, "neighbour.10%:2ms.io.none.writes"), "0.67x", "0.62x beside it", "without a neighbour")
    kvm["10%:2ms"]["io"]["none"]["writes_per_s"] = _s(6000.0)  # the same side, but the neighbour tripled the gap
    r = _nrow(emu, kvm, "neighbour.10%:2ms.io.none.writes")
    assert not r["within"] and r["ratio"] == 0.3 and r["why"] is None
    kvm["10%:2ms"]["io"]["none"]["writes_per_s"] = _s(2900.0)
    kvm["alone"]["io"]["none"]["writes_per_s"] = _s(2100.0)  # alone within reach: nothing explains the miss
    r = _nrow(emu, kvm, "neighbour.10%:2ms.io.none.writes")
    assert not r["within"] and r["why"] is None
    # CPU lost: the same CPU beside the VM on both sides, only the baseline alone moved.
    base = {"neighbour_cpu_cores": 0.45, "neighbour_alone_cpu_cores": 0.55, "neighbour_cpu_lost_cores": 0.10}
    emu = _nb(**{"50%:2ms/timer/adaptive": base})
    kvm = _nb(**{"50%:2ms/timer/adaptive": {"neighbour_cpu_cores": 0.46, "neighbour_alone_cpu_cores": 0.50,
                                            "neighbour_cpu_lost_cores": 0.04}})
    _explained(_nrow(emu, kvm, "neighbour.50%:2ms.timer.adaptive.lost"), "0.450", "0.460", "0.550", "0.500")
    kvm["50%:2ms"]["timer"]["adaptive"]["neighbour_cpu_cores"] = _s(0.40)  # beside it differed too: no excuse
    r = _nrow(emu, kvm, "neighbour.50%:2ms.timer.adaptive.lost")
    assert not r["within"] and r["why"] is None


def test_neighbour_verdict_is_computed_from_the_figures():
    emu = _nb(**{"alone/timer/adaptive": {"poll_success_pct": 95.0},
                 "alone/timer/guest-haltpoll": {"poll_success_pct": 99.0},
                 "50%:2ms/timer/none": {"wake_p50_ns": 60_000},
                 "50%:2ms/timer/adaptive": {"poll_success_pct": 30.0, "neighbour_cpu_lost_cores": 0.01,
                                            "wake_p50_ns": 12_000},
                 "50%:2ms/timer/guest-haltpoll": {"poll_success_pct": 98.0, "neighbour_cpu_lost_cores": 0.2},
                 "50%:2ms/io/none": {"writes_per_s": 2000.0}, "50%:2ms/io/adaptive": {"writes_per_s": 3000.0}})
    kvm = _nb(**{"50%:2ms/timer/adaptive": {"poll_success_pct": 25.0, "neighbour_cpu_lost_cores": 0.02}})
    ns = [NeighbourSpec(0.1, 2_000_000), NeighbourSpec(0.5, 2_000_000)]
    v = compare_verdict.neighbour_verdict(emu, ns, kvm)
    assert "spinning 50% of 2 ms" in v and "gave way to it (30% of halts ended in a successful poll, 95% alone)" in v
    assert "guest-haltpoll, whose poll runs in guest mode and does not yield, ended 98% of its idle periods in a " \
        "poll (99% alone)" in v
    assert "took more of the neighbour's CPU (0.200 core)" in v and "the kernel's adaptive: 25%" in v
    assert "timer 12,000 ns wake p50 with adaptive against 60,000 without (5.0x faster)" in v
    assert "io 3,000 writes/s with adaptive against 2,000 without (1.5x the throughput)" in v
    emu["50%:2ms"]["timer"]["adaptive"]["poll_success_pct"] = _s(90.0)
    emu["50%:2ms"]["timer"]["guest-haltpoll"]["neighbour_cpu_lost_cores"] = _s(-0.05)
    v = compare_verdict.neighbour_verdict(emu, ns)
    assert "did not give way (90%" in v and "gave way to it" not in v and "took less of the neighbour's CPU" in v
    assert "kernel" not in v and compare_verdict.neighbour_verdict({}, []) == ""
    del emu["alone"]  # no reference: the share alone, no judgement
    assert "the host's adaptive polling ended 90% of halts in a successful poll and" in compare_verdict.neighbour_verdict(emu, ns)


def test_neighbour_experiment_on_both_backends_in_process(kvm, tmp_path, monkeypatch):
    """The real processes, short: beside a 50% neighbour and alone, each cell on the emulator and the
    kernel, the kernel's columns printed and its fidelity rows judged; nothing left behind."""
    args = build_parser().parse_args(["compare", "--quick", "--backend", "both", "--out", str(tmp_path)])
    plan = replace(compare.plan_from_args(args), neighbours=(NeighbourSpec(0.5, 2_000_000),))
    every = cells.jobs
    monkeypatch.setattr(cells, "jobs", lambda p: [j for j in every(p) if j.experiment == beside_neighbour.EXPERIMENT])
    runs, _ = cells.measure_all(plan, progress=False)
    assert len(runs) == 2 * 2 * 5  # (alone, 50%) x (timer, io) x (3 policies on emu, 2 on kvm)
    assert all(not r["check_failures"] for r in runs), [r["check_failures"] for r in runs]
    near = beside_neighbour.document(plan, runs)
    emu, kern = near["summary"], near["kvm"]["summary"]
    assert set(emu["50%:2ms"]["timer"]) == {"none", "adaptive", "guest-haltpoll"}
    assert set(kern["50%:2ms"]["timer"]) == {"none", "adaptive"}
    for side in (emu, kern):
        m = side["50%:2ms"]["timer"]["adaptive"]
        assert 0.3 <= m["neighbour_alone_cpu_cores"]["median"] <= 0.65  # it gets about its duty alone
        assert -0.2 <= m["neighbour_cpu_lost_cores"]["median"] <= 0.5
        assert 0 < m["vcpu_cpu_cores"]["median"] <= 1.05 and m["poll_success_pct"]["median"] is not None
    assert all(r["result"]["spec"]["halt_poll_ns"] == 2_000_000 for r in runs
               if r["workload"] == "timer" and r["policy"] == "adaptive")
    assert {r["result"]["spec"]["backend"] for r in runs} == {"emu", "kvm"}
    rows = fidelity.neighbour_rows(emu, kern)
    assert {r["key"] for r in rows} == {f"neighbour.50%:2ms.{wl}.{pol}.{_k}" for wl, pol, m, _, _ in
                                        fidelity.NEIGHBOUR_ROWS for _k in [{"wake_p50_ns": "p50", "writes_per_s": "writes",
                                                                            "poll_success_pct": "success",
                                                                            "neighbour_cpu_lost_cores": "lost"}[m]]}
    assert all(fidelity_table.mark(r) != "-" for r in rows)  # every figure measured on both sides
    doc = {"config": {"tsc_khz": plan.tsc_khz}, "neighbour": near}
    buf = _io.StringIO()
    neighbour_tables.print_tables(doc, Console(file=buf, width=150), figures.cell, set())
    text = buf.getvalue()
    assert "Beside a neighbour: timer" in text and "kvm" in text and "50% of 2 ms" in text
    left = [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
    assert not left
    assert not segments_of({os.getpid()})
