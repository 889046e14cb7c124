"""`hostd serve` end to end: launch, stats, live set, stop, child death, SIGTERM, stat, metrics.

Every daemon is started by `serve_daemon`, which kills it (and through the parent-death signal
its VMs) and checks for leftover processes and segments even when the test fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil
import pytest

from hostd.service.control import Client

HOSTD = [sys.executable, "-m", "hostd"]


class ServeDaemon:
    def __init__(self, directory: str, proc: subprocess.Popen, endpoint: str, metrics: str | None, err) -> None:
        self.dir = directory
        self.err = err
        self.proc = proc
        self.endpoint = endpoint
        self.metrics = metrics
        self.env = {**os.environ, "HALTPOLL_EMU_DIR": directory}

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, timeout_s: float = 60.0) -> Client:
        return Client(self.endpoint, timeout_s=timeout_s)

    def call(self, cmd: str, **fields) -> dict:
        with self.client() as c:
            return c.call(cmd, **fields)

    def hostd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*HOSTD, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def launch(self, *args: str) -> str:
        r = self.hostd("launch", *args)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def all_pids(self) -> set[int]:
        try:
            return {p.pid for p in psutil.Process(self.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def segments(self) -> list[str]:
        return [n for n in os.listdir("/dev/shm") if n.startswith(f"hpemu.{self.pid}.")]


@contextlib.contextmanager
def serve_daemon(*extra: str):
    directory = tempfile.mkdtemp(prefix="hpe-test-")
    env = {**os.environ, "HALTPOLL_EMU_DIR": directory}
    # stderr to a file: a pipe nobody drains could block a chatty daemon and hang the test.
    err = open(os.path.join(directory, "serve.err"), "w+")
    proc = subprocess.Popen([*HOSTD, "serve", *extra], env=env, stdout=subprocess.PIPE, stderr=err,
                            text=True, start_new_session=True)
    children: set[int] = set()
    d = None
    try:
        endpoint = metrics = None
        deadline = time.monotonic() + 30
        while endpoint is None or ("--metrics" in extra and metrics is None):
            line = proc.stdout.readline()
            if not line:
                err.seek(0)
                raise AssertionError(f"hostd serve exited early: {proc.wait()} {err.read()}")
            if "control socket" in line:
                endpoint = line.split()[-1]
            if "metrics at" in line:
                metrics = line.split()[-1]
            assert time.monotonic() < deadline
        d = ServeDaemon(directory, proc, endpoint, metrics, err)
        yield d
    finally:
        if d is not None:
            children = d.all_pids()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()
        err.close()
        for pid in children:  # belt and braces: nothing of ours may survive a failed test
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        for name in os.listdir("/dev/shm"):
            if name.startswith(f"hpemu.{proc.pid}."):
                os.unlink(os.path.join("/dev/shm", name))
        shutil.rmtree(directory, ignore_errors=True)


def _wait(pred, timeout: float = 20.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _vcpu_sum(snap: dict, vm: str, key: str) -> int:
    v = next(x for x in snap["vms"] if x["id"] == vm)
    return sum(c["counters"][key] for c in v["vcpus"])


def _delta(d: ServeDaemon, vm: str, seconds: float, *more: str) -> dict[str, int]:
    """The VM's halt counters over `seconds`, and `more` of them (the kernel has no halt_poll_preempted)."""
    a = d.call("stats", vm=vm)
    time.sleep(seconds)
    b = d.call("stats", vm=vm)
    return {k: _vcpu_sum(b, vm, k) - _vcpu_sum(a, vm, k)
            for k in ("halt_exits", "halt_successful_poll", "halt_attempted_poll", *more)}


def test_end_to_end_launch_set_stop_shutdown():
    with serve_daemon() as d:
        timer = d.launch("--workload", "timer", "--policy", "fixed", "--halt-poll-ns", "0")
        idle = d.launch("--workload", "idle", "--policy", "adaptive", "--vcpus", "2", "--tick-hz", "20")
        assert timer != idle
        ps = json.loads(d.hostd("ps", "--json").stdout)
        assert [v["id"] for v in ps["vms"]] == [timer, idle], d.stderr()
        pids = {vm["id"]: [vm["device"]["pid"]] + [v["pid"] for v in vm["vcpu"]] for vm in ps["vms"]}
        assert all(_alive(p) for ps_ in pids.values() for p in ps_)

        # halt_poll_ns = 0: every halt blocks.
        before = _delta(d, timer, 1.0)
        assert before["halt_exits"] > 50, before
        assert before["halt_successful_poll"] == 0 and before["halt_attempted_poll"] == 0, before

        # Live: a 2 ms budget covers the 500 us timer, so most halts now end inside the poll.
        r = d.hostd("set", timer, "halt_poll_ns=2000000")
        assert r.returncode == 0, r.stderr
        time.sleep(0.3)
        after = _delta(d, timer, 1.5, "halt_poll_preempted")
        assert after["halt_exits"] > 50, after
        assert after["halt_attempted_poll"] > 0.9 * after["halt_exits"], after  # every halt now polls
        # ... and the budget is the one set: it outlasts every deadline, so a poll ends in its
        # interrupt or, where another task is runnable on the CPU, gives way to it (as the
        # kernel's does), never by running out. Alone ~98% succeed; beside a 60% load on both
        # cores (stress-ng) 5%, the rest gave way.
        assert after["halt_successful_poll"] + after["halt_poll_preempted"] >= 0.9 * after["halt_attempted_poll"], after
        assert after["halt_successful_poll"] > 0, after
        # The other VM was not touched.
        ps = d.call("ps")
        assert next(v for v in ps["vms"] if v["id"] == idle)["params"]["halt_poll_ns"] == 200000
        assert next(v for v in ps["vms"] if v["id"] == timer)["params"]["halt_poll_ns"] == 2000000

        # Stop one: its final report, its processes gone, the other still running.
        r = d.hostd("stop", idle, "--json")
        # Exit 1 would be a failed end-of-run check (the core's invariants, tested in its own
        # tests); the service's part is that the report arrives whole.
        assert r.returncode in (0, 1) and r.stdout, (r.returncode, r.stderr, d.stderr())
        result = json.loads(r.stdout)
        assert result["checks"]["exactly_once"], (result["checks"], r.stderr)
        assert len(result["vcpus"]) == 2
        assert _wait(lambda: not any(_alive(p) for p in pids[idle]))
        assert all(_alive(p) for p in pids[timer])
        ps = d.call("ps")
        assert [v["id"] for v in ps["vms"]] == [timer]
        assert ps["ended"][-1]["id"] == idle and ps["ended"][-1]["state"] == "stopped"

        # Shutdown: the daemon stops the rest and exits; nothing is left.
        children = d.all_pids()
        r = d.hostd("shutdown")
        assert r.returncode == 0, r.stderr
        assert d.proc.wait(30) == 0
        # (the resource tracker multiprocessing started for the segment exits just after hostd)
        assert _wait(lambda: not any(_alive(p) for p in children | set(pids[timer])))
        assert d.segments() == []
        assert not os.path.exists(d.endpoint[len("ipc://"):])


@pytest.fixture(scope="module")
def shared():
    with serve_daemon("--metrics", "127.0.0.1:0") as d:
        d.launch("--workload", "idle", "--policy", "adaptive", "--tick-hz", "50")
        yield d


def test_stat_once(shared):
    r = shared.hostd("stat", "-1", "-i", "0.3")
    assert r.returncode == 0, r.stderr
    assert "vm0" in r.stdout and "halt_exits" in r.stdout and "halt_successful_poll" in r.stdout
    assert "host CPU" in r.stdout and "vcpu0" in r.stdout
    r = shared.hostd("stat", "-1", "-i", "0.3", "-f", "^halt_exits$")
    assert "halt_exits" in r.stdout and "halt_wakeup" not in r.stdout
    # The live view without a terminal: one table per interval, -n stops it.
    r = shared.hostd("stat", "-i", "0.2", "-n", "1")
    assert r.returncode == 0 and r.stdout.count("hostd stat ") == 2, r.stdout


def test_stat_log_and_json(shared):
    r = shared.hostd("stat", "-l", "-i", "0.3", "-n", "3", "-f", "halt_exits|halt_poll_ns$")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4, r.stdout
    assert "vm0:halt_exits" in lines[0] and "vm0:halt_poll_ns" in lines[0]
    assert all(len(ln.split()) == len(lines[0].split()) for ln in lines[1:])
    r = shared.hostd("stat", "--json", "-i", "0.3")
    snap = json.loads(r.stdout)
    vm = snap["vms"][0]
    assert vm["id"] == "vm0" and vm["rates"]["halt_exits"] is not None
    assert vm["vcpus"][0]["cpu_frac"] is not None
    assert set(vm["totals"]) >= {"halt_exits", "halt_attempted_poll", "halt_successful_poll", "halt_poll_invalid",
                                 "halt_wakeup", "halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns",
                                 "halt_poll_ns", "irq_injected", "irq_delivered", "irq_coalesced",
                                 "spurious_wakeup", "lost_wakeup"}


def test_stat_once_json_is_one_snapshot(shared):
    # --json already means one snapshot; `-1 --json` is what a kvm_stat user types.
    r = shared.hostd("stat", "-1", "--json", "-i", "0.3")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["vms"][0]["totals"]["halt_wait_ns"] >= 0  # KVM's names, ns
    r = shared.hostd("stat", "-l", "--json")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--json" in r.stderr, r.stderr


def test_prometheus_endpoint_parses(shared):
    from prometheus_client.parser import text_string_to_metric_families

    assert shared.metrics.startswith("http://127.0.0.1:")
    time.sleep(1.2)  # the served snapshot is refreshed every second
    text = urllib.request.urlopen(shared.metrics, timeout=10).read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    exits = fams["haltpoll_emu_halt_exits"]
    assert exits.type == "counter"
    sample = next(s for s in exits.samples if s.labels == {"vm": "vm0", "vcpu": "0"})
    assert sample.value > 0
    assert fams["haltpoll_emu_halt_poll_seconds"].type == "gauge"
    hist = fams["haltpoll_emu_halt_wait_duration_seconds"]
    assert hist.type == "histogram"
    inf = next(s for s in hist.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf")
    assert inf.value > 0
    assert fams["haltpoll_emu_vcpu_cpu_seconds"].samples[0].value > 0


def test_client_errors_are_one_line(shared):
    r = shared.hostd("set", "vm0", "bogus=1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "bogus" in r.stderr
    r = shared.hostd("set", "vm42", "halt_poll_ns=1")
    assert r.returncode == 2 and "no VM 'vm42'" in r.stderr
    r = shared.hostd("set", "vm0", "tick_hz=nan")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = shared.hostd("launch", "--vcpus", "0")
    assert r.returncode == 2 and "--vcpus" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*HOSTD, "ps"], env={**os.environ, "HALTPOLL_EMU_DIR": "/nonexistent/hpe"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "hostd serve" in r.stderr


def test_child_death_stops_only_that_vm(shared):
    victim = shared.launch("--workload", "timer", "--policy", "none")
    ps = shared.call("ps")
    vm = next(v for v in ps["vms"] if v["id"] == victim)
    pids = [vm["device"]["pid"]] + [v["pid"] for v in vm["vcpu"]]
    os.kill(vm["vcpu"][0]["pid"], signal.SIGKILL)
    assert _wait(lambda: victim not in [v["id"] for v in shared.call("ps")["vms"]])
    ended = next(e for e in shared.call("ps")["ended"] if e["id"] == victim)
    assert ended["state"] == "died" and "vcpu0" in ended["reason"] and "SIGKILL" in ended["reason"]
    assert _wait(lambda: not any(_alive(p) for p in pids))
    assert [v["id"] for v in shared.call("ps")["vms"]] == ["vm0"]
    assert shared.proc.poll() is None
    with pytest.raises(Exception, match="no longer running"):
        shared.call("stop", vm=victim)


def test_sigterm_stops_every_vm():
    with serve_daemon() as d:
        d.launch("--workload", "timer", "--policy", "fixed", "--halt-poll-ns", "100000")
        d.launch("--workload", "idle", "--policy", "none")
        children = d.all_pids()
        assert len(children) >= 4
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(30) == 0
        err = d.stderr()
        assert "vm0: stopped" in err and "vm1: stopped" in err, err
        assert _wait(lambda: not any(_alive(p) for p in children))
        assert d.segments() == []


def test_second_daemon_refused(shared):
    r = subprocess.run([*HOSTD, "serve"], env=shared.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "already serves" in r.stderr


def test_remote_bind_refused(tmp_path):
    env = {**os.environ, "HALTPOLL_EMU_DIR": str(tmp_path)}
    r = subprocess.run([*HOSTD, "serve", "--bind", "tcp://0.0.0.0:5999"], capture_output=True, text=True, timeout=30,
                       env=env)
    assert r.returncode == 2 and "loopback" in r.stderr
    r = subprocess.run([*HOSTD, "serve", "--metrics", "10.1.2.3:9100"], capture_output=True, text=True, timeout=30,
                       env=env)
    assert r.returncode == 2 and "loopback" in r.stderr
