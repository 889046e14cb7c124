"""`hostd record` against the real tracefs: it refuses without root, and on every exit path (the
end of --duration, Ctrl-C, SIGTERM, an error, a kill -9 followed by the next run) leaves tracing
exactly as it found it, including somebody else's tracing running at the same time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostd.trace import recording
from hostd.trace.parse import RECORD_HEADER
from tests.conftest import stop_gently
from vcpu.kvm.tracefs import MOUNT_POINT, mount, mount_point, unmount

ROOT = Path(__file__).resolve().parent.parent
EVENTS = recording.EVENTS
USER_INSTANCE = "hpemu-test-user"  # stands for another tool's tracing, which must survive


_started: list[subprocess.Popen] = []


def hostd_record(*argv: str, **kw) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "hostd", "record", *argv], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    _started.append(p)
    return p


@pytest.fixture(autouse=True)
def _no_recorder_outlives_its_test():
    """A failing test must not leave a recorder running with its tracepoints on: Ctrl-C it (its
    clean way out), then kill."""
    yield
    while _started:
        stop_gently(_started.pop(), 20)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: tracefs and the kvm tracepoints are root's")


@pytest.fixture
def tracefs():
    """tracefs mounted for the test (and unmounted after if the test mounted it), with the kvm
    tracepoints present; skips saying why where not."""
    needs_root()
    root = mount_point()
    mounted = root is None
    if mounted:
        try:
            mount()
        except Exception as exc:  # noqa: BLE001 - the reason is the skip message
            pytest.skip(f"cannot mount tracefs: {exc}")
        root = MOUNT_POINT
    try:
        if not all(os.path.isdir(f"{root}/events/{e}") for e in EVENTS):
            pytest.skip("the kvm module is not loaded: no kvm tracepoints")
        yield root
    finally:
        if mounted:
            unmount()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value + "\n")


def snapshot(root: str) -> dict:
    """Every setting hostd record could touch, top level and in the user's instance."""
    files = ["tracing_on", "current_tracer", "buffer_size_kb", "set_event"]
    files += [f"events/{e}/{f}" for e in EVENTS for f in ("enable", "filter")]
    snap = {f: _read(f"{root}/{f}") for f in files}
    # Other sessions' instances (the kvm backend keeps one per traced vCPU) come and go on their own.
    snap["instances"] = sorted(n for n in os.listdir(f"{root}/instances")
                               if n.startswith(recording.INSTANCE_PREFIX) or n == USER_INSTANCE)
    user = f"{root}/instances/{USER_INSTANCE}"
    if os.path.isdir(user):
        snap["user"] = {f: _read(f"{user}/{f}") for f in ("tracing_on", "set_event",
                                                             f"events/{EVENTS[0]}/filter")}
    return snap


@pytest.fixture
def users_tracing(tracefs):
    """Someone else's tracing, at the top level and in an instance of theirs, for the test's length."""
    root = tracefs
    user = f"{root}/instances/{USER_INSTANCE}"
    os.mkdir(user)
    _write(f"{user}/events/{EVENTS[0]}/filter", "ns > 1000")
    _write(f"{user}/events/{EVENTS[0]}/enable", "1")
    _write(f"{root}/events/sched/sched_process_exec/enable", "1")
    _write(f"{root}/events/{EVENTS[0]}/filter", "common_pid == 1")
    try:
        yield root
    finally:
        _write(f"{user}/events/{EVENTS[0]}/enable", "0")
        os.rmdir(user)
        _write(f"{root}/events/sched/sched_process_exec/enable", "0")
        _write(f"{root}/events/{EVENTS[0]}/filter", "0")


def _wait_recording(root: str, p: subprocess.Popen, instance: bool = True) -> str:
    """Until the recorder has its events switched on; returns the directory it records in."""
    base = f"{root}/instances/{recording.INSTANCE_PREFIX}{p.pid}" if instance else root
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if all(_read(f"{base}/events/{e}/enable") == "1" for e in EVENTS) and _read(f"{base}/tracing_on") == "1":
                return base
        except OSError:
            pass
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    raise AssertionError("hostd record never switched its events on")


def test_refuses_without_root_in_one_line(tmp_path):
    out = tmp_path / "t.txt"
    # As root, give up the effective uid once everything is imported (the interpreter may live
    # where nobody can read it); the check is on the effective uid, as the kernel's is.
    code = ("import os, sys\nfrom hostd import cli\ncli.build_parser()\n"
            "if os.geteuid() == 0:\n    os.setegid(65534)\n    os.seteuid(65534)\n"
            f"sys.exit(cli.main(['record', {str(out)!r}, '--duration', '1']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("hostd: error: hostd record needs root (tracefs and the kvm tracepoints are root's); "
                        "run it with sudo\n")
    assert not out.exists()


def test_a_recording_restores_everything_and_others_tracing_goes_on(users_tracing, tmp_path):
    root = users_tracing
    before = snapshot(root)
    out = tmp_path / "t.txt"
    p = hostd_record(str(out), "--duration", "1")
    base = _wait_recording(root, p)
    assert base != root and snapshot(root)["user"] == before["user"]  # ours is apart from theirs
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr
    assert "-> " + str(out) in stderr and stderr.count("\n") == 1
    assert snapshot(root) == before
    assert _read(f"{root}/events/sched/sched_process_exec/enable") == "1"  # theirs still on
    assert out.read_text().startswith(RECORD_HEADER)


@pytest.mark.parametrize("sig, rc, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_stop_early_and_restore(users_tracing, tmp_path, sig, rc, word):
    root = users_tracing
    before = snapshot(root)
    out = tmp_path / "t.txt"
    p = hostd_record(str(out), "--duration", "60")
    _wait_recording(root, p)
    p.send_signal(sig)
    _, stderr = p.communicate(timeout=30)
    assert p.returncode == rc, stderr
    assert f"hostd record: {word} after" in stderr and "(tracing restored)" in stderr and "Traceback" not in stderr
    assert snapshot(root) == before
    assert out.read_text().startswith(RECORD_HEADER)


def test_an_error_while_recording_restores_and_says_so_in_one_line(users_tracing):
    root = users_tracing
    before = snapshot(root)
    p = hostd_record("/dev/full", "--duration", "1")  # every write fails: disk full
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 2
    assert stderr == "hostd: error: recording into /dev/full failed: No space left on device (tracing restored)\n"
    assert snapshot(root) == before


def test_no_instance_saves_and_restores_the_top_level_settings(users_tracing, tmp_path):
    root = users_tracing
    before = snapshot(root)
    p = hostd_record(str(tmp_path / "t.txt"), "--duration", "30", "--no-instance", "--pid", str(os.getpid()),
                     "--buffer-kb", "2048")
    _wait_recording(root, p, instance=False)
    during = snapshot(root)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{os.getpid()}/task"))
    assert during[f"events/{EVENTS[0]}/filter"] == " || ".join(f"common_pid == {t}" for t in tids)
    assert int(during["buffer_size_kb"]) >= 2048  # the kernel rounds up to whole pages
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=30)
    assert p.returncode == 130, stderr
    assert snapshot(root) == before  # the user's top-level filter is back


def test_a_pid_filter_names_each_thread_of_a_process(tracefs, tmp_path):
    root = tracefs
    p = hostd_record(str(tmp_path / "t.txt"), "--duration", "30", "--pid", str(os.getpid()))
    base = _wait_recording(root, p)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{os.getpid()}/task"))
    for e in EVENTS:
        assert _read(f"{base}/events/{e}/filter") == " || ".join(f"common_pid == {t}" for t in tids)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    assert not os.path.exists(base)


def test_bad_arguments_are_refused_before_tracing_is_touched(tracefs, tmp_path):
    before = snapshot(tracefs)
    for argv, words in [(["--pid", "999999999"], "--pid: no process or thread 999999999"),
                        (["--pid", "x"], "--pid: expected PID"),
                        (["--duration", "0"], "--duration: must be a number of seconds > 0"),
                        (["--buffer-kb", "-5"], "--buffer-kb: must be a whole number > 0")]:
        p = hostd_record(str(tmp_path / "t.txt"), *argv)
        _, stderr = p.communicate(timeout=60)
        assert p.returncode == 2 and words in stderr and stderr.count("\n") == 1, stderr
    p = hostd_record(str(tmp_path / "no" / "t.txt"))
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 2 and "cannot write" in stderr
    assert snapshot(tracefs) == before


def test_a_killed_recorders_instance_is_removed_by_the_next_run(tracefs, tmp_path):
    """kill -9 skips every cleanup and leaves the instance with its events on; the next hostd
    record removes instances whose recorder is gone."""
    root = tracefs
    before = snapshot(root)
    p = hostd_record(str(tmp_path / "a.txt"), "--duration", "60")
    base = _wait_recording(root, p)
    p.kill()
    p.communicate(timeout=30)
    assert os.path.isdir(base)
    q = hostd_record(str(tmp_path / "b.txt"), "--duration", "0.5")
    _, stderr = q.communicate(timeout=60)
    assert q.returncode == 0, stderr
    assert not os.path.exists(base) and snapshot(root) == before


def test_tracefs_is_mounted_for_the_recording_and_unmounted_after(tmp_path):
    needs_root()
    if mount_point() is not None:
        pytest.skip("tracefs is already mounted here; the mount-and-unmount path runs where it is not")
    out = tmp_path / "t.txt"
    p = hostd_record(str(out), "--duration", "0.5")
    _, stderr = p.communicate(timeout=60)
    if p.returncode == 2 and "kvm tracepoints are not in tracefs" in stderr:
        pytest.skip("the kvm module is not loaded: no kvm tracepoints")
    assert p.returncode == 0, stderr
    assert mount_point() is None
    assert out.read_text().startswith(RECORD_HEADER)
