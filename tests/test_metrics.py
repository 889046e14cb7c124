"""`/metrics` speaks Prometheus: `promtool` finds nothing to flag, and a real Prometheus server
scraping a running daemon agrees with `hostd stat --json`, using the README's own snippet and queries.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from decimal import Decimal

import pytest

from hostd.service.daemon import SNAPSHOT_S
from hostd.service.metrics import BUCKET_LE
from tests.test_serve import serve_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_TARGET = "127.0.0.1:9477"  # the snippet's target, replaced by the test daemon's address
SCRAPE_S = 1.0


def _get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=10).read().decode()


def _track(hostd, d) -> None:
    """Hand the daemon and its VMs to the `hostd` fixture, which fails the test if any survives."""
    hostd.seen.update({d.pid, *d.all_pids()})


def test_bucket_bounds_are_the_kernels_log2_buckets_exactly():
    # Bucket b holds values up to 2^b - 1 ns (index = fls64); the last one catches the rest.
    assert BUCKET_LE[-1] == "+Inf"
    for b, le in enumerate(BUCKET_LE[:-1]):
        assert Decimal(le) * 10**9 == 2**b - 1, (b, le)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_finds_nothing_to_flag(hostd):
    with serve_daemon("--metrics", "127.0.0.1:0") as d:
        d.launch("--workload", "timer", "--policy", "fixed", "--halt-poll-ns", "200000")
        d.launch("--workload", "idle", "--policy", "guest-haltpoll")
        d.launch("--workload", "io", "--policy", "adaptive")
        _track(hostd, d)
        time.sleep(0.5)
        d.call("stats")  # refreshes the served snapshot: all three VMs, with counts
        text = _get(d.metrics)
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout + r.stderr) == (0, ""), r.stdout + r.stderr
    names = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    assert {"haltpoll_emu_halt_wait_seconds_total", "haltpoll_emu_halt_poll_seconds",
            "haltpoll_emu_halt_wait_duration_seconds", "haltpoll_emu_wake_latency_seconds"} <= names
    assert not [n for n in names if "_ns" in n]
    assert "# HELP haltpoll_emu_halt_wait_seconds_total time spent blocked in seconds; from KVM's halt_wait_ns" in text
    assert re.search(r'^haltpoll_emu_vm_param\{param="halt_poll_seconds",vm="vm0"\} 0\.0002$', text, re.M)
    assert re.search(r'^haltpoll_emu_halt_exits_total\{vcpu="0",vm="vm2"\} [1-9]', text, re.M)  # io VM: counts


def readme_prometheus() -> tuple[str, dict[str, str]]:
    """The scrape config and the {title: PromQL} queries of the README's "Service mode"."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("\n## Service mode\n", 1)[1].split("\n## ", 1)[0]
    config = re.search(r"^```yaml\n(.*?)^```", section, re.M | re.S).group(1)
    promql = re.search(r"^```promql\n(.*?)^```", section, re.M | re.S).group(1)
    queries = {}
    for chunk in promql.strip().split("\n\n"):
        title, _, expr = chunk.partition("\n")
        queries[title.lstrip("# ").split(":")[0]] = expr
    return config, queries


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prometheus_server(config: str):
    """The real Prometheus on a free loopback port, its data in a temporary directory that goes
    with it on every exit path."""
    directory = tempfile.mkdtemp(prefix="hpe-prom-")
    log = open(os.path.join(directory, "prometheus.log"), "w+")
    proc = None
    try:
        with open(os.path.join(directory, "prometheus.yml"), "w") as f:
            f.write(config)
        url = f"http://127.0.0.1:{_free_port()}"
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={directory}/prometheus.yml", f"--storage.tsdb.path={directory}/data",
             f"--web.listen-address={url[len('http://'):]}", "--log.level=warn"],
            stdout=log, stderr=log, start_new_session=True)

        def logged() -> str:
            log.seek(0)
            return log.read()[-2000:]

        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(url + "/-/ready", timeout=2).status == 200:
                    break
            assert proc.poll() is None, f"prometheus exited {proc.returncode}: {logged()}"
            assert time.monotonic() < deadline, f"prometheus not ready after 30 s: {logged()}"
            time.sleep(0.1)
        yield url, proc, logged
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def query(url: str, expr: str, at: float | None = None) -> list[dict]:
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    reply = json.loads(_get(f"{url}/api/v1/query?{urllib.parse.urlencode(params)}"))
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def scalar(url: str, expr: str, at: float | None = None) -> float:
    result = query(url, expr, at)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def _wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)")
def test_real_prometheus_scrapes_the_daemon(hostd):
    config, queries = readme_prometheus()
    assert set(queries) == {"successful-poll ratio per VM", "host CPU per vCPU", "wake-latency p99 per VM"}, queries
    assert README_TARGET in config
    with serve_daemon("--metrics", "127.0.0.1:0") as d:
        # The README's own example: a 2 ms budget on 500 us deadlines, so halts both poll and block.
        vm = d.launch("--workload", "timer", "--policy", "fixed", "--halt-poll-ns", "2000000")
        _track(hostd, d)
        target = urllib.parse.urlparse(d.metrics).netloc
        with prometheus_server(config.replace(README_TARGET, target)) as (url, proc, logged):
            hostd.seen.add(proc.pid)
            series = f'haltpoll_emu_halt_exits_total{{vm="{vm}"}}'
            _wait(lambda: query(url, series), 30, f"a first scrape ({logged()})")
            first = time.time()
            time.sleep(5)  # some history for the rates

            r = d.hostd("stat", "--json", "-i", "5")
            assert r.returncode == 0, r.stderr
            view = next(v for v in json.loads(r.stdout)["vms"] if v["id"] == vm)
            t = json.loads(r.stdout)["time"]  # the daemon's wall clock when it took the snapshot
            # Until Prometheus holds a sample at or after t, a query at t could miss the last one.
            _wait(lambda: scalar(url, f"timestamp({series})") >= t, 10, "a scrape after the stat snapshot")

            # The scrape Prometheus holds at t is at most one interval old and showed a snapshot
            # the daemon refreshes every SNAPSHOT_S: it may trail stat by that much (twice, for a
            # loaded 2-core machine). It leads stat only if a scrape that started before t was
            # answered after the daemon's next refresh: by much less than an interval.
            total, rate = view["totals"]["halt_exits"], view["rates"]["halt_exits"]
            exits = scalar(url, series, at=t)
            assert total - 2 * rate * (SCRAPE_S + SNAPSHOT_S) <= exits <= total + rate * SCRAPE_S, (exits, total, rate)

            # p50 over the last 10 s against stat's over its 5 s interval, for the histogram most
            # halts land in (how many polls succeed depends on the load on the machine). stat gives
            # the bucket's upper bound, Prometheus interpolates inside it; the windows differ, so
            # the neighbouring bucket is allowed too.
            hist = "halt_poll_success" if view["rates"]["halt_successful_poll"] >= view["rates"]["halt_wakeup"] \
                else "halt_wait"
            upper_ns = view["vcpus"][0]["hist_percentiles_ns"][hist]["interval"]["p50"]
            p50 = scalar(url, f"histogram_quantile(0.5, rate(haltpoll_emu_{hist}_duration_seconds_bucket"
                              f'{{vm="{vm}"}}[10s]))', at=t)
            assert upper_ns is not None and (upper_ns + 1) / 4 - 1 <= p50 * 1e9 <= 2 * upper_ns + 1, \
                (hist, p50, upper_ns)

            # The README's queries, as written there, each return a value. Their windows must be
            # full: rate() over a window longer than the series' history underestimates.
            window = max(int(w) for w in re.findall(r"\[(\d+)s\]", "".join(queries.values())))
            time.sleep(max(0.0, first + window + SCRAPE_S - time.time()))
            values = {}
            for title, expr in queries.items():
                result = query(url, expr)
                assert result and all(math.isfinite(float(x["value"][1])) for x in result), (title, result)
                values[title] = {x["metric"].get("vm", "") + x["metric"].get("vcpu", ""): float(x["value"][1])
                                 for x in result}
            print(f"\nhalt_exits: prometheus {exits:.0f}, stat {total} ({rate:.0f}/s); {hist} p50: prometheus "
                  f"{p50 * 1e6:.0f} us, stat < {(upper_ns + 1) / 1000:.0f} us; README queries: {values}")
            assert 0 <= values["successful-poll ratio per VM"][vm] <= 1
            # In cores, as stat's cpu_frac (over its own, shorter window: hence a factor 3 either way).
            cpu_frac = view["vcpus"][0]["cpu_frac"]
            assert cpu_frac / 3 <= values["host CPU per vCPU"][vm + "0"] <= 3 * cpu_frac, (values, cpu_frac)
            assert 0 < values["wake-latency p99 per VM"][vm] < 1
