"""The sentence that says what this machine's own idle setting (hoststats.own_idle) does to the
figures, for compare's verdict and bench's footer alike."""
from __future__ import annotations


def own_idle_note(idle: dict, decides: str) -> str:
    """Said only where this machine is itself a KVM guest with cpuidle-haltpoll: its idle CPUs'
    poll budget sets every wake between the device's CPU and a vCPU's, on both backends alike.
    decides: which figures that moves, as the caller's reader knows them."""
    ns = idle.get("guest_halt_poll_ns")
    if idle.get("cpuidle_driver") != "haltpoll" or ns is None:
        return ""
    return (f"This machine is itself a KVM guest: its cpuidle-haltpoll polls up to {ns:,} ns before its idle "
            "CPUs halt to the outer host (/sys/module/haltpoll/parameters/guest_halt_poll_ns; the kernel's "
            f"default is 200,000), which sets the cost of every wake here and so {decides}.")
