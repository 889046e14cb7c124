"""The kvm module's halt-poll parameters a traced kernel ran with: `hostd record` writes the live
ones into its trace's header, and `hostd replay --trace` reads them back (or, for a trace without
them, takes this machine's or upstream's)."""
from __future__ import annotations

import socket
from pathlib import Path

from hostd.trace.parse import TraceInfo
from vcpu.policy import (
    HALT_POLL_NS_GROW_DEFAULT,
    HALT_POLL_NS_GROW_START_DEFAULT,
    HALT_POLL_NS_SHRINK_DEFAULT,
    KVM_HALT_POLL_NS_DEFAULT,
)

SYS_PARAMS = Path("/sys/module/kvm/parameters")
KVM_PARAMS = ("halt_poll_ns", "halt_poll_ns_grow", "halt_poll_ns_grow_start", "halt_poll_ns_shrink")
UPSTREAM = dict(zip(KVM_PARAMS, (KVM_HALT_POLL_NS_DEFAULT, HALT_POLL_NS_GROW_DEFAULT,
                                 HALT_POLL_NS_GROW_START_DEFAULT, HALT_POLL_NS_SHRINK_DEFAULT)))


def read_sys_params() -> dict[str, int] | None:
    """The kvm module's live parameters, or None where the module is not loaded."""
    try:
        return {name: int((SYS_PARAMS / name).read_text().strip()) for name in KVM_PARAMS}
    except (OSError, ValueError):
        return None


def kernel_params(info: TraceInfo) -> tuple[dict[str, int], str]:
    """The kvm parameters the traced kernel ran with, as far as we can know, and where from."""
    rec = info.record or {}
    if isinstance(rec.get("kvm_parameters"), dict) and all(k in rec["kvm_parameters"] for k in KVM_PARAMS):
        return {k: int(rec["kvm_parameters"][k]) for k in KVM_PARAMS}, \
            f"recorded with the trace by hostd record on {rec.get('host', '?')}"
    here = socket.gethostname()
    if info.host is None or info.host == here:
        live = read_sys_params()
        if live is not None:
            return live, ("this machine's /sys/module/kvm/parameters"
                          + ("" if info.host else "; the trace names no host: give flags if it comes from another"))
    return dict(UPSTREAM), (f"upstream defaults (the trace comes from {info.host}; give its parameters with flags)"
                            if info.host else "upstream defaults (kvm is not loaded here)")
