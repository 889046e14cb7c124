"""Durations as a user types them: whole ns, or a number with a unit (ns, us, ms, s)."""
from __future__ import annotations

import math

from hostd.plumbing.errors import UsageError

_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def parse_ns(option: str, text: str) -> int:
    """A duration in whole ns: 250000, 250us, 0.25ms, 1s."""
    t = text.strip().lower()
    unit = next((u for u in ("ns", "us", "ms", "s") if t.endswith(u)), "")
    number = t[: len(t) - len(unit)] if unit else t
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"{option}: expected a duration like 50000, 50us or 2ms, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{option}: expected a duration >= 0, got {text!r}")
    return int(round(value * _UNITS[unit or "ns"]))
