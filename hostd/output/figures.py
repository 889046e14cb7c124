"""How a measured figure reads in compare's tables and progress lines."""
from __future__ import annotations


def num(x: float | None, digits: int = 0, missing: str = "-") -> str:
    return missing if x is None else f"{x:,.{digits}f}"


def cell(s: dict | None, digits: int = 0, unit: str = "", spread: bool = True) -> str:
    """'median (min-max)' of a summarized metric."""
    if not s or s.get("median") is None:
        return "-"
    text = f"{num(s['median'], digits)}{unit}"
    if spread and s["n"] > 1:
        text += f" ({num(s['min'], digits)}-{num(s['max'], digits)})"
    return text
