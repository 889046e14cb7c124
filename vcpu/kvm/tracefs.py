"""tracefs and its private instances, for the kvm vCPU's wakeup trace (vcpu/kvm/kvm_trace.py) and
`hostd record` (hostd/trace/recording.py): finding or mounting tracefs, making an instance, removing
it, and removing the ones a killed process left.

An instance (instances/<prefix><pid>) has its own ring buffer, event switches and filters, so the
top-level trace and other tools' instances are left alone. Its name carries its owner's pid: an
instance whose owner is gone (SIGKILL skips every cleanup) is stale.
"""
from __future__ import annotations

import ctypes
import os

MOUNT_POINT = "/sys/kernel/tracing"
ROOTS = (MOUNT_POINT, "/sys/kernel/debug/tracing")


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def mount_point() -> str | None:
    """Where tracefs is mounted, the standard place first; None if nowhere."""
    points = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "tracefs":
                    points.append(parts[1].replace("\\040", " "))
    except OSError:
        return None
    return MOUNT_POINT if MOUNT_POINT in points else (points[0] if points else None)


def mount() -> None:
    """Mount tracefs at MOUNT_POINT; OSError if the kernel refuses."""
    if _libc().mount(b"nodev", MOUNT_POINT.encode(), b"tracefs", 0, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), MOUNT_POINT)


def unmount() -> str | None:
    """Unmount what we mounted; a reason if it stays (someone else started using it, e.g. a kvm
    vCPU's own instance). Never lazily (MNT_DETACH): a user of the mount would lose the paths it
    needs to switch its own events off."""
    if _libc().umount2(MOUNT_POINT.encode(), 0) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def usable_root(event: str) -> str | None:
    """A tracefs at a standard place that has `event` ("<system>/<name>") and lets us make
    instances, or None; nothing is mounted."""
    for root in ROOTS:
        if os.path.isdir(os.path.join(root, "events", event)) and os.access(os.path.join(root, "instances"), os.W_OK):
            return root
    return None


def make_instance(root: str, prefix: str) -> str:
    """A new instance named for this process; its path. OSError if tracefs refuses."""
    path = os.path.join(root, "instances", f"{prefix}{os.getpid()}")
    os.mkdir(path)
    return path


def remove_instance(path: str, events: tuple[str, ...]) -> None:
    """Switch the events ("<system>/<name>") off and delete the instance (rmdir drops its buffer and settings); gone
    already is fine."""
    try:
        for event in events:
            with open(os.path.join(path, "events", event, "enable"), "w") as f:
                f.write("0\n")
        os.rmdir(path)
    except FileNotFoundError:
        pass


def remove_stale(root: str, prefix: str, events: tuple[str, ...]) -> list[str]:
    """Remove the instances named `prefix`<pid> whose process no longer exists; returns their names.
    One that cannot be removed stays for the next try."""
    try:
        names = os.listdir(os.path.join(root, "instances"))
    except OSError:
        return []
    gone = []
    for name in names:
        pid = name[len(prefix):]
        if not name.startswith(prefix) or not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        try:
            remove_instance(os.path.join(root, "instances", name), events)
        except OSError:
            continue
        gone.append(name)
    return gone
