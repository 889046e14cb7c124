"""The io workload's file: by default on a disk-backed filesystem (a real synchronous write), in a
private directory removed on every exit path; --io-file on tmpfs is warned about, an unwritable one
refused before anything starts."""
import json
import os
import signal
import stat
import time
import uuid

import psutil
import pytest

from tests.conftest import segments_of
from hostd.plumbing import spec as spec_mod
from hostd.plumbing.errors import UsageError
from irqsrc.sources import BLOCK, IO_SPAN, WriteDevice, io_base_dir
from vcpu import abi

IO = ("run", "--workload", "io", "--vcpus", "1")
WARNING = "which ignores O_DSYNC: the writes measure memory, not a disk"


def io_dirs(owner: int) -> list[str]:
    """The default io directories (and run dirs, were they there) of one hostd in the io base dir."""
    base = io_base_dir()
    return [os.path.join(base, n) for n in os.listdir(base) if abi.run_dir_owner(n) == owner]


def wait_for_io_dir(hostd, p, timeout=15.0) -> str:
    """The running hostd's default io directory, once the device has opened its file there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hostd.watch_children(p)
        found = [d for d in io_dirs(p.pid) if os.path.exists(os.path.join(d, "disk.img"))]
        if found:
            return found[0]
        assert p.poll() is None, p.communicate()[1]
        time.sleep(0.05)
    raise AssertionError("no default io file appeared")


def wait_for_vcpus(hostd, p, n, timeout=15.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in hostd.watch_children(p) if k.name().startswith("vm0/")]
        if len(kids) == n + 1:
            time.sleep(0.3)  # let the run get going
            return kids
        time.sleep(0.05)
    raise AssertionError("VM did not start")


# --- units ------------------------------------------------------------------------------------

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
30 25 0:27 / /dev/shm rw,relatime - ramfs ramfs rw
40 27 0:40 / /var/tmp rw,relatime shared:5 master:1 - xfs /dev/vdb rw
41 27 0:41 / /mnt/my\\040disk rw,relatime - btrfs /dev/vdc rw
42 27 0:42 / /var/tmpfoo rw,relatime - tmpfs tmpfs rw
"""


def test_fs_type_takes_the_longest_mount_point_and_the_last_of_stacked_mounts(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    fs = lambda p: spec_mod.fs_type(p, str(mi))  # noqa: E731
    assert fs("/") == "ext4"
    assert fs("/var/tmp") == "xfs"
    assert fs("/var/tmp/hpemu-vm0-1-x/disk.img") == "xfs"  # need not exist
    assert fs("/var/tmpfoo/x") == "tmpfs"  # a prefix of a name is not a parent directory
    assert fs("/var/tmpf") == "ext4"
    assert fs("/dev/shm/x") == "ramfs"  # mounted over the tmpfs: the last one is what a path reaches
    assert fs("/mnt/my disk/f") == "btrfs"  # mountinfo's octal escapes
    assert spec_mod.fs_type("/", str(tmp_path / "missing")) is None


def test_check_io_file_leaves_no_file_behind_and_keeps_an_existing_one(tmp_path):
    new = tmp_path / "new.img"
    spec_mod.check_io_file(str(new))
    assert not new.exists()
    old = tmp_path / "old.img"
    old.write_bytes(b"keep me")
    spec_mod.check_io_file(str(old))
    assert old.read_bytes() == b"keep me"
    for bad in (tmp_path, tmp_path / "missing" / "x", old / "x"):
        with pytest.raises(UsageError, match="--io-file"):
            spec_mod.check_io_file(str(bad))
    assert sorted(os.listdir(tmp_path)) == ["old.img"]


def test_the_file_is_allocated_before_the_first_write_and_never_extended(tmp_path):
    """Every measured write overwrites, as a VMM's to its disk image: an extending write would wait
    for the file's new size and blocks to be written too, and the first IO_SPAN writes of every run
    would be that."""
    path = str(tmp_path / "disk.img")
    dev = WriteDevice(path, None)
    try:
        st = os.stat(path)
        assert st.st_size == BLOCK * IO_SPAN and st.st_blocks * 512 >= BLOCK * IO_SPAN, st
        for _ in range(2 * IO_SPAN):
            assert dev.write() > 0
        assert os.stat(path).st_size == BLOCK * IO_SPAN
    finally:
        dev.close()


def test_a_tmpfs_default_directory_is_warned_about_once(monkeypatch, capsys):
    monkeypatch.setattr(spec_mod, "_warned", set())
    monkeypatch.setattr(spec_mod, "fs_type", lambda path, mountinfo=None: "tmpfs")
    for _ in range(3):
        assert spec_mod.default_io_dir() == io_base_dir()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("hostd: warning: the default io file's directory")
    assert WARNING in err[0]


def test_the_default_directory_falls_back_to_tempfiles_when_not_writable(monkeypatch, tmp_path):
    import irqsrc.sources as sources

    monkeypatch.setattr(sources, "IO_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(sources.tempfile, "tempdir", None)  # tempfile caches its choice
    assert sources.io_base_dir() == str(tmp_path)


# --- end to end ---------------------------------------------------------------------------------

def test_default_run_writes_on_the_disk_backed_dir_and_leaves_nothing(hostd):
    p = hostd.popen(*IO, "--duration", "1.5", "--json")
    d = wait_for_io_dir(hostd, p)
    assert os.path.dirname(d) == io_base_dir()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    r = json.loads(out)
    io = r["spec"]["io"]
    assert io["file"] == "(temp file)"
    assert io["dir"] == io_base_dir() and io["fs"] == spec_mod.fs_type(io_base_dir())
    assert r["workload"]["writes"] > 0
    assert not io_dirs(p.pid), "the default io directory outlived the run"
    volatile = spec_mod.fs_type(io_base_dir()) in spec_mod.VOLATILE_FS
    assert sum(WARNING in line for line in err.splitlines()) == (1 if volatile else 0), err


def test_io_file_on_tmpfs_is_one_warning_and_the_run_goes_on(hostd):
    if spec_mod.fs_type("/dev/shm") != "tmpfs":
        pytest.skip("/dev/shm is not tmpfs here")
    path = f"/dev/shm/haltpoll-io-test-{uuid.uuid4().hex}.img"
    try:
        r = hostd.run(*IO, "--duration", "0.5", "--io-file", path, "--json")
        assert r.returncode == 0, r.stderr
        lines = [line for line in r.stderr.splitlines() if "warning" in line]
        assert lines == [f"hostd: warning: --io-file {path} is on tmpfs, {WARNING}"]
        io = json.loads(r.stdout)["spec"]["io"]
        assert io["file"] == path and io["fs"] == "tmpfs" and io["dir"] == "/dev/shm"
    finally:
        if os.path.exists(path):
            os.unlink(path)


@pytest.mark.parametrize("kind", ["missing-dir", "directory", "under-a-file"])
def test_unwritable_io_file_is_one_line_exit_2_and_nothing_starts(hostd, tmp_path, kind):
    (tmp_path / "a-file").write_text("")
    path = {"missing-dir": "/nonexistent-dir/x", "directory": str(tmp_path),
            "under-a-file": str(tmp_path / "a-file" / "x")}[kind]
    p = hostd.popen(*IO, "--duration", "30", "--io-file", path)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--io-file" in lines[0], err
    assert "Traceback" not in err and out == ""
    assert not segments_of({p.pid})
    assert not io_dirs(p.pid)
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


def test_a_refused_run_leaves_no_io_file_its_check_created(hostd, tmp_path):
    path = tmp_path / "new.img"
    r = hostd.run(*IO, "--io-file", str(path), "--duration", "0")  # the io file passes, --duration does not
    assert r.returncode == 2 and "--duration" in r.stderr
    assert not path.exists()


def test_ctrl_c_removes_the_default_io_directory(hostd):
    p = hostd.popen(*IO, "--duration", "30")
    wait_for_io_dir(hostd, p)
    wait_for_vcpus(hostd, p, 1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert not io_dirs(p.pid)


def test_a_dead_device_still_removes_the_default_io_directory(hostd):
    p = hostd.popen(*IO, "--duration", "30")
    wait_for_io_dir(hostd, p)
    kids = {k.name(): k for k in wait_for_vcpus(hostd, p, 1)}
    kids["vm0/irqsrc"].kill()
    out, err = p.communicate(timeout=30)
    assert p.returncode != 0 and "irqsrc" in err
    assert not io_dirs(p.pid)


def test_sigkill_of_hostd_leaves_the_io_directory_to_the_orphan_sweep(hostd):
    p = hostd.popen(*IO, "--duration", "30")
    d = wait_for_io_dir(hostd, p)
    kids = wait_for_vcpus(hostd, p, 1)
    p.kill()
    p.communicate()
    gone, alive = psutil.wait_procs(kids, timeout=5)
    assert not alive, "children outlived a SIGKILLed hostd"
    assert os.path.isdir(d), "the killed run's io directory should still be there"
    r = hostd.run("run", "--workload", "idle", "--duration", "0.3")  # any hostd start sweeps
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(d)
    assert not io_dirs(p.pid)
