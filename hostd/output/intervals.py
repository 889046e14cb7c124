"""How a figure with its 95% interval reads: 'value [low-high]', numbers in 3 significant digits.

An interval is read as its JSON dict or as any object with the same fields (hostd.analysis.stats'
Interval), so a saved document prints as the run did.
"""
from __future__ import annotations


def compact(iv, fmt, unit: str = "") -> str:
    """'value<unit> [low-high]' with fmt for each number, '?' for an unbounded end, '-' if no value."""
    if iv is None:
        return "-"
    get = iv.get if isinstance(iv, dict) else lambda key: getattr(iv, key)
    value, ci_low, ci_high = get("value"), get("ci_low"), get("ci_high")
    if value is None:
        return "-"
    lo = "?" if ci_low is None else fmt(ci_low)
    hi = "?" if ci_high is None else fmt(ci_high)
    return f"{fmt(value)}{unit} [{lo}-{hi}]"


def si(x: float) -> str:
    """3 significant digits with k/M: 546368 -> 546k, 1234 -> 1.23k, 0.5 -> 0.5."""
    a = abs(x)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            v = x / div
            return f"{v:.3g}{suffix}" if abs(v) < 1000 else f"{v:,.0f}{suffix}"
    return f"{x:.3g}"
