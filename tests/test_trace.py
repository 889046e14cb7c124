"""`hostd replay --trace`: the three trace layouts, the kernel's decisions against our adaptive, and
bad input, from small traces checked in under tests/data (each file says where it came from; see
tests/data/README). The live counterparts, recorded by the tests themselves, are test_trace_live.py.

The kernel source these readings follow (torvalds/linux, virt/kvm/kvm_main.c, v6.x):

    kvm_vcpu_halt():
        max_halt_poll_ns = kvm_vcpu_max_halt_poll_ns(vcpu);   // KVM_CAP_HALT_POLL's per-VM max, else
                                                              // the halt_poll_ns module parameter
        if (vcpu->halt_poll_ns > max_halt_poll_ns)
            vcpu->halt_poll_ns = max_halt_poll_ns;            // silent: no trace event
        ... poll, then kvm_vcpu_block() -> waited ...
        halt_ns = ktime_to_ns(cur) - ktime_to_ns(start);      // the whole halt, poll included
        if (halt_poll_allowed) {
            max_halt_poll_ns = kvm_vcpu_max_halt_poll_ns(vcpu);
            if (!vcpu_valid_wakeup(vcpu))          shrink_halt_poll_ns(vcpu);
            else if (max_halt_poll_ns) {
                if (halt_ns <= vcpu->halt_poll_ns) ;
                else if (vcpu->halt_poll_ns && halt_ns > max_halt_poll_ns)        shrink_halt_poll_ns(vcpu);
                else if (vcpu->halt_poll_ns < max_halt_poll_ns && halt_ns < max_halt_poll_ns)
                                                                               grow_halt_poll_ns(vcpu);
            } else vcpu->halt_poll_ns = 0;                    // silent
        }
        trace_kvm_vcpu_wakeup(halt_ns, waited, vcpu_valid_wakeup(vcpu));   // LAST: after the decision

    grow_halt_poll_ns():   val = old * grow; if (val < grow_start) val = grow_start;   // no clamp to max
                           trace_kvm_halt_poll_ns_grow(vcpu_id, val, old)
    shrink_halt_poll_ns(): val = shrink ? old / shrink : 0; if (val < grow_start) val = 0;
                           trace_kvm_halt_poll_ns_shrink(vcpu_id, val, old)

and include/trace/events/kvm.h: kvm_vcpu_wakeup prints "%s time %lld ns, polling %s" (waited ?
"wait" : "poll", ns, valid ? "valid" : "invalid"); kvm_halt_poll_ns prints "vcpu %u: halt_poll_ns
%u (%s %u)" (vcpu_id, new, grow ? "grow" : "shrink", old).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostd.replay.kernel_agreement import KernelAgreement
from hostd.trace.parse import FORMAT_PERF, FORMAT_TRACE_CMD, FORMAT_TRACEFS, Decision, TraceReader, Wakeup
from hostd.plumbing.errors import UsageError
from vcpu.policy import PolicySpec

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
TIMER = {FORMAT_TRACEFS: DATA / "kvm_timer_tracefs.txt", FORMAT_PERF: DATA / "kvm_timer_perf.txt",
         FORMAT_TRACE_CMD: DATA / "kvm_timer_trace-cmd.txt"}
IDLE = DATA / "kvm_idle_tracefs.txt"
# The module parameters the samples were made with (also in the tracefs sample's header): flags, so
# that the perf and trace-cmd samples, which name no host, replay the same on any machine.
PARAMS = ["--halt-poll-ns", "200000", "--halt-poll-ns-grow", "2", "--halt-poll-ns-grow-start", "10000",
          "--halt-poll-ns-shrink", "2"]


def hostd(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hostd", *argv], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def replay_json(path: Path | str, *argv: str) -> dict:
    r = hostd("replay", "--trace", str(path), "--json", *argv)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def events(path: Path) -> tuple[list, TraceReader]:
    reader = TraceReader(str(path))
    return list(reader), reader


# --- the three layouts ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(TIMER))
def test_each_layout_is_detected_and_read_whole(fmt):
    evs, reader = events(TIMER[fmt])
    info = reader.info
    assert info.format == fmt
    assert (info.wakeups, info.decisions, info.unmatched, info.other_events) == (120, 10, 0, 0)
    assert {e.pid for e in evs} == {28229} and {e.comm for e in evs} == {"vm0/vcpu0"}
    first_decision, first_wakeup = evs[0], evs[1]
    assert first_decision == Decision(28229, "vm0/vcpu0", first_decision.line, first_decision.ts, 0, True, 10000, 0)
    assert isinstance(first_wakeup, Wakeup) and (first_wakeup.ns, first_wakeup.waited) == (151716, True)


def test_the_three_layouts_of_one_recording_give_the_same_halts_and_decisions():
    # The samples are the same vCPU thread recorded at once by hostd record, perf and trace-cmd.
    seqs = {}
    for fmt, path in TIMER.items():
        evs, _ = events(path)
        seqs[fmt] = [(e.ns, e.waited, e.valid) if isinstance(e, Wakeup) else (e.grow, e.new, e.old) for e in evs]
    assert seqs[FORMAT_TRACEFS] == seqs[FORMAT_PERF] == seqs[FORMAT_TRACE_CMD]
    docs = [replay_json(path, *PARAMS) for path in TIMER.values()]
    for doc in docs[1:]:
        assert doc["total"]["policies"] == docs[0]["total"]["policies"]
        assert doc["total"]["optimum"] == docs[0]["total"]["optimum"]


def test_layout_variants_perf_pid_tid_trace_cmd_latency_and_tracefs_tgid(tmp_path):
    lines = [
        # perf script -F comm,pid,tid,cpu,time,event,trace; a comm with a space, as QEMU names its vCPUs
        "       CPU 0/KVM 4321/4325 [001]  1009.424316: kvm:kvm_halt_poll_ns: vcpu 0: halt_poll_ns 10000 (grow 0)",
        "       CPU 0/KVM 4321/4325 [001]  1009.424319:  kvm:kvm_vcpu_wakeup: wait time 505280 ns, polling valid",
        # trace-cmd report -l (CPU and latency flags run together, comm cut to 8 chars)
        "tcs: vm0/vcpu-18651   1.....  1035.897152: kvm_vcpu_wakeup:      poll time 5561 ns, polling valid",
        # tracefs with the record-tgid option
        "  vm0/vcpu0-18092   (  18090) [001] d..1.  1002.505284: kvm_vcpu_wakeup: wait time 481014 ns, polling invalid",
        # a kernel before 4.7: no ", polling ..." part
        "  qemu-system-x86-777   [000] ....  99.000001: kvm_vcpu_wakeup: poll time 2000 ns",
    ]
    path = tmp_path / "variants.txt"
    path.write_text("\n".join(lines) + "\n")
    evs, reader = events(path)
    assert reader.info.unmatched == 0
    assert [(e.pid, e.comm) for e in evs] == [(4325, "CPU 0/KVM"), (4325, "CPU 0/KVM"), (18651, "vm0/vcpu"),
                                             (18092, "vm0/vcpu0"), (777, "qemu-system-x86")]
    assert (evs[3].valid, evs[4].valid, evs[4].waited) == (False, True, False)


# --- the kernel's decisions ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(TIMER))
def test_our_adaptive_agrees_with_every_kernel_decision_in_the_samples(fmt):
    """The samples hold grows from 0 (grow_start), a grow past the max (320000 with max 200000:
    grow_halt_poll_ns does not clamp), the silent cap at the next halt (the following shrink's
    `old` is 200000), shrinks and regrowths (kvm_main.c, quoted in the module docstring)."""
    k = replay_json(TIMER[fmt], *PARAMS)["total"]["kernel"]
    assert k["decisions"] == 10 and k["compared"] == 120
    assert k["agreement"] >= 0.99 and k["agreement_per_decision"] >= 0.99
    assert k["agreement"] == 1.0, k["first_disagreement"]  # what we see on these samples
    assert k["unpaired_decisions"] == 0 and k["max_consistent"]


def test_the_decision_belongs_to_the_wakeup_after_it():
    """trace_kvm_halt_poll_ns fires inside kvm_vcpu_halt before trace_kvm_vcpu_wakeup of the same
    halt. Pairing each decision with the wakeup before it instead (swapping them back) makes the
    kernel's sequence disagree with our adaptive: the alignment is what the agreement rests on."""
    evs, _ = events(TIMER[FORMAT_TRACEFS])
    spec = PolicySpec("adaptive", "adaptive", 200000)

    def agreement(seq) -> float:
        k = KernelAgreement(spec)
        for e in seq:
            (k.wakeup if isinstance(e, Wakeup) else k.decision)(e)
        return k.result()["agreement_per_decision"]

    swapped = list(evs)
    for i in range(len(swapped) - 1):
        if isinstance(swapped[i], Decision) and isinstance(swapped[i + 1], Wakeup):
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    assert agreement(evs) == 1.0
    assert agreement(swapped) < 0.95


def _wake(ns: int, line: int, waited: bool = True) -> Wakeup:
    return Wakeup(1, "t", line, float(line), ns, waited, True)


def _dec(new: int, old: int, line: int) -> Decision:
    return Decision(1, "t", line, float(line), 0, new > old, new, old)


def test_reconstruction_rules_on_a_hand_made_sequence():
    """max 200000, grow 2, grow_start 10000, shrink 2 (kvm_main.c, above)."""
    k = KernelAgreement(PolicySpec("adaptive", "adaptive", 200000))
    assert k.wakeup(_wake(500_000, 1)) is None  # before the first decision: the value is unknown
    k.decision(_dec(10_000, 0, 2))  # grow from 0 starts at grow_start...
    assert k.wakeup(_wake(150_000, 3)) == 0  # ...and fires before this halt's wakeup, old = its budget
    assert k.wakeup(_wake(5_000, 4, waited=False)) == 10_000  # halt_ns <= budget: no event, no change
    k.decision(_dec(20_000, 10_000, 5))
    k.wakeup(_wake(150_000, 6))
    k.decision(_dec(40_000, 20_000, 7))
    k.wakeup(_wake(150_000, 8))
    k.decision(_dec(80_000, 40_000, 9))
    k.wakeup(_wake(150_000, 10))
    k.decision(_dec(160_000, 80_000, 11))
    k.wakeup(_wake(199_000, 12))
    k.decision(_dec(320_000, 160_000, 13))  # grows past the max: no clamp in grow_halt_poll_ns
    k.wakeup(_wake(190_000, 14))
    k.decision(_dec(100_000, 200_000, 15))  # old 200000: capped silently at this halt's start
    assert k.wakeup(_wake(900_000, 16)) == 200_000  # a long block: shrink
    r = k.result()
    assert (r["before_first_decision"], r["compared"], r["agreement"], r["agreement_per_decision"]) == (1, 8, 1.0, 1.0)
    assert r["max_bounds"] == [200_000, 900_000] and r["max_consistent"]  # old <= max < a shrinking halt


def test_a_wrong_max_is_named_as_the_cause():
    """The kvm backend's VMs set their own max with KVM_CAP_HALT_POLL, which no trace records;
    replaying with another max disagrees, and the report says which max the decisions need."""
    r = hostd("replay", "--trace", str(TIMER[FORMAT_TRACEFS]), "--halt-poll-ns", "100000", "--policy", "adaptive")
    assert r.returncode == 0, r.stderr
    assert "first disagreement" in r.stdout and "KVM_CAP_HALT_POLL" in r.stdout
    doc = replay_json(TIMER[FORMAT_TRACEFS], "--halt-poll-ns", "100000")
    assert doc["total"]["kernel"]["agreement"] < 0.99 and doc["vcpus"][0]["kernel"]["max_consistent"] is False


def test_an_idle_guest_logs_no_decisions():
    doc = replay_json(IDLE)
    k = doc["total"]["kernel"]
    assert (k["decisions"], k["agreement"]) == (0, None)
    assert len(doc["vcpus"]) == 4 and doc["total"]["halts"] == 6
    out = hostd("replay", "--trace", str(IDLE)).stdout
    assert "kernel decisions: none logged" in out and "%" not in out.split("kernel decisions")[1].splitlines()[0]


def test_kernel_parameters_come_from_the_record_header_and_flags_override():
    doc = replay_json(TIMER[FORMAT_TRACEFS])
    assert doc["kernel_params"]["from"].startswith("recorded with the trace by hostd record")
    assert doc["specs"]["adaptive"]["halt_poll_ns"] == 200000
    doc = replay_json(TIMER[FORMAT_TRACEFS], "--halt-poll-ns", "300000", "--halt-poll-ns-shrink", "0")
    assert (doc["specs"]["adaptive"]["halt_poll_ns"], doc["specs"]["adaptive"]["halt_poll_ns_shrink"]) == (300000, 0)


# --- every replay output ---------------------------------------------------------------------------

def test_every_policy_the_optimum_and_the_kernel_per_vcpu_and_total():
    doc = replay_json(TIMER[FORMAT_PERF], *PARAMS, "--penalty-ns", "20000")
    assert doc["penalty_ns"] == 20000
    v, total = doc["vcpus"][0], doc["total"]
    assert set(v["policies"]) == {"none", "fixed", "adaptive", "guest-haltpoll", "idle-poll", "kernel (traced)"}
    none = v["policies"]["none"]
    assert none["cost_per_halt_ns"] == 20000 and none["polled_ok"] == 0  # every halt pays P
    best = v["optimum"]
    for p in v["policies"].values():  # the optimum is the cheapest fixed budget on these halts
        if p["policy"] in ("none", "fixed"):
            assert p["cost_per_halt_ns"] >= best["cost_per_halt_ns"] - 1e-6
    assert not best["sampled"] and best["halts_used"] == 120
    kernel = v["policies"]["kernel (traced)"]
    assert kernel["blocks"] == v["waited"] == 115 and kernel["halts"] == 120
    assert total["policies"]["adaptive"]["halts"] == 120 == total["halts"]


def test_human_output_names_layout_parameters_tables_and_agreement():
    r = hostd("replay", "--trace", str(TIMER[FORMAT_TRACE_CMD]), *PARAMS)
    assert r.returncode == 0 and not r.stderr
    out = r.stdout
    assert "(trace-cmd report)" in out and "120 halts and 10 halt_poll_ns decisions" in out
    for name in ("none", "fixed", "adaptive", "guest-haltpoll", "idle-poll", "kernel (traced)", "optimum (fixed)"):
        assert f"\n  {name} " in out
    assert "kernel agreement: 100.00% of 120 halts" in out


def test_pid_and_comm_pick_threads_and_a_policy_can_be_chosen():
    assert [v["pid"] for v in replay_json(IDLE, "--pid", "28268,28270")["vcpus"]] == [28268, 28270]
    assert [v["comm"] for v in replay_json(IDLE, "--comm", r"vcpu[23]$")["vcpus"]] == ["vm0/vcpu2", "vm0/vcpu3"]
    doc = replay_json(IDLE, "--policy", "fixed", "--halt-poll-ns", "50000")
    assert set(doc["vcpus"][0]["policies"]) == {"fixed"} and doc["specs"]["fixed"]["halt_poll_ns"] == 50000


def test_out_writes_csvs_json_and_plot(tmp_path):
    out = tmp_path / "o"
    r = hostd("replay", "--trace", str(TIMER[FORMAT_TRACEFS]), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["halts.csv", "halts.png", "replay.json", "summary.csv"]
    halts = (out / "halts.csv").read_text().splitlines()
    assert len(halts) == 121 and halts[0].startswith("pid,halt,line,ts,halt_ns,waited,valid,kernel_budget_ns,")
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("scope,pid,comm,policy,") and any(",optimum (fixed)," in s for s in summary)
    assert (out / "halts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "replay.json").read_text())["total"]["halts"] == 120


def test_stdin_and_halts_mode_unchanged():
    r = hostd("replay", "--trace", "-", "--json", stdin=TIMER[FORMAT_PERF].read_text())
    assert r.returncode == 0 and json.loads(r.stdout)["total"]["halts"] == 120
    r = hostd("replay", "--halts", "-", stdin="1000\n2000\n")  # --policy still defaults to fixed there
    assert r.returncode == 0 and r.stdout.startswith("policy fixed:")
    r = hostd("replay", "--halts", "-", "--pid", "3", stdin="1000\n")
    assert (r.returncode, r.stderr) == (2, "hostd: error: --pid: only with --trace\n")


# --- bad input: one line, exit 2 where nothing usable was found ----------------------------------------

def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.mark.parametrize("content, words", [
    (b"", ["is empty"]),
    (os.urandom(2000) + b"\0", ["binary file"]),
    (b"PERFILE2" + bytes(200), ["perf.data", "perf script"]),
    (b"\x17\x08\x44tracing6\0" + bytes(100), ["trace.dat", "trace-cmd report"]),
    (b"# tracer: nop\n  bash-1 [000] ..... 5.000001: sched_process_exec: filename=/bin/ls pid=1 old_pid=1\n",
     ["no kvm:kvm_vcpu_wakeup events"]),
    (b"hello\nworld\n", ["no kvm:kvm_vcpu_wakeup events", "2 lines of no known layout"]),
    (b"garbage\n" * 1100, ["more than 1000 lines match no known trace layout"]),
], ids=["empty", "binary", "perf.data", "trace.dat", "no-kvm-events", "plain-text", "garbage"])
def test_unusable_files_are_refused_in_one_line(tmp_path, content, words):
    path = tmp_path / "t"
    path.write_bytes(content)
    _one_line_error(hostd("replay", "--trace", str(path)), *words)


def test_a_truncated_last_line_is_noted_not_fatal(tmp_path):
    text = TIMER[FORMAT_TRACEFS].read_text()
    cut = text[:text.rindex("polling valid")] + "polling va"  # cut mid-word, no final newline
    path = tmp_path / "cut.txt"
    path.write_text(cut)
    r = hostd("replay", "--trace", str(path))
    assert r.returncode == 0, r.stderr
    assert "the last line is cut short (ignored)" in r.stdout and "119 halts" in r.stdout


def test_a_few_foreign_lines_are_counted_not_fatal(tmp_path):
    lines = TIMER[FORMAT_TRACEFS].read_text().splitlines(keepends=True)
    path = tmp_path / "mixed.txt"
    path.write_text("".join(lines[:20]) + "some note someone pasted\n" + "".join(lines[20:]))
    doc = replay_json(path)
    assert doc["trace"]["unmatched"] == 1
    assert doc["trace"]["unmatched_examples"][0]["text"] == "some note someone pasted"
    assert doc["total"]["halts"] == 120


def test_selection_errors(tmp_path):
    _one_line_error(hostd("replay", "--trace", str(IDLE), "--pid", "99999"), "--pid 99999 matches no vCPU thread",
                    "28267 (vm0/vcpu0)")
    _one_line_error(hostd("replay", "--trace", str(IDLE), "--comm", "qemu"), "matches no vCPU thread")
    _one_line_error(hostd("replay", "--trace", str(IDLE), "--comm", "(x"), "--comm: not a regular expression")
    _one_line_error(hostd("replay", "--trace", str(IDLE), "--pid", "a,b"), "--pid: expected PID")
    _one_line_error(hostd("replay", "--trace", str(tmp_path / "nope")), "cannot read", "No such file")
    _one_line_error(hostd("replay", "--trace", str(tmp_path)), "cannot read", "Is a directory")
    _one_line_error(hostd("replay", "--trace", str(IDLE), "--penalty-ns", "-1"), "--penalty-ns")


def test_reader_errors_are_usage_errors():
    with pytest.raises(UsageError):
        list(TraceReader("/nonexistent/trace.txt"))


# --- streaming: memory does not grow with the trace ---------------------------------------------------

def _max_rss_kb(path: Path) -> int:
    # The optimum's sample is capped small here so that both traces overflow it: what is left to
    # grow with the trace is whatever the streaming itself holds on to.
    code = ("import resource, sys\nfrom hostd.cli import main\nfrom hostd.replay import trace_replay as t\n"
            "t.SAMPLE_TOTAL = t.SAMPLE_PER_VCPU = 10_000\n"
            f"rc = main(['replay', '--trace', {str(path)!r}, '--json'])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_memory_stays_flat_as_the_trace_grows(tmp_path):
    body = "".join(line for line in TIMER[FORMAT_TRACEFS].read_text().splitlines(keepends=True)
                   if not line.startswith("#"))
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text(body * 300)  # ~3 MB
    with open(large, "w") as f:  # ~30 MB: ten times the halts
        for _ in range(10):
            f.write(body * 300)
    grown_mb = (_max_rss_kb(large) - _max_rss_kb(small)) / 1024
    size_mb = (large.stat().st_size - small.stat().st_size) / 2**20
    # Holding the file, its lines or one object per halt would grow by about its size or more.
    assert grown_mb < 0.1 * size_mb, (grown_mb, size_mb)
