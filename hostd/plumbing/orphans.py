"""What runs whose hostd died left behind (SIGKILL leaves no chance to clean up): segments in /dev/shm, run directories,
kvm trace instances, and changed kvm module parameters."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import psutil

from hostd.plumbing import kvm_params
from vcpu import abi, kvm_trace


def _remove_stale_run_dirs() -> None:
    """Run directories (sockets, the spec) of dead hostds: nothing in them is of use any more."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        owner = abi.run_dir_owner(name)
        path = os.path.join(tmp, name)
        if owner is None or psutil.pid_exists(owner):
            continue
        try:
            if os.stat(path).st_uid == os.getuid():
                shutil.rmtree(path)
        except OSError:
            continue


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
    _remove_stale_run_dirs()
    kvm_params.restore_stale()
    traces = kvm_trace.remove_stale()
    if traces:
        sys.stderr.write(f"hostd: removed {len(traces)} kvm trace instance(s) of dead runs: {', '.join(traces)}\n")
    return removed
