"""The kernel's own stats, read through KVM_GET_STATS_FD, against the kernel's descriptors."""
import os
import threading

import pytest

from vcpu import abi
from vcpu.kvm import kvm_api
from vcpu.kvm.kvm_stats import HALT_COUNTERS, HALT_HISTS, parse_descriptors
from vcpu.kvm.kvm_vm import KvmVm, catch_stop_signal


def _run_for(vm: KvmVm, seconds: float) -> None:
    """KVM_RUN until a timer thread stops it the way the backend does."""
    main = threading.get_ident()
    catch_stop_signal()
    t = threading.Timer(seconds, vm.stop, (main,))
    t.start()
    try:
        vm.enter()
    finally:
        t.join()


def test_descriptors_name_every_halt_stat(kvm):
    vm = KvmVm("timer", False, 0, interval_ns=500_000)
    try:
        _, stats = parse_descriptors(vm.stats.fd)
        for name in HALT_COUNTERS:
            assert stats[name].size == 1 and not stats[name].is_hist
        for name in HALT_HISTS:
            assert stats[name].is_hist and stats[name].size == abi.HIST_BUCKETS
        # Time stats are in ns once scaled, whatever exponent the kernel declares.
        assert stats["halt_wait_ns"].scale >= 1
    finally:
        vm.close()


@pytest.mark.parametrize("cap_ns", [0, 2_000_000])
def test_a_timer_guest_halts_and_the_kernel_counts_consistently(kvm, cap_ns):
    vm = KvmVm("timer", False, cap_ns, interval_ns=500_000)
    try:
        _run_for(vm, 0.4)
        s = vm.stats.read()
        delivered, armed = vm.delivered(), vm.armed()
    finally:
        vm.close()
    assert delivered > 50  # ~800 expected; generous for a loaded machine
    assert armed - delivered in (0, 1)  # one deadline may be in flight at the stop
    assert s["halt_successful_poll"] <= s["halt_attempted_poll"] <= s["halt_exits"]
    assert s["halt_exits"] >= delivered
    # The histograms are the counters split by duration: read by name, they add up.
    assert sum(s["halt_poll_success_hist"]) == s["halt_successful_poll"]
    assert sum(s["halt_poll_fail_hist"]) == s["halt_attempted_poll"] - s["halt_successful_poll"]
    if cap_ns == 0:
        assert s["halt_attempted_poll"] == 0 and s["halt_poll_success_ns"] == 0
    else:
        assert s["halt_attempted_poll"] > 0


def test_refusal_names_the_device_in_one_line(monkeypatch):
    monkeypatch.setenv("HPEMU_KVM_DEV", "/nonexistent")
    with pytest.raises(kvm_api.KvmUnavailable) as e:
        kvm_api.probe()
    msg = str(e.value)
    assert "/nonexistent" in msg and "\n" not in msg


def test_refusal_of_a_device_that_is_not_kvm(monkeypatch):
    monkeypatch.setenv("HPEMU_KVM_DEV", os.devnull)
    with pytest.raises(kvm_api.KvmUnavailable, match="not a KVM device"):
        kvm_api.probe()
