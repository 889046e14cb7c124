"""--kvm-module-params: the 2015 never-shrink `fixed` on the real kernel, through kvm's module parameters.

With `halt_poll_ns_grow_start` = the budget, a vCPU's first grow jumps straight to it (the VM's
KVM_CAP_HALT_POLL caps it there); with `halt_poll_ns_shrink` = 1 a shrink divides by 1 and
never lowers it (shrink_halt_poll_ns). The parameters are global to the host, so the old values
are saved to a state file before the first write and written back on every exit path; a hostd
that was SIGKILLed leaves the state file, and the next hostd start writes them back and says so.
The state lives in /run (tmpfs): a reboot, which resets the module too, clears it.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

import psutil

from hostd.plumbing.errors import UsageError
from hostd.plumbing.output import write_json

# Environment overrides, so that tests can prove save and restore where sysfs is read-only.
PARAMS_DIR = os.environ.get("HPEMU_KVM_PARAMS", "/sys/module/kvm/parameters")
STATE_FILE = os.path.join(os.environ.get("HPEMU_STATE_DIR", "/run/haltpoll-emu"), "kvm-params.json")
NEVER_SHRINK = ("halt_poll_ns_grow_start", "halt_poll_ns_shrink")
_HINT = "drop the flag to run fixed as the kernel's adaptive polling capped at the budget"


def check_writable() -> None:
    """Refuse in one line where the never-shrink parameters cannot be written."""
    if os.geteuid() != 0:
        raise UsageError(f"--kvm-module-params: writing the kvm module parameters needs root; {_HINT}")
    for name in NEVER_SHRINK:
        path = os.path.join(PARAMS_DIR, name)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise UsageError(f"--kvm-module-params: {path} does not exist; {_HINT}") from None
        if not mode & 0o222:
            raise UsageError(f"--kvm-module-params: the kvm module parameters are read-only here "
                             f"({path} is {mode & 0o777:o}); {_HINT}")


def _read(name: str) -> str:
    with open(os.path.join(PARAMS_DIR, name)) as f:
        return f.read().strip()


def _write(params_dir: str, values: dict[str, str]) -> None:
    for name, value in values.items():
        with open(os.path.join(params_dir, name), "w") as f:
            f.write(f"{value}\n")


def _restore(state: dict) -> None:
    _write(state["params_dir"], state["old"])
    os.unlink(STATE_FILE)


@contextlib.contextmanager
def never_shrink(budget_ns: int):
    """The module parameters set for the 2015 `fixed` while the block runs, then put back."""
    check_writable()
    restore_stale()
    state = {"pid": os.getpid(), "params_dir": PARAMS_DIR, "old": {n: _read(n) for n in NEVER_SHRINK}}
    os.makedirs(os.path.dirname(STATE_FILE), mode=0o700, exist_ok=True)
    write_json(STATE_FILE, state)  # saved before the first write: a SIGKILL from here on is undone
    try:
        _write(PARAMS_DIR, {"halt_poll_ns_grow_start": str(budget_ns), "halt_poll_ns_shrink": "1"})
        yield state["old"]
    finally:
        _restore(state)


def restore_stale() -> dict[str, str] | None:
    """Put back what a dead hostd's never_shrink() left set; say so. Returns the values restored."""
    try:
        with open(STATE_FILE) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{STATE_FILE}: unreadable ({exc}); restore the kvm module parameters by hand "
                         "and remove it") from None
    if psutil.pid_exists(state["pid"]) and state["pid"] != os.getpid():
        return None  # still running: its own exit path restores them
    _restore(state)
    sys.stderr.write("hostd: restored the kvm module parameters a dead run had changed: "
                     + ", ".join(f"{k}={v}" for k, v in state["old"].items()) + "\n")
    return state["old"]
