"""`hostd replay`: the engine, the CLI (as a real subprocess), and the shared policy options."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hostd.plumbing import policy_options
from hostd.plumbing.errors import UsageError
from hostd.plumbing.policy_options import add_policy_options, cycles_to_ns, policy_spec_from_args, tsc_khz_from_machine
from hostd.commands.replay import read_halts
from hostd.replay.replayer import replay
from vcpu.emu.guest_haltpoll import GuestHaltPoll
from vcpu.policy import AdaptivePoll, PolicySpec

ROOT = Path(__file__).resolve().parent.parent
HALTS = [5000, 5000, 15000, 3000, 500000, 500000, 500000, 20000, 20000, 20000, 150000, 90000, 90000]


def hostd(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hostd", *argv], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


def spec_of(*argv: str) -> PolicySpec:
    parser = argparse.ArgumentParser()
    add_policy_options(parser)
    return policy_spec_from_args(parser.parse_args(list(argv)))


@pytest.fixture
def halts_file(tmp_path: Path) -> Path:
    path = tmp_path / "halts.txt"
    path.write_text("# recorded halts, ns\n\n" + "\n".join(f"{h}  # halt {i}" for i, h in enumerate(HALTS)) + "\n")
    return path


def direct_adaptive(max_ns: int, halts: list[int]) -> list[tuple[int, bool, int]]:
    """The in-process policy driven by hand: (budget, polled_ok, next budget) per halt."""
    p = AdaptivePoll(max_ns, 2, 10000, 2)
    out = []
    for h in halts:
        b = p.begin_halt()
        ok = 0 < b and h <= b
        p.end_halt(h, waited=not ok, valid=True)
        out.append((b, ok, min(p.halt_poll_ns, max_ns)))
    return out


# --- the engine ------------------------------------------------------------------------------

def test_engine_matches_the_policy_driven_directly() -> None:
    rows = replay(PolicySpec("adaptive", "adaptive", 100000), HALTS).rows
    assert [(r["budget_ns"], r["polled_ok"], r["next_budget_ns"]) for r in rows] == direct_adaptive(100000, HALTS)
    # Hand-checked against kvm_vcpu_halt: grow 0->10000->20000, shrink 20000->10000->0 on long halts.
    assert [r["budget_ns"] for r in rows[:8]] == [0, 10000, 10000, 20000, 20000, 10000, 0, 0]


def test_next_budget_is_capped_like_the_next_halt() -> None:
    rows = replay(PolicySpec("adaptive", "adaptive", 30000), [25000] * 4).rows
    # 20000 grows to 40000 in vcpu->halt_poll_ns, but the next HLT polls at most 30000.
    assert [r["next_budget_ns"] for r in rows] == [10000, 20000, 30000, 30000]
    assert [r["budget_ns"] for r in rows] == [0, 10000, 20000, 30000]


def test_engine_fixed_summary() -> None:
    result = replay(PolicySpec("fixed", "fixed", 20000), [1000, 30000, 20000])
    assert [r["polled_ok"] for r in result.rows] == [True, False, True]
    s = result.summary
    assert (s["halts"], s["polled_ok"], s["blocks"], s["exits"]) == (3, 2, 1, 3)
    assert s["poll_cpu_ns"] == 1000 + 20000 + 20000  # hits poll until the IRQ, misses the whole budget
    assert s["success_ratio"] == pytest.approx(2 / 3)


def test_engine_idle_poll_never_exits() -> None:
    result = replay(PolicySpec("idle-poll", "none", 0), [100, 10**9])
    assert result.rows[0] == {"halt_ns": 100, "budget_ns": None, "polled_ok": True, "next_budget_ns": None}
    assert (result.summary["exits"], result.summary["blocks"], result.summary["poll_cpu_ns"]) == (0, 0, 100 + 10**9)


def test_engine_guest_haltpoll_polls_in_the_guest_first() -> None:
    spec = PolicySpec("guest-haltpoll", "none", 0, exit_cost_ns=1000)
    result = replay(spec, [5000, 5000, 120000, 230000, 300000])
    assert [r["guest_budget_ns"] for r in result.rows] == [0, 50000, 50000, 100000, 200000]
    assert [r["guest_polled_ok"] for r in result.rows] == [False, True, False, False, False]
    # Past a missed guest poll the host sees halt - guest budget, and the guest reflects that plus
    # the exit cost: 71000 and 131000 grow the limit, 101000 fits within 200000 and changes nothing.
    g = GuestHaltPoll()
    for halted, block in [(True, 6000), (False, 0), (True, 71000), (True, 131000), (True, 101000)]:
        g.reflect(halted, block)
    assert [r["guest_next_budget_ns"] for r in result.rows] == [50000, 50000, 100000, 200000, 200000]
    assert result.rows[-1]["guest_next_budget_ns"] == g.poll_limit_ns
    hit = result.rows[1]
    assert (hit["budget_ns"], hit["polled_ok"]) == (None, True)
    s = result.summary
    assert (s["exits"], s["guest_polled_ok"], s["blocks"], s["exit_cost_ns"]) == (4, 1, 4, 4000)
    assert s["poll_cpu_ns"] == 5000 + 50000 + 100000 + 200000


def test_engine_guest_residency_includes_the_exit_cost() -> None:
    # Host halt 250000 - 50000 = 200000 would grow the guest limit; with the 1000 ns exit round
    # trip the guest measures 201000 > guest_halt_poll_ns and shrinks 50000 -> 25000 -> reset 0.
    rows = replay(PolicySpec("guest-haltpoll", "none", 0, exit_cost_ns=1000), [5000, 250000]).rows
    assert [r["guest_next_budget_ns"] for r in rows] == [50000, 0]
    rows = replay(PolicySpec("guest-haltpoll", "none", 0), [5000, 250000]).rows
    assert [r["guest_next_budget_ns"] for r in rows] == [50000, 100000]


def test_engine_guest_haltpoll_over_an_adaptive_host() -> None:
    rows = replay(PolicySpec("guest-haltpoll", "adaptive", 100000), HALTS).rows
    exited = [r for r in rows if not r["guest_polled_ok"]]
    assert exited and len(exited) < len(rows)
    host_halts = [r["halt_ns"] - r["guest_budget_ns"] for r in exited]
    host_rows = [(r["budget_ns"], r["polled_ok"], r["next_budget_ns"]) for r in exited]
    assert host_rows == direct_adaptive(100000, host_halts)


def test_read_halts_skips_comments_and_names_bad_lines(tmp_path: Path, halts_file: Path) -> None:
    assert read_halts(str(halts_file)) == HALTS
    bad = tmp_path / "bad.txt"
    bad.write_text("100\n# ok\n-5\n")
    with pytest.raises(UsageError, match=r"bad.txt:3: .*'-5'"):
        read_halts(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(UsageError, match="no halt durations"):
        read_halts(str(empty))


# --- the CLI, as a user runs it ---------------------------------------------------------------

def test_cli_json_gives_the_same_budgets_as_the_policy(halts_file: Path) -> None:
    proc = hostd("replay", "--policy", "adaptive", "--halt-poll-ns", "100000", "--halts", str(halts_file), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list) and len(rows) == len(HALTS)
    assert all(set(r) == {"halt_ns", "budget_ns", "polled_ok", "next_budget_ns"} for r in rows)
    assert [r["halt_ns"] for r in rows] == HALTS
    assert [(r["budget_ns"], r["polled_ok"], r["next_budget_ns"]) for r in rows] == direct_adaptive(100000, HALTS)
    assert "halts 13" in proc.stderr  # the summary goes to stderr in --json mode


def test_cli_human_output_and_stdin() -> None:
    proc = hostd("replay", "--policy", "fixed", "--halt-poll", "2000000", "--tsc-khz", "2000000",
                 "--halts", "-", stdin="500\n2000000\n")
    assert proc.returncode == 0, proc.stderr
    assert "fixed halt_poll_ns=1000000" in proc.stdout  # 2,000,000 cycles at 2 GHz
    assert "halts 2: 1 ended while polling (50.0%)" in proc.stdout


def test_cli_guest_haltpoll_json_has_guest_columns(halts_file: Path) -> None:
    proc = hostd("replay", "--policy", "guest-haltpoll", "--halts", str(halts_file), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert set(rows[0]) == {"halt_ns", "budget_ns", "polled_ok", "next_budget_ns",
                            "guest_budget_ns", "guest_polled_ok", "guest_next_budget_ns"}


def test_cli_bad_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("100\n\n12abc\n")
    proc = hostd("replay", "--policy", "adaptive", "--halts", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and ":3:" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = hostd("replay", "--policy", "adaptive", "--halts", str(tmp_path / "nope.txt"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "nope.txt" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_bad_option_is_one_line_and_exit_2(halts_file: Path) -> None:
    proc = hostd("replay", "--policy", "adaptive", "--halt-poll-ns", "abc", "--halts", str(halts_file))
    assert proc.returncode == 2
    assert proc.stderr == "hostd: error: --halt-poll-ns: must be a whole number >= 0, got 'abc'\n"


# --- the shared policy options ----------------------------------------------------------------

def test_policy_defaults() -> None:
    assert spec_of("--policy", "adaptive") == PolicySpec("adaptive", "adaptive", 200000)
    assert spec_of("--policy", "none") == PolicySpec("none", "none", 0)
    assert spec_of("--policy", "idle-poll") == PolicySpec("idle-poll", "none", 0)
    assert spec_of("--policy", "guest-haltpoll") == PolicySpec("guest-haltpoll", "none", 0)
    # fixed: the seed's 2,000,000 cycles at the given TSC rate
    assert spec_of("--tsc-khz", "2600000").halt_poll_ns == cycles_to_ns(2_000_000, 2_600_000) == 769231
    assert spec_of("--policy", "guest-haltpoll", "--host-policy", "adaptive").halt_poll_ns == 200000


def test_policy_options_parse_every_knob() -> None:
    spec = spec_of("--policy", "guest-haltpoll", "--host-policy", "adaptive", "--halt-poll-ns", "50000",
                   "--halt-poll-ns-grow", "4", "--halt-poll-ns-grow-start", "2000", "--halt-poll-ns-shrink", "0",
                   "--guest-halt-poll-ns", "300000", "--guest-halt-poll-grow", "3",
                   "--guest-halt-poll-grow-start", "10000", "--guest-halt-poll-shrink", "0",
                   "--guest-halt-poll-allow-shrink", "N", "--exit-cost-ns", "1500")
    assert spec == PolicySpec("guest-haltpoll", "adaptive", 50000, 4, 2000, 0, 300000, 3, 10000, 0, False, 1500)


@pytest.mark.parametrize(("argv", "message"), [
    (["--policy", "halt"], "--policy: unknown policy 'halt'"),
    (["--policy", "adaptive", "--halt-poll-ns", "-5"], "--halt-poll-ns: must be a whole number >= 0, got '-5'"),
    (["--policy", "adaptive", "--halt-poll-ns", "1.5"], "--halt-poll-ns: must be a whole number >= 0, got '1.5'"),
    (["--policy", "adaptive", "--halt-poll-ns", "4294967296"], "--halt-poll-ns: must be at most 4294967295"),
    (["--policy", "adaptive", "--halt-poll-ns-grow", "0"], "--halt-poll-ns-grow: must be at least 1"),
    (["--policy", "adaptive", "--halt-poll-ns-grow-start", "0"], "--halt-poll-ns-grow-start: must be at least 1"),
    (["--policy", "guest-haltpoll", "--guest-halt-poll-grow", "0"], "--guest-halt-poll-grow: must be at least 1"),
    (["--policy", "guest-haltpoll", "--guest-halt-poll-allow-shrink", "maybe"], "--guest-halt-poll-allow-shrink"),
    (["--policy", "adaptive", "--host-policy", "none"], "--host-policy: only meaningful with --policy guest-haltpoll"),
    (["--policy", "guest-haltpoll", "--host-policy", "magic"], "--host-policy: unknown host policy 'magic'"),
    (["--policy", "none", "--halt-poll-ns", "1000"], "--halt-poll-ns: --policy none does not poll on the host"),
    (["--policy", "guest-haltpoll", "--halt-poll", "1000"], "--halt-poll: --policy guest-haltpoll does not poll"),
    (["--policy", "fixed", "--halt-poll-ns", "1000", "--halt-poll-ns-grow", "3"], "--halt-poll-ns-grow: used only by"),
    (["--policy", "adaptive", "--guest-halt-poll-ns", "3"], "--guest-halt-poll-ns: used only by --policy guest"),
    (["--policy", "fixed", "--tsc-khz", "0"], "--tsc-khz: must be greater than 0"),
    (["--policy", "adaptive", "--tsc-khz", "fast"], "--tsc-khz: must be a whole number >= 0, got 'fast'"),
    (["--policy", "fixed", "--halt-poll", "4000000000", "--tsc-khz", "100"], "--halt-poll: 4000000000 cycles at"),
])
def test_policy_option_errors_are_one_line_naming_the_option(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        spec_of(*argv)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_tsc_khz_from_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tsc, cpuinfo = tmp_path / "tsc_freq_khz", tmp_path / "cpuinfo"
    monkeypatch.setattr(policy_options, "_TSC_FREQ_KHZ", tsc)
    monkeypatch.setattr(policy_options, "_CPUINFO", cpuinfo)
    flags = "flags\t\t: fpu tsc constant_tsc nonstop_tsc\n"
    cpuinfo.write_text("model name\t: AMD EPYC\ncpu MHz\t\t: 2596.120\n" + flags)
    assert tsc_khz_from_machine() == 2596120
    cpuinfo.write_text("model name\t: Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz\ncpu MHz\t\t: 1200.000\n" + flags)
    assert tsc_khz_from_machine() == 2600000  # the nominal clock, not the scaled current one
    tsc.write_text("2592000\n")
    assert tsc_khz_from_machine() == 2592000
    tsc.unlink()
    cpuinfo.write_text("model name\t: AMD EPYC\ncpu MHz\t\t: 2596.120\nflags\t\t: fpu tsc\n")
    with pytest.raises(UsageError, match="--tsc-khz"):
        tsc_khz_from_machine()
