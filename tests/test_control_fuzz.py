"""The control API under at least 10,000 malformed requests, over the real socket of a real daemon.

Every request below is invalid by construction (random bytes, msgpack of the wrong shape or
types, unknown commands and fields, out-of-range values, oversized and multi-part frames,
requests a running VM's policy cannot take). Each must get an error reply (never an internal
error), the daemon must stay up, its VM must keep running, and valid requests must work after.
"""
from __future__ import annotations

import math
import random

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from hostd.service import control
from tests.test_serve import _alive, serve_daemon

N = 10_000


def _junk_value(rng: random.Random):
    return rng.choice([
        None, True, False, -1, 0, 2**63, -(2**63), 1.5, math.nan, math.inf, "", "x" * rng.randint(1, 50),
        b"\x00\xff", [], [1, 2], {}, {"a": 1}, {1: 2}, "vm0\x00", "../../etc", "\u2603" * 3,
    ])


def _not_int(rng):
    return rng.choice([None, "1", b"1", [], {}, 1.5, True, math.nan])


def malformed(rng: random.Random) -> tuple[list[bytes], str]:
    """One invalid request as the frames a DEALER sends, and what kind of junk it is."""
    kind = rng.randrange(14)
    pk = msgpack.packb
    if kind == 0:  # random bytes
        return [b"", rng.randbytes(rng.randint(0, 300))], "random bytes"
    if kind == 1:  # valid msgpack, not a map
        return [b"", pk(rng.choice([1, -5, "ps", [1, "ps"], ["ps"], None, True, 3.25, b"ps", []]))], "not a map"
    if kind == 2:  # map without cmd, or cmd of the wrong type
        req = {"vm": "vm0"} if rng.random() < 0.3 else {"cmd": rng.choice([1, None, ["ps"], {"x": 1}, b"ps", 2.5])}
        return [b"", pk(req)], "bad cmd"
    if kind == 3:  # unknown command
        name = rng.choice(["", "PS", "launchx", "rm -rf", "__init__", "handlers", "stat", "kill"]) + str(rng.randrange(9))
        return [b"", pk({"cmd": name})], "unknown cmd"
    if kind == 4:  # unknown field on a known command
        cmd = rng.choice(list(control.COMMANDS))
        return [b"", pk({"cmd": cmd, "zz" + str(rng.randrange(99)): 1, "options": {}, "vm": "vm0"})], "unknown field"
    if kind == 5:  # missing or wrongly typed fields
        cmd = rng.choice(["set", "stop", "launch", "stats"])
        req = {"cmd": cmd}
        if cmd == "set":
            req.update(vm=rng.choice(["vm0", _junk_value(rng)]), param="halt_poll_ns")
            if rng.random() < 0.5:
                req["value"] = _not_int(rng)
            else:
                req.pop("vm")
        elif cmd == "stop":
            if rng.random() < 0.7:
                req["vm"] = rng.choice([1, None, [], b"vm0", 2.0])
        elif cmd == "launch":
            if rng.random() < 0.7:
                req["options"] = rng.choice([[], "x", 1, None, b"{}"])
        else:
            req["vm"] = rng.choice([1, None, [], b"vm0", "", "bad id!", "x" * 65])
        return [b"", pk(req)], "bad field"
    if kind == 6:  # out-of-range or unknown parameters
        param, value = rng.choice([
            ("halt_poll_ns", -1), ("halt_poll_ns", 2**32), ("halt_poll_ns", 2**63), ("halt_poll_ns", -(2**63)),
            ("halt_poll_ns", 1.5), ("halt_poll_ns_grow", 0), ("halt_poll_ns_grow_start", 0),
            ("halt_poll_ns_shrink", -3), ("tick_hz", 0.0), ("tick_hz", -1.0), ("tick_hz", math.nan),
            ("tick_hz", math.inf), ("tick_hz", 1e9), ("tick_millihz", 0), ("tick_millihz", 2.5),
            ("halt_poll", 5), ("HALT_POLL_NS", 5), ("guest_halt_poll_ns", 5), ("", 1),
        ])
        return [b"", pk({"cmd": "set", "vm": "vm0", "param": param, "value": value})], "out of range"
    if kind == 7:  # a VM that does not exist, or an id that cannot be one
        vm = rng.choice(["vm1", "vm99", "nope", "", "a" * 65, "vm0/..", "vm 0"])
        cmd = rng.choice(["set", "stop", "stats"])
        req = {"cmd": cmd, "vm": vm, **({"param": "halt_poll_ns", "value": 5} if cmd == "set" else {})}
        return [b"", pk(req)], "no such VM"
    if kind == 8:  # oversized frames
        size = rng.choice([control.MAX_FRAME + 1, 100_000, 1 << 20])
        body = pk({"cmd": "ps", "pad": "x" * size}) if rng.random() < 0.5 else rng.randbytes(size)
        return [b"", body], "huge frame"
    if kind == 9:  # several payload frames, or none
        n = rng.choice([0, 2, 3, 5])
        return [b"", *(pk({"cmd": "ps"}) for _ in range(n))], "frame count"
    if kind == 10:  # truncated, or trailing data after a valid object
        good = pk({"cmd": "set", "vm": "vm0", "param": "halt_poll_ns", "value": 1000})
        if rng.random() < 0.5:
            return [b"", good[: rng.randrange(1, len(good))]], "truncated"
        return [b"", good + rng.randbytes(rng.randint(1, 8))], "trailing data"
    if kind == 11:  # launch with bad options (never a valid launch)
        bad = rng.choice([
            {"vcpus": "0"}, {"vcpus": "-1"}, {"vcpus": "abc"}, {"vcpus": "100000"}, {"vcpus": 4},
            {"workload": "bogus"}, {"policy": "bogus"}, {"cpus": "0-99999999"}, {"cpus": "x"},
            {"cpus": "3-1"}, {"halt_poll_ns": "-5"}, {"halt_poll_ns": "99999999999"},
            {"tick_hz": "nan"}, {"tick_hz": "0"}, {"interval_us": "0"}, {"no_pin": "yes"},
            {"bogus_option": "1"}, {"policy": "none", "halt_poll_ns": "5"}, {"device_cpu": "9999"},
            {"vcpus": "1" * 5000}, {"policy": "fixed", "halt_poll_ns_grow": "2"}, {1: "x"},
        ])
        return [b"", pk({"cmd": "launch", "options": bad})], "bad launch"
    if kind == 12:  # a parameter this VM (adaptive, idle) has, with a wrong type for the frame
        return [b"", pk({"cmd": "set", "vm": "vm0", "param": "halt_poll_ns", "value": str(rng.randrange(99))})], "str value"
    # kind 13: deeply nested, ext-typed or timestamp msgpack
    r = rng.random()
    if r < 0.2:
        return [b"", b"\xd6\xff" + rng.randbytes(4) if r < 0.1 else b"\xc7\x0c\xff" + rng.randbytes(12)], "timestamp"
    if r < 0.6:
        return [b"", b"\x91" * rng.randint(600, 3000) + b"\x01"], "deep nesting"
    return [b"", pk(msgpack.ExtType(rng.randrange(0, 128), rng.randbytes(rng.randint(0, 12))))], "ext type"


def test_ten_thousand_malformed_requests_then_valid_ones():
    rng = random.Random(20151)
    with serve_daemon() as d:
        vm = d.launch("--workload", "idle", "--policy", "adaptive")
        assert vm == "vm0"
        pids = [p for p in d.all_pids()]
        kinds: dict[str, int] = {}
        with d.client(timeout_s=20) as c:
            for i in range(N):
                frames, kind = malformed(rng)
                reply = c.raw(frames)
                rep = msgpack.unpackb(reply[-1], raw=False)
                assert rep["ok"] is False, (kind, frames[-1][:100] if frames else frames, rep)
                assert rep["error"] and not rep["error"].startswith("internal error"), (kind, rep)
                kinds[kind] = kinds.get(kind, 0) + 1
            # A client that sends and vanishes without reading its reply harms nothing.
            with d.client() as gone:
                gone._sock.send_multipart([b"", msgpack.packb({"cmd": "ps"})])
            # Valid requests are still served, and the VM kept running.
            assert c.call("ping")["pid"] == d.pid
            assert [v["id"] for v in c.call("ps")["vms"]] == ["vm0"]
            assert c.call("set", vm="vm0", param="halt_poll_ns", value=50000)["params"]["halt_poll_ns"] == 50000
            snap = c.call("stats")
            assert snap["vms"][0]["vcpus"][0]["counters"]["halt_exits"] > 0
        assert len(kinds) >= 14 and sum(kinds.values()) == N
        assert d.proc.poll() is None and all(_alive(p) for p in pids)
        assert "internal error" not in d.stderr()


def test_validate_in_process():
    """The validator alone, for messages that name the problem."""
    import pytest

    cases = {
        msgpack.packb([1]): "must be a msgpack map",
        msgpack.packb({"cmd": "nuke"}): "unknown command 'nuke'",
        msgpack.packb({"cmd": "set", "vm": "vm0", "param": "halt_poll_ns", "value": -1}): "out of range",
        msgpack.packb({"cmd": "set", "vm": "vm0", "param": "halt_poll_ns"}): "missing field 'value'",
        msgpack.packb({"cmd": "stop", "vm": 3}): "field 'vm' must be a string",
        b"\xc1": "not valid msgpack",
        b"x" * (control.MAX_FRAME + 1): "exceeds the limit",
    }
    for frame, message in cases.items():
        with pytest.raises(control.ProtocolError, match=message):
            control.decode_request([frame])
    assert control.decode_request([msgpack.packb({"cmd": "ps"})]) == {"cmd": "ps"}


# Any value a client could send: the validator either accepts a well-formed request or raises
# ProtocolError naming the problem; no other exception ever escapes into the daemon.
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(), st.text(max_size=20),
                  st.binary(max_size=20), st.sampled_from(["launch", "set", "stop", "ps", "stats", "shutdown",
                                                          "ping", "vm0", "halt_poll_ns", "cmd", "value"]))
_values = st.recursive(_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(st.one_of(st.text(max_size=12), _leaf),
                                                                     kids, max_size=5)), max_leaves=20)


def _packable(v) -> bytes | None:
    try:
        return msgpack.packb(v)
    except (TypeError, ValueError, OverflowError):
        return None


# Requests shaped like real ones: a known command, its own field names, any values; launch
# options named like run's options (so check_options sees realistic keys with wild values).
_option_names = st.sampled_from(sorted(control.launch_option_kinds()) + ["duration", "bogus"])
_shaped = st.sampled_from(sorted(control.COMMANDS)).flatmap(
    lambda cmd: st.fixed_dictionaries(
        {"cmd": st.just(cmd)},
        optional={
            **{name: _values for name in control.COMMANDS[cmd]},
            "options": st.dictionaries(_option_names, _values, max_size=4),
            "param": st.sampled_from(sorted(control.PARAMS) + ["x"]),
        },
    )
)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(_values.map(_packable), _shaped.map(_packable), st.binary(max_size=64)), st.integers(1, 3))
def test_any_request_is_accepted_or_refused_with_a_reason(frame, nframes):
    if frame is None:
        return
    try:
        req = control.decode_request([frame] * nframes)
    except control.ProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(req, dict) and isinstance(req.get("cmd"), str)
