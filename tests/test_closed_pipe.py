"""`hostd ... | head`: every sub-command ends quietly when its reader goes, with exit 141 (128 +
SIGPIPE, what `git log | head` gives under pipefail), no traceback, and nothing left running.

The reader either closes its end before hostd writes at all (output that fits in one write) or
after the first bytes of a pipe shrunk to one page (output that keeps coming: a long print,
progress lines, stat's refreshes), so every case breaks the pipe for certain, never by a race."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import psutil

from hostd.service.control import SOCKET_NAME
from tests.conftest import ROOT
from tests import test_record as record_tests
from tests.test_serve import serve_daemon

tracefs = record_tests.tracefs  # the fixture: mounted, with the kvm tracepoints, or a skip saying why

EXIT_SIGPIPE = 141
PAGE = 4096


def closed_pipe(hostd, *args: str, first: bool, both: bool = False, env: dict | None = None,
                timeout: float = 60) -> tuple[int, str, str]:
    """Run hostd with stdout (and stderr too if both) a pipe whose reader closes it: before hostd
    starts, or once it has read the first bytes (first). Returns the exit code, what was read and
    stderr (empty if both). Every child hostd had on the way is given to the fixture's check."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PAGE)
    if not first:
        os.close(r)
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "hostd", *args], cwd=ROOT, stdout=w,
                             stderr=w if both else err, env=env)
        hostd.procs.append(p)
        hostd.seen.add(p.pid)
        os.close(w)
        watcher = threading.Thread(target=_watch, args=(hostd, p), daemon=True)
        watcher.start()
        read = ""
        if first:
            read = os.read(r, 64).decode(errors="replace")
            os.close(r)
        p.wait(timeout)
        watcher.join()
        err.seek(0)
        return p.returncode, read, err.read()


def _watch(hostd, p: subprocess.Popen) -> None:
    """Note every descendant while p runs: the fixture then proves none outlived it."""
    while p.poll() is None:
        try:
            hostd.seen.update(k.pid for k in psutil.Process(p.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)


def assert_quiet(rc: int, err: str) -> None:
    assert rc == EXIT_SIGPIPE, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_version(hostd):
    r = hostd.run("--version")
    assert r.returncode == 0
    assert r.stdout == f"haltpoll-emu {metadata.version('haltpoll-emu')} (results format version 1)\n"
    assert_quiet(*closed_pipe(hostd, "--version", first=False)[::2])


def test_run(hostd):
    for json in ((), ("--json",)):
        assert_quiet(*closed_pipe(hostd, "run", "--duration", "0.3", *json, first=False)[::2])


def test_replay(hostd, tmp_path):
    halts = tmp_path / "halts"
    halts.write_text("".join(f"{20_000 + 7 * i % 300_000}\n" for i in range(20_000)))
    rc, read, err = closed_pipe(hostd, "replay", "--halts", str(halts), "--json", first=True)
    assert read.startswith("[{")
    assert_quiet(rc, err)
    assert_quiet(*closed_pipe(hostd, "replay", "--halts", str(halts), first=False)[::2])


TUNE = ("tune", "--workload", "timer", "--points", "3", "--range", "10us:100us", "--duration", "0.2",
        "--max-duration", "0.2")


def test_tune(hostd, tmp_path):
    rc, _, err = closed_pipe(hostd, *TUNE, "--json", "--out", str(tmp_path), first=False)
    assert_quiet(rc, err)
    assert (tmp_path / "tune.json").exists()  # written before the report met the closed pipe
    # progress on stderr, read by the same `2>&1 | head -1`: the sweep ends at the next line
    rc, read, _ = closed_pipe(hostd, *TUNE, first=True, both=True)
    assert rc == EXIT_SIGPIPE and read


def test_tune_text(hostd):
    """The report goes through rich, whose own answer to a closed pipe would be exit 1."""
    assert_quiet(*closed_pipe(hostd, *TUNE, first=False)[::2])


def test_show(hostd):
    """A saved comparison shown again: its tables are far more than the pipe holds."""
    assert_quiet(*closed_pipe(hostd, "show", str(Path(ROOT, "tests", "data", "show", "compare_both")),
                              first=False)[::2])


def test_compare(hostd, tmp_path):
    """A whole compare takes a minute; its first progress lines come within seconds: `2>&1 | head -1`."""
    out = tmp_path / "out"
    rc, read, _ = closed_pipe(hostd, "compare", "--quick", "--out", str(out), first=True, both=True)
    assert rc == EXIT_SIGPIPE and read
    assert not out.exists()  # ended mid-measurement: nothing written, not even the folder


def test_calibrate(hostd, kvm, tmp_path):
    """Its progress, a line per probe on stderr: `2>&1 | head -1` ends it at the second probe's line."""
    rc, read, _ = closed_pipe(hostd, "calibrate", "--out", str(tmp_path / "p.json"), "--seconds", "0.1",
                              "--repeat", "1", "--json", first=True, both=True)
    assert rc == EXIT_SIGPIPE and read.startswith("hostd: calibrate [1/")
    assert not (tmp_path / "p.json").exists()


def test_record(hostd, tracefs, tmp_path):
    """record prints only to stderr, its summary once tracing is restored."""
    before = record_tests.snapshot(tracefs)
    rc, _, _ = closed_pipe(hostd, "record", str(tmp_path / "t.txt"), "--duration", "0.2", first=False, both=True)
    assert rc == EXIT_SIGPIPE
    assert record_tests.snapshot(tracefs) == before


def test_service_clients(hostd):
    """launch, ps, set, stop, stat (-1, --json, -l and the refreshing view) and shutdown against one daemon."""
    with serve_daemon() as d:
        env = d.env
        rc, _, err = closed_pipe(hostd, "launch", "--workload", "timer", "--halt-poll-ns", "0", first=False, env=env)
        assert_quiet(rc, err)
        vm = d.call("ps")["vms"][0]["id"]
        for args in (("ps",), ("ps", "--json"), ("set", vm, "halt_poll_ns=1000"), ("stat", "-1", "-i", "0.1"),
                     ("stat", "--json", "-i", "0.1")):
            assert_quiet(*closed_pipe(hostd, *args, first=False, env=env)[::2])
        for args in (("stat", "-l", "-i", "0.1"), ("stat", "-i", "0.1")):  # refreshing: the second write breaks
            rc, read, err = closed_pipe(hostd, *args, first=True, env=env)
            assert read
            assert_quiet(rc, err)
        assert_quiet(*closed_pipe(hostd, "stop", vm, first=False, env=env)[::2])
        assert not d.call("ps")["vms"]
        assert_quiet(*closed_pipe(hostd, "shutdown", first=False, both=True, env=env)[::2])
        d.proc.wait(30)


def test_serve(hostd, tmp_path):
    """`hostd serve 2>&1 | head -1`: the daemon's next log line meets the closed pipe; it ends as
    on SIGTERM, its VM stopped and removed."""
    env = {**os.environ, "HALTPOLL_EMU_DIR": str(tmp_path)}
    result = {}
    t = threading.Thread(target=lambda: result.update(
        zip(("rc", "read", "err"), closed_pipe(hostd, "serve", first=True, both=True, env=env))))
    t.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / SOCKET_NAME).exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    launch = subprocess.run([sys.executable, "-m", "hostd", "launch", "--workload", "timer", "--timeout", "10"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    t.join(30)
    assert result["rc"] == EXIT_SIGPIPE, result
    assert "control socket" in result["read"]
    assert "gone away" in launch.stderr, launch.stderr  # it died logging the launch: not refused before
    assert len(hostd.seen) > 1  # the VM's processes were seen; the fixture proves them gone
