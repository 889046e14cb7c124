"""Reading the kernel's halt tracepoints from a text trace, one line at a time.

The two events (include/trace/events/kvm.h, TP_printk; checked against this machine's
/sys/kernel/tracing/events/kvm/*/format):
- kvm_vcpu_wakeup   "%s time %lld ns, polling %s": wait|poll (wait = the vCPU was scheduled out,
  `waited` in kvm_vcpu_halt), the halt's whole duration in ns including the poll, and
  valid|invalid (vcpu_valid_wakeup()); older kernels print no ", polling ..." part.
- kvm_halt_poll_ns  "vcpu %u: halt_poll_ns %u (%s %u)": vcpu_id, the new per-vCPU value,
  grow|shrink, the old value.

Three layouts carry them, all `<task> <cpu> <seconds>: <event>: <message>`:
- tracefs text (the `trace` or `trace_pipe` file, and `hostd record`):
      "  vm0/vcpu0-18092   [001] .....  1002.505284: kvm_vcpu_wakeup: wait time 481014 ns, ..."
  (with the record-tgid option a "(  tgid)" column follows the pid);
- `trace-cmd report`: the same columns, a "cpus=N" first line, an "<instance>:" prefix for an
  instance's buffer, and with -l the CPU and flags run together ("vm0/vcpu-18651   1.....");
- `perf script`: "  vm0/vcpu0 18234 [001]  1009.424319:  kvm:kvm_vcpu_wakeup: wait time ..."
  (the pid separated by a space, optionally "pid/tid", the event named "system:event").

The reader streams: it holds one line at a time and yields events, so a trace of any size is
read in constant memory. Lines it cannot place are counted (with the first few kept as
examples) rather than fatal, up to a limit; a trace that is not text at all is refused at once.
"""
from __future__ import annotations

import io
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from hostd.plumbing.errors import UsageError

WAKEUP, DECISION = "kvm_vcpu_wakeup", "kvm_halt_poll_ns"
FORMAT_TRACEFS, FORMAT_TRACE_CMD, FORMAT_PERF = "tracefs text", "trace-cmd report", "perf script"
RECORD_HEADER = "# hostd record: "  # followed by one JSON object (hostd.trace.recording)
EXAMPLES = 3  # unmatched lines kept to show the user

_TRACEFS = re.compile(
    r"^\s*(?:(?P<inst>[^\s:]+):\s+)?(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?:\d+|-+)\)\s+)?"
    r"(?:\[\d+\]\s+(?:[^\s:]{4,6}\s+)?|(?P<lcpu>\d+)[^\s:]{4,6}\s+)"
    r"(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s*(?P<msg>.*?)\s*$")
_PERF = re.compile(
    r"^\s*(?P<comm>.*?)\s+(?:-?\d+/)?(?P<pid>-?\d+)\s+(?:\[\d+\]\s+)?(?P<ts>\d+\.\d+):\s+(?:\d+\s+)?"
    r"(?P<sys>\w+):(?P<event>\w+):\s*(?P<msg>.*?)\s*$")
_WAKEUP_MSG = re.compile(r"^(wait|poll) time (\d+) ns(?:, polling (valid|invalid))?$")
_DECISION_MSG = re.compile(r"^vcpu (\d+): halt_poll_ns (\d+) \((grow|shrink) (\d+)\)$")
# Lines that are part of a trace without being events.
_LOST = re.compile(r"\[LOST (\d+) EVENTS?\]")
_SKIP = re.compile(r"^(?:#|cpus=\d+|version = |CPU \d+ is empty|\s+[0-9a-f]+ \S)")
_BINARY_MAGIC = {b"PERFILE2": "a perf.data file: turn it into text with `perf script -i FILE > FILE.txt`",
                 b"\x17\x08\x44tracing": "a trace-cmd trace.dat: turn it into text with "
                                         "`trace-cmd report -i FILE > FILE.txt`"}


class Wakeup(NamedTuple):
    """One halt: kvm_vcpu_wakeup, the last thing kvm_vcpu_halt does."""
    pid: int
    comm: str
    line: int
    ts: float
    ns: int  # the whole halt, HLT to wake, including the poll
    waited: bool  # the vCPU was scheduled out ("wait"), else the poll caught the wake ("poll")
    valid: bool


class Decision(NamedTuple):
    """One kvm_halt_poll_ns: grow_halt_poll_ns / shrink_halt_poll_ns, fired inside kvm_vcpu_halt
    *before* that halt's kvm_vcpu_wakeup."""
    pid: int
    comm: str
    line: int
    ts: float
    vcpu_id: int
    grow: bool
    new: int
    old: int


@dataclass
class TraceInfo:
    """What the reader saw, for the report; filled in while streaming."""
    path: str
    lines: int = 0
    wakeups: int = 0
    decisions: int = 0
    other_events: int = 0  # well-formed events of other kinds (e.g. kvm_exit), ignored
    unmatched: int = 0
    unmatched_examples: list = field(default_factory=list)  # [(line number, text)]
    lost_events: int = 0  # the kernel's "[LOST N EVENTS]": the ring buffer overflowed
    truncated_last_line: bool = False
    formats: Counter = field(default_factory=Counter)  # events per layout
    record: dict | None = None  # the `hostd record` header, if any
    host: str | None = None  # the host the trace names (hostd record, perf script --header)
    _trace_cmd_hint: bool = False

    @property
    def format(self) -> str | None:
        if not self.formats:
            return None
        name = self.formats.most_common(1)[0][0]
        if name == FORMAT_TRACEFS and self._trace_cmd_hint:
            return FORMAT_TRACE_CMD
        return name

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "lines": self.lines, "wakeups": self.wakeups,
                "decisions": self.decisions, "other_events": self.other_events, "unmatched": self.unmatched,
                "unmatched_examples": [{"line": n, "text": t} for n, t in self.unmatched_examples],
                "lost_events": self.lost_events, "truncated_last_line": self.truncated_last_line,
                "host": self.host, "record": self.record}


class TraceReader:
    """Iterate over a trace's Wakeup and Decision events; `info` holds the counts.

    max_unmatched: more lines than this that fit no layout end the read with a UsageError (this is
    not a trace of a kind we know); fewer are counted and reported."""

    def __init__(self, path: str, max_unmatched: int = 1000) -> None:
        self.path = path
        self.max_unmatched = max_unmatched
        self.info = TraceInfo(path)

    def __iter__(self) -> Iterator[Wakeup | Decision]:
        raw = self._open()
        try:
            yield from self._events(raw)
        finally:
            if raw is not sys.stdin.buffer:
                raw.close()

    def _open(self) -> BinaryIO:
        if self.path == "-":
            raw = sys.stdin.buffer
        else:
            try:
                raw = open(self.path, "rb")  # noqa: SIM115 - closed by __iter__
            except OSError as exc:
                raise UsageError(f"--trace: cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            head = raw.peek(4096)[:4096] if hasattr(raw, "peek") else b""
        except OSError as exc:  # e.g. a directory
            raw.close()
            raise UsageError(f"--trace: cannot read {self.path}: {exc.strerror or exc}") from None
        for magic, what in _BINARY_MAGIC.items():
            if head.startswith(magic):
                raise UsageError(f"--trace: {self.path} is {what}")
        if b"\0" in head:
            raise UsageError(f"--trace: {self.path} is a binary file, not a text trace (tracefs text, "
                             f"`trace-cmd report` or `perf script` output)")
        return raw

    def _events(self, raw: BinaryIO) -> Iterator[Wakeup | Decision]:
        info = self.info
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)
        last = _TRACEFS  # try the layout that matched last first: traces are not mixed in practice
        lineno = 0
        try:
            for lineno, line in enumerate(text, 1):
                complete = line.endswith("\n")
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                m = last.match(line)
                if m is None:
                    other = _PERF if last is _TRACEFS else _TRACEFS
                    m = other.match(line)
                    if m is not None:
                        last = other
                if m is None:
                    self._non_event(line, lineno, complete)
                    continue
                event = m["event"]
                if last is _PERF:
                    if m["sys"] != "kvm":
                        info.other_events += 1
                        continue
                    layout = FORMAT_PERF
                else:
                    layout = FORMAT_TRACEFS
                    if m["inst"] is not None or m["lcpu"] is not None:
                        info._trace_cmd_hint = True
                if event == WAKEUP:
                    mm = _WAKEUP_MSG.match(m["msg"])
                    if mm:
                        info.wakeups += 1
                        info.formats[layout] += 1
                        yield Wakeup(int(m["pid"]), m["comm"].strip(), lineno, float(m["ts"]), int(mm[2]),
                                     mm[1] == "wait", mm[3] != "invalid")
                        continue
                elif event == DECISION:
                    mm = _DECISION_MSG.match(m["msg"])
                    if mm:
                        info.decisions += 1
                        info.formats[layout] += 1
                        yield Decision(int(m["pid"]), m["comm"].strip(), lineno, float(m["ts"]), int(mm[1]),
                                       mm[3] == "grow", int(mm[2]), int(mm[4]))
                        continue
                else:
                    info.other_events += 1
                    continue
                # One of our events with a message we cannot read: a truncated last line, or damage.
                self._unmatched(line, lineno, complete)
        finally:
            info.lines = lineno
            text.detach()  # the caller closes the raw file (not stdin)

    def _non_event(self, line: str, lineno: int, complete: bool) -> None:
        info = self.info
        lost = _LOST.search(line)
        if lost:
            info.lost_events += int(lost[1])
            return
        if line.startswith(RECORD_HEADER):
            try:
                info.record = json.loads(line[len(RECORD_HEADER):])
                info.host = info.record.get("host")
            except (ValueError, AttributeError):
                pass
            return
        if line.startswith("# hostname : "):  # perf script --header
            info.host = line.split(":", 1)[1].strip()
            return
        if line.startswith("cpus="):
            info._trace_cmd_hint = True
        if _SKIP.match(line) or line.startswith("#####"):
            return
        self._unmatched(line, lineno, complete)

    def _unmatched(self, line: str, lineno: int, complete: bool) -> None:
        info = self.info
        if not complete:  # only the last line can lack its newline: a trace cut short while written
            info.truncated_last_line = True
            return
        info.unmatched += 1
        if len(info.unmatched_examples) < EXAMPLES:
            info.unmatched_examples.append((lineno, line[:160]))
        if info.unmatched > self.max_unmatched:
            first = info.unmatched_examples[0]
            raise UsageError(
                f"--trace: {self.path}: more than {self.max_unmatched} lines match no known trace layout "
                f"(line {first[0]}: {first[1][:80]!r}); expected tracefs text, `trace-cmd report` or "
                f"`perf script` output of kvm:kvm_vcpu_wakeup (--max-unmatched raises the limit)")
