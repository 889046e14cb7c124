"""Shared test plumbing: run hostd as a user would, and prove nothing outlives a test."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from vcpu import abi

# A suite started in the background (`./run.sh test &`) inherits SIGINT ignored, and so would every
# hostd it starts, which Python then leaves without its Ctrl-C handler: the Ctrl-C tests would test
# nothing. A handler of our own is reset to the default in each child by exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A profile `hostd calibrate` wrote for this user would change what every emulator test measures:
# the suite gets a config directory of its own (a test that wants a profile passes --calibration).
_CONFIG = tempfile.TemporaryDirectory(prefix="hpemu-test-config-")
os.environ["XDG_CONFIG_HOME"] = _CONFIG.name


def segments_of(owner_pids: set[int]) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if abi.segment_owner(n) in owner_pids]


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def stop_gently(p: subprocess.Popen, timeout: float) -> None:
    """Ctrl-C a recorder (its clean way out: tracing restored), then kill it if it will not go."""
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


class Launcher:
    """Starts hostd processes for one test and remembers every pid they and their children had."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.seen: set[int] = set()

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-m", "hostd", *args], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, **kw,
        )
        self.procs.append(p)
        self.seen.add(p.pid)
        return p

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        p = self.popen(*args)
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def run_json(self, *args: str, timeout: float = 120) -> dict:
        r = self.run(*args, "--json", timeout=timeout)
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout)
        self.seen.update(v["pid"] for v in result["vcpus"])
        return result

    def skip_if_others_load(self, what: str) -> None:
        """After a check that others' load on our CPUs decides (polls give way to their tasks by
        design): measure that load alone, in a 1 s run of our own, and skip with it where it is
        over 0.05 core (a quiet machine here: 0.005-0.01). Where it is quiet, the caller's assertion
        then stands."""
        cpus = sorted(os.sched_getaffinity(0))
        r = self.run_json("run", "--vcpus", "1", "--workload", "idle", "--policy", "none", "--cpus", str(cpus[-1]),
                          "--device-cpu", str(cpus[0]), "--duration", "1")
        others = r["host_cpus"]["foreign_load"]
        if others > 0.05:
            pytest.skip(f"{what}: other processes used {others:.2f} core of our CPUs")

    def watch_children(self, p: subprocess.Popen) -> list[psutil.Process]:
        kids = psutil.Process(p.pid).children(recursive=True)
        self.seen.update(k.pid for k in kids)
        return kids

    def cleanup(self) -> tuple[list[int], list[str]]:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
        deadline = time.monotonic() + 5
        while alive(self.seen - {p.pid for p in self.procs}) and time.monotonic() < deadline:
            time.sleep(0.05)
        return alive(self.seen), segments_of(self.seen)


@pytest.fixture
def hostd():
    """A launcher whose test fails if any process or /dev/shm segment it made survives."""
    launcher = Launcher()
    yield launcher
    procs, segs = launcher.cleanup()
    for pid in procs:  # never leave them behind for the next test, even when failing it
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    for name in segs:
        os.unlink(f"/dev/shm/{name}")
    assert not procs, f"processes left behind: {procs}"
    assert not segs, f"segments left behind: {segs}"


def pytest_terminal_summary(terminalreporter):
    """End every run by saying which tests were skipped and why: a skip that installing an
    optional system package would lift (README) must not pass unnoticed."""
    skipped = terminalreporter.stats.get("skipped", [])
    terminalreporter.section(f"skipped tests: {len(skipped) or 'none'}", sep="-")
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        terminalreporter.write_line(f"{rep.nodeid}: {reason.removeprefix('Skipped: ')}")


@pytest.fixture
def kvm():
    """Skips the test, saying why, where the kvm backend cannot run (HPEMU_KVM_DEV moves it)."""
    from vcpu.kvm.kvm_api import KvmUnavailable, probe

    try:
        probe()
    except KvmUnavailable as exc:
        pytest.skip(str(exc))
