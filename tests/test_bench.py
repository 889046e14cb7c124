"""The benchmark in its reduced mode: every figure comes out with its floor and ratio, and
nothing it started (processes, /dev/shm segments) outlives it."""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "poll_path", "block_path", "block_vs_zmq", "timer", "injection_open_1vcpu", "injection_open_2vcpu",
    "injection_open_4vcpu", "injection_closed_1vcpu", "injection_closed_2vcpu", "injection_closed_4vcpu", "launch_1vcpu", "launch_4vcpu", "recording", "idle_cost", "poll_success",
}

KVM_FIGURES = {"kvm_poll_hit", "kvm_block", "kvm_launch_4vcpu",
               "kvm_vmm_floor_cap0", "kvm_io_cap0", "kvm_io_breakdown_cap0",
               "kvm_vmm_floor_seed", "kvm_io_seed", "kvm_io_breakdown_seed"}


def _kvm_usable() -> bool:
    from vcpu.kvm.kvm_api import KvmUnavailable, probe

    try:
        probe()
    except KvmUnavailable:
        return False
    return True


def _tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries `tag`: everything the benchmark started."""
    pids = []
    needle = f"HPBENCH_TEST_TAG={tag}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _segments(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if f".{pid}." in n]


def _run_tagged(argv: list[str], timeout: float) -> tuple[subprocess.Popen, str, str, list[int], list[str]]:
    """Run `python -m ARGV...` with a tag in its environment. Whatever it left is removed and
    returned: the processes carrying the tag (killed) and the segments it owned (unlinked)."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env={**os.environ, "HPBENCH_TEST_TAG": tag},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{argv[0]} did not finish in {timeout} s; stderr tail:\n{stderr[-2000:]}")
    finally:
        left = _tagged_pids(tag)
        _kill(left)
        segs = _segments(proc.pid)
        for name in segs:
            try:
                os.unlink(f"/dev/shm/{name}")
            except OSError:
                pass
    return proc, stdout, stderr, left, segs


def test_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc, stdout, stderr, left, segs = _run_tagged(["bench", "--quick", "--json", "--out", str(out)], 90)
    assert not left, f"processes left behind: {left}"
    assert not segs, f"/dev/shm segments left behind: {segs}"
    assert proc.returncode == 0, f"exit {proc.returncode}; stderr tail:\n{stderr[-2000:]}"
    result = json.loads(stdout)
    assert json.loads(out.read_text()) == result
    figs = {f["key"]: f for f in result["figures"]}
    assert set(figs) == FIGURES | (KVM_FIGURES if _kvm_usable() else {"kvm"})
    cyclictest = bool(__import__("shutil").which("cyclictest"))
    for key, f in figs.items():
        if key.startswith("kvm"):  # information rows: the kernel's own figures, no floor to judge by
            assert f["error"] is None and (key == "kvm" or f["value"] > 0), (key, f["error"], f["value"])
            continue
        assert f["error"] is None, (key, f["error"])
        if key.startswith("injection_open") and f["value"] is None:
            # No tried schedule was kept: a loaded machine's answer, not the bench's failure.
            # The runs behind it must still have injected something, and the table says how much.
            assert all(r["injected_per_s"] > 0 for r in f["detail"]["runs"]), (key, f["detail"])
            assert f["no_value"].startswith("none kept (best ") and f["no_value"] in stderr, f["no_value"]
            assert f["met"] is not True, key
            continue
        assert isinstance(f["value"], (int, float)) and f["value"] > 0, (key, f["value"])
        if key == "timer" and not cyclictest:
            assert "missing" in f["floor_label"]
            continue
        assert isinstance(f["floor"], (int, float)) and f["floor"] > 0, (key, f["floor"])
        assert abs(f["ratio"] - f["value"] / f["floor"]) <= 1e-6 * max(1.0, f["ratio"]), key
        # Each ratio row carries its spread across chunks/repeats, around the ratio itself.
        iv = f["ratio_ci"]
        assert list(iv) == ["value", "ci_low", "ci_high", "n"] and iv["n"] >= 1, (key, iv)
        assert iv["value"] == pytest.approx(f["ratio"]), (key, iv)
        assert (iv["ci_low"] is None or iv["ci_low"] <= iv["value"]) and \
            (iv["ci_high"] is None or iv["value"] <= iv["ci_high"]), (key, iv)
        if f["target"] and f["detail"].get("judged", True):
            assert isinstance(f["met"], bool), key
    # The table names every figure (it goes to stderr with --json).
    for label in ("poll-path", "block-path", "cyclictest", "injection", "launch", "recording", "idle"):
        assert label in stderr
    assert result["leftover_segments"] == []


# --- the minimal-VMM floor (bench/vmm_floor.py) --------------------------------------------------
FLOOR_MAY_IMPORT = {"vcpu.kvm.kvm_api", "vcpu.kvm.kvm_guest"}


def _project_packages() -> set[str]:
    return {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}


def test_vmm_floor_imports_only_the_abi_and_the_guest() -> None:
    """The floor is the smallest VMM for the same kernel and guest: from the project it may take
    KVM's ioctl numbers and structs and the guest image, never the backend's VM, device or hostd."""
    tree = ast.parse((ROOT / "bench" / "vmm_floor.py").read_text())
    project = _project_packages()
    assert {"vcpu", "hostd", "irqsrc", "bench"} <= project
    taken = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import at line {node.lineno}"
            mod = node.module or ""
            # `from vcpu.kvm import kvm_api` names a module; `from vcpu.kvm.kvm_api import X` a member.
            names = [f"{mod}.{a.name}" if (ROOT / mod.replace(".", "/") / f"{a.name}.py").is_file() else mod
                     for a in node.names]
        else:
            continue
        taken |= {n for n in names if n.split(".")[0] in project}
    assert taken, "the floor should run the project's guest image"
    bad = {n for n in taken if not any(n == ok or n.startswith(ok + ".") for ok in FLOOR_MAY_IMPORT)}
    assert not bad, f"bench/vmm_floor.py imports {sorted(bad)} from the project"


def test_vmm_floor_refuses_without_kvm() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.vmm_floor", "--seconds", "0.1"], cwd=ROOT,
                       env={**os.environ, "HPEMU_KVM_DEV": "/nonexistent/kvm"}, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "/nonexistent/kvm" in r.stderr


def test_vmm_floor_short(kvm, tmp_path: Path) -> None:
    """One second of the floor (KVM_IOEVENTFD submit, cap 0): it made writes, finished on time,
    and left no process and no file behind."""
    proc, stdout, stderr, left, segs = _run_tagged(["bench.vmm_floor", "--seconds", "1", "--json",
                                                    "--io-dir", str(tmp_path)], 30)
    assert not left, f"processes left behind: {left}"
    assert proc.returncode == 0, stderr
    r = json.loads(stdout)
    assert r["submit"] == "ioeventfd" and r["cap_ns"] == 0
    assert 0.9 <= r["seconds"] <= 5, r
    assert r["writes"] > 0 and r["writes_per_s"] > 0, r
    assert r["halt_exits"] >= r["writes"] - 1, r  # the guest halts for each completion (no poll at cap 0)
    assert list(tmp_path.iterdir()) == [], "the O_DSYNC file was left behind"
    assert not segs
