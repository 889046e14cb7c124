"""Result files are written whole or not at all: temp file in the same dir, then rename. Every
output path is checked before anything is measured, so no run ends in a traceback at its last step."""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile

from hostd.plumbing.errors import UsageError


def atomic_write(path: str, data: bytes | str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: str, obj: object) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def check_out_dir(path: str, option: str) -> None:
    """Refuse (one line, exit 2) a folder results could not be written into: it must be a directory
    we may write in, or one that makedirs can create. Nothing is created: a refused or interrupted
    command leaves no empty folder behind."""
    _check_creatable(path, path, option)


def check_out_file(path: str, option: str) -> None:
    """As check_out_dir, for a file: not a directory, and its folder writable or creatable."""
    if os.path.isdir(path):
        raise UsageError(f"{option}: cannot write {path!r}: it is a directory")
    _check_creatable(os.path.dirname(os.path.abspath(path)), path, option)


def _check_creatable(directory: str, path: str, option: str) -> None:
    existing = os.path.abspath(directory)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        reason = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):  # root too is refused on a read-only mount
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        reason = f"{existing} is on a read-only file system" if read_only else f"no permission to write in {existing}"
    else:
        return
    raise UsageError(f"{option}: cannot write {path!r}: {reason}")


def print_show_again(folder: str) -> None:
    """The last line of compare and tune, once their documents are written."""
    sys.stderr.write(f"show again: hostd show {shlex.quote(folder)}\n")
