"""The control API of `hostd serve`: where the socket lives, the wire format, request validation,
and the client used by `hostd launch/ps/set/stop/shutdown/stat`.

Wire format: ZeroMQ, the daemon binds a ROUTER socket (so a client that vanishes mid-request
harms nothing: its reply is simply dropped). A client sends one payload frame, optionally
preceded by an empty delimiter frame (REQ sockets add it; our DEALER client adds it too); the
payload is one msgpack map `{"cmd": NAME, ...fields}`. Every request gets exactly one reply
frame, a msgpack map: `{"ok": true, ...}` or `{"ok": false, "error": "<what was wrong>"}`.

Requests are validated here, before the daemon acts: frame count and size, msgpack decoding
(exactly one object), a map with string keys, a known command, the known fields of that
command with their types and ranges. Values that need the daemon's state (does the VM exist,
does its policy read this parameter) are checked by the daemon and rejected the same way.
"""
from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from hostd.plumbing.errors import UsageError
from hostd.plumbing.policy_options import add_policy_options
from hostd.plumbing.spec import add_vm_options
from vcpu.policy import U32_MAX

PROTOCOL = 1
MAX_FRAME = 64 * 1024        # a request larger than this is answered with an error
HARD_MAX_FRAME = 16 << 20    # ZeroMQ drops the connection of a peer that sends more (memory guard)
MAX_STR = 4096
VM_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")

ENV_DIR = "HALTPOLL_EMU_DIR"          # overrides the runtime directory (tests, several daemons)
ENV_ENDPOINT = "HALTPOLL_EMU_ENDPOINT"  # a client connects here instead (e.g. a tcp:// daemon)
SOCKET_NAME = "control.sock"


class ProtocolError(Exception):
    """A request that must be refused; the message is sent back as the reply's `error`."""


# --- where the daemon listens -------------------------------------------------------------
def runtime_dir() -> str:
    """$HALTPOLL_EMU_DIR, else $XDG_RUNTIME_DIR/haltpoll-emu, else /tmp/haltpoll-emu-$UID."""
    if os.environ.get(ENV_DIR):
        return os.path.abspath(os.environ[ENV_DIR])
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "haltpoll-emu")
    return os.path.join(tempfile.gettempdir(), f"haltpoll-emu-{os.getuid()}")


def ensure_private_dir(path: str) -> str:
    """Create the runtime dir mode 0700, or check an existing one is ours and private."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the runtime directory {path!r}: {exc.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"runtime directory {path!r} is not a directory")
    if st.st_uid != os.getuid():
        raise UsageError(f"runtime directory {path!r} belongs to uid {st.st_uid}, not to you; "
                         f"set ${ENV_DIR} to a directory of your own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def socket_path(directory: str | None = None) -> str:
    return os.path.join(directory or runtime_dir(), SOCKET_NAME)


def default_endpoint() -> str:
    return os.environ.get(ENV_ENDPOINT) or f"ipc://{socket_path()}"


def check_bind(endpoint: str, allow_remote: bool) -> str:
    """`--bind`: only tcp://HOST:PORT; HOST must be loopback unless --allow-remote."""
    m = re.fullmatch(r"tcp://(\[[^\]]+\]|[^:/]+):(\d{1,5})", endpoint)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise UsageError(f"--bind: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555), got {endpoint!r}")
    host = m.group(1).strip("[]")
    if not allow_remote and not is_loopback(host):
        raise UsageError(f"--bind: {host!r} is not a loopback address; anyone who reaches it could "
                         f"control the daemon. Use 127.0.0.1, or add --allow-remote")
    return endpoint


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_host_port(text: str, option: str, allow_remote: bool) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` (loopback by default)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{option}: expected HOST:PORT or PORT, got {text!r}")
    if not allow_remote and not is_loopback(host):
        raise UsageError(f"{option}: {host!r} is not a loopback address; add --allow-remote to serve it")
    return host, int(port)


# --- requests -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    required: bool = True


def _vm_field() -> Field:
    return Field((str,))


COMMANDS: dict[str, dict[str, Field]] = {
    "ping": {},
    "ps": {},
    "stats": {"vm": Field((str,), required=False)},
    "launch": {"options": Field((dict,))},
    "set": {"vm": _vm_field(), "param": Field((str,)), "value": Field((int, float))},
    "stop": {"vm": _vm_field()},
    "shutdown": {},
}

# Live parameters: name -> (kind, lo, hi). `tick_hz` is converted to the slot's tick_millihz.
PARAMS: dict[str, tuple[type, float, float]] = {
    "halt_poll_ns": (int, 0, U32_MAX),
    "halt_poll_ns_grow": (int, 1, U32_MAX),
    "halt_poll_ns_grow_start": (int, 1, U32_MAX),
    "halt_poll_ns_shrink": (int, 0, U32_MAX),
    "tick_hz": (float, 0.001, 100_000.0),
    "tick_millihz": (int, 1, 100_000_000),
}


def _tname(t: tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", dict: "map", bool: "boolean"}
    return " or ".join(names.get(x, x.__name__) for x in t)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """ROUTER frames -> (envelope to reply with, payload frames)."""
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


def decode_request(payload: list[bytes]) -> dict:
    """Frames after the envelope -> a validated request map; ProtocolError says what is wrong."""
    if len(payload) != 1:
        raise ProtocolError(f"expected exactly one payload frame, got {len(payload)}")
    frame = payload[0]
    if len(frame) > MAX_FRAME:
        raise ProtocolError(f"request frame of {len(frame)} bytes exceeds the limit of {MAX_FRAME} bytes")
    if not frame:
        raise ProtocolError("empty request frame")
    try:
        req = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData:
        raise ProtocolError("request frame holds more than one msgpack object") from None
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the client's problem
        raise ProtocolError(f"request is not valid msgpack ({type(exc).__name__})") from None
    return validate(req)


def validate(req: Any) -> dict:
    if not isinstance(req, dict):
        raise ProtocolError(f"request must be a msgpack map, got {type(req).__name__}")
    cmd = req.get("cmd")
    if cmd is None:
        raise ProtocolError("request has no 'cmd' field")
    if not isinstance(cmd, str):
        raise ProtocolError(f"'cmd' must be a string, got {type(cmd).__name__}")
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {_short(cmd)} (known: {', '.join(COMMANDS)})")
    schema = COMMANDS[cmd]
    for key in req:
        if key != "cmd" and key not in schema:
            known = ", ".join(schema) or "none"
            raise ProtocolError(f"{cmd}: unknown field {_short(key)} (fields: {known})")
    for key, f in schema.items():
        if key not in req:
            if f.required:
                raise ProtocolError(f"{cmd}: missing field {key!r}")
            continue
        v = req[key]
        if isinstance(v, bool) or not isinstance(v, f.types):
            raise ProtocolError(f"{cmd}: field {key!r} must be a {_tname(f.types)}, got {type(v).__name__}")
        if isinstance(v, str) and len(v) > MAX_STR:
            raise ProtocolError(f"{cmd}: field {key!r} is longer than {MAX_STR} characters")
    if "vm" in req and not VM_ID_RE.match(req["vm"]):
        raise ProtocolError(f"{cmd}: {_short(req['vm'])} is not a VM id (letters, digits, _.-; at most 64)")
    if cmd == "set":
        check_param(req["param"], req["value"])
    if cmd == "launch":
        check_options(req["options"])
    return req


def check_param(name: str, value: int | float) -> int | float:
    if name not in PARAMS:
        raise ProtocolError(f"set: unknown parameter {_short(name)} (settable: {', '.join(PARAMS)})")
    kind, lo, hi = PARAMS[name]
    if kind is int and not isinstance(value, int):
        raise ProtocolError(f"set: {name} must be a whole number, got {_short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"set: {name} must be finite, got {value}")
    if not lo <= value <= hi:
        raise ProtocolError(f"set: {name}={_short(value)} is out of range ({lo:g}..{hi:g})")
    return value


def launch_options_parser() -> argparse.ArgumentParser:
    """The options `hostd launch` shares with `hostd run`, alone in a parser."""
    p = argparse.ArgumentParser(add_help=False)
    add_vm_options(p)
    add_policy_options(p)
    return p


def launch_option_kinds() -> dict[str, type]:
    """dest -> bool (a flag) or str, for every option `hostd launch` shares with `hostd run`."""
    kinds = {}
    for a in launch_options_parser()._actions:  # noqa: SLF001 - the one way to list what the shared options are
        kinds[a.dest] = bool if isinstance(a, argparse._StoreTrueAction) else str  # noqa: SLF001
    return kinds


_KINDS: dict[str, type] | None = None


def check_options(options: dict) -> None:
    global _KINDS
    if _KINDS is None:
        _KINDS = launch_option_kinds()
    for key, value in options.items():
        if not isinstance(key, str) or key not in _KINDS:
            raise ProtocolError(f"launch: unknown option {_short(key)}")
        kind = _KINDS[key]
        if value is None:
            continue
        if kind is bool:
            if not isinstance(value, bool):
                raise ProtocolError(f"launch: option {key!r} is a flag and must be a boolean, got {type(value).__name__}")
        elif not isinstance(value, str):
            raise ProtocolError(f"launch: option {key!r} must be a string, got {type(value).__name__}")
        elif len(value) > MAX_STR:
            raise ProtocolError(f"launch: option {key!r} is longer than {MAX_STR} characters")


def reply_ok(**fields: Any) -> bytes:
    return msgpack.packb({"ok": True, "v": PROTOCOL, **fields}, default=_plain)


def reply_error(message: str) -> bytes:
    return msgpack.packb({"ok": False, "v": PROTOCOL, "error": message})


def _plain(obj: Any) -> Any:
    """numpy scalars and other number-likes in results -> plain msgpack types."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot send {type(obj).__name__}")


# --- the client ---------------------------------------------------------------------------
class DaemonError(Exception):
    """The daemon refused a request; the message is its `error` field."""


class NoDaemon(Exception):
    """Nothing answers at the endpoint."""


class Client:
    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint or default_endpoint()
        self.timeout_s = timeout_s
        if self.endpoint.startswith("ipc://") and not os.path.exists(self.endpoint[len("ipc://"):]):
            raise NoDaemon(f"no hostd daemon at {self.endpoint} (start one with `hostd serve`)")
        self._ctx = zmq.Context()
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        return s

    def raw(self, frames: list[bytes], timeout_s: float | None = None) -> list[bytes]:
        """Send frames as they are (the delimiter is the caller's business), return the reply frames."""
        self._sock.send_multipart(frames)
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        ipc = self.endpoint[len("ipc://"):] if self.endpoint.startswith("ipc://") else None
        while not (ready := self._sock.poll(200)) and time.monotonic() < deadline:
            if ipc and not os.path.exists(ipc):  # the daemon exited: no need to wait it out
                raise NoDaemon(f"the hostd daemon at {self.endpoint} has gone away")
        if not ready:
            # A late reply must not be read as the answer to the next request: start afresh.
            self._sock.close(linger=0)
            self._sock = self._connect()
            raise NoDaemon(f"no reply from the hostd daemon at {self.endpoint} within "
                           f"{timeout_s or self.timeout_s:g} s")
        return self._sock.recv_multipart()

    def call_raw(self, payload: bytes, timeout_s: float | None = None) -> dict:
        frames = self.raw([b"", payload], timeout_s)
        return msgpack.unpackb(frames[-1], raw=False)

    def call(self, cmd: str, timeout_s: float | None = None, **fields: Any) -> dict:
        rep = self.call_raw(msgpack.packb({"cmd": cmd, **fields}), timeout_s)
        if not rep.get("ok"):
            raise DaemonError(rep.get("error", "request refused"))
        return rep

    def close(self) -> None:
        self._ctx.destroy(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
