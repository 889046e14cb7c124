"""`hostd compare --backend both|kvm`: the kernel's cells beside the emulator's, and the refusals."""
import os

from hostd.experiments import compare, side_by_side


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
    row = side_by_side.cells(side, "timer", "fixed", compare.cell)
    assert row == ["40,000", "0.05x", "100,000", "9.0x"]
    assert side_by_side.cells(side, "io", "guest-haltpoll", compare.cell) == ["-", "-", "-", "-"]
    assert len(side_by_side.columns("io")) == len(row)


def test_verdict_says_how_far_the_emulators_gain_is_from_the_kernels():
    text = side_by_side.verdict(EMU, KVM)
    assert "4,500 writes/s against 3,500" in text and "an idle=poll guest made 1,700 (fixed: 265% of it)" in text
    assert "40,000 cycles with polling and 88,000 without (2.2x)" in text
    assert "the emulator shows 66x, 30 times the kernel's gain" in text


def test_both_falls_back_to_the_emulator_with_the_reason(monkeypatch):
    monkeypatch.setenv("HPEMU_KVM_DEV", "/nonexistent")
    backends, why = compare._backends("both")
    assert backends == ("emu",) and "/nonexistent" in why and "\n" not in why


def test_both_runs_each_cell_on_each_backend_back_to_back(kvm):
    plan = compare.Plan(quick=True, repeat=1, tick_hz=2.5, tsc_khz=2_000_000, out="x",
                        durations=dict(compare.DURATIONS[True]), backends=compare._backends("both")[0])
    cells = plan.cells()
    assert ("emu", "kvm") == plan.backends
    assert (1, "io", "none", "emu") in cells and (1, "io", "none", "kvm") in cells
    assert (1, "io", "guest-haltpoll", "kvm") not in cells
    i = cells.index((1, "timer", "fixed", "emu"))
    assert cells[i + 1] == (1, "timer", "fixed", "kvm")
    assert compare.run_id("io", "none", 1, "kvm") == "kvm:io/none/r1"


def test_compare_on_kvm_alone_refuses_in_one_line_without_kvm(hostd):
    p = hostd.popen("compare", "--quick", "--backend", "kvm", env=dict(os.environ, HPEMU_KVM_DEV="/nonexistent"))
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2 and err.count("\n") == 1 and "/nonexistent" in err


def test_fidelity_rows_mark_what_is_within_reach_and_explain_known_misses():
    from hostd.experiments import fidelity

    emu = {**EMU, "idle": {"fixed": {"cpu_pct_per_vcpu": _s(0.28)}}}
    kvm = {**KVM, "idle": {"fixed": {"cpu_pct_per_vcpu": _s(0.05)}}}
    rows = {r["key"]: r for r in fidelity.rows(emu, kvm)}
    assert rows["io.fixed"]["ratio"] == 5400 / 4500 and rows["io.fixed"]["within"]  # 1.2x
    assert rows["io.none"]["within"] and rows["io.none"]["why"] is None  # 4,000 / 3,500 = 1.14x: no reason shown
    assert not rows["timer.fixed.p50"]["within"] and rows["timer.fixed.p50"]["why"] is None  # 0.05x, unexplained
    assert rows["idle.fixed"]["why"] and not rows["idle.fixed"]["within"]
    assert rows["io.idle-poll"]["ratio"] is None and fidelity.mark(rows["io.idle-poll"]) == "-"
    line = fidelity.summary_line(list(rows.values()), "none (the raw emulator)")
    assert "timer.fixed.p50" in line and "io.fixed" not in line.split("outside:")[1]
    csv_text = fidelity.to_csv(list(rows.values()))
    assert csv_text.splitlines()[0].startswith("figure,key,emulator,kernel,emu_over_kvm")
    assert len(csv_text.splitlines()) == 1 + len(fidelity.ROWS)
