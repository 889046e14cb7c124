"""What runs whose hostd died left behind (SIGKILL leaves no chance to clean up): segments in /dev/shm, run directories
(in tempfile's directory) and the default io file's directories (in irqsrc.sources.IO_DIR), kvm trace instances, and
changed kvm module parameters."""
from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile

import psutil

from hostd.plumbing import kvm_params
from irqsrc.sources import IO_DIR
from vcpu import abi
from vcpu.kvm import kvm_trace


def _remove_stale_run_dirs() -> None:
    """Run directories (sockets, the spec) and default io file directories of dead hostds: nothing
    in them is of use any more. Both are named by owner (abi.run_dir_prefix); the io directories sit
    on a disk-backed filesystem (IO_DIR), or in tempfile's directory where that was not writable."""
    for base in dict.fromkeys((tempfile.gettempdir(), IO_DIR)):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            owner = abi.run_dir_owner(name)
            path = os.path.join(base, name)
            if owner is None or psutil.pid_exists(owner):
                continue
            try:
                st = os.lstat(path)
                if st.st_uid == os.getuid() and stat.S_ISDIR(st.st_mode):  # lstat: never a symlink's target
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
