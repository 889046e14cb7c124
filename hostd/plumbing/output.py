"""Result files are written whole or not at all: temp file in the same dir, then rename."""
from __future__ import annotations

import json
import os
import tempfile


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
