"""`hostd calibrate` on real KVM: a profile the emulator can load, with the kernel's costs in order."""
import json
import os

from hostd.plumbing import calibration


def test_calibrate_writes_a_loadable_profile_of_this_machine(hostd, kvm, tmp_path):
    out = str(tmp_path / "cal.json")
    r = hostd.run("calibrate", "--out", out, "--seconds", "0.2", "--repeat", "1", "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    p = calibration.load(out)
    assert p.costs == doc["costs_ns"] and not p.derived and p.machine == calibration.this_machine()
    c = p.costs
    assert all(c[name] > 0 for name in ("vm_exit_ns", "submit_exit_ns", "poll_wake_ns", "block_wake_ns",
                                        "timer_poll_wake_ns", "timer_block_wake_ns", "running_inject_ns"))
    # A wake the poll caught is cheaper than one from a blocked thread: an order, not values (another
    # CPU, other values). The submit and the cpuid exit are both handled in the kernel: no order between them.
    assert c["poll_wake_ns"] < c["block_wake_ns"]
    # The kernel's blocked wake pays the scheduler's penalty and then an entry on top of it.
    assert 0 < c["block_penalty_ns"] and 0 < c["timer_block_penalty_ns"]
    assert len(doc["detail"]["rounds"]) == 1


def test_calibrate_refuses_in_one_line_without_kvm(hostd, tmp_path):
    out = tmp_path / "cal.json"
    p = hostd.popen("calibrate", "--out", str(out), env=dict(os.environ, HPEMU_KVM_DEV="/nonexistent"))
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and err.count("\n") == 1 and "/nonexistent" in err
    assert not out.exists()


def test_calibrate_rejects_bad_options_in_one_line(hostd):
    r = hostd.run("calibrate", "--seconds", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--seconds" in r.stderr
