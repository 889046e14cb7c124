"""Segments left in /dev/shm by runs whose hostd died (SIGKILL leaves no chance to unlink)."""
from __future__ import annotations

import os
import sys

import psutil

from vcpu import abi, kvm_trace


def remove_stale_segments() -> list[str]:
    """Remove this user's hpemu segments whose owning hostd is gone; say what was removed."""
    removed = []
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return removed
    for name in names:
        owner = abi.segment_owner(name)
        if owner is None or psutil.pid_exists(owner):
            continue
        path = os.path.join("/dev/shm", name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            os.unlink(path)
        except OSError:
            continue
        removed.append(name)
    if removed:
        sys.stderr.write(f"hostd: removed {len(removed)} stale segment(s) of dead runs: {', '.join(removed)}\n")
    traces = kvm_trace.remove_stale()
    if traces:
        sys.stderr.write(f"hostd: removed {len(traces)} kvm trace instance(s) of dead runs: {', '.join(traces)}\n")
    return removed
