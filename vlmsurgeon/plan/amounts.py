"""Amounts as people write them in budgets and flags: counts with K/M/B/T, shares in %, bytes
with B/KB/GB/GiB. Read by budgets and by the scale-out options."""

from __future__ import annotations

import math
import re

COUNT_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
BYTE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_NUMBER = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)\s*$")


def parse_amount(text: str | float | int, key: str) -> tuple[float, bool]:
    """'50M' -> 5e7; '1.5B' -> 1.5e9; '1%' -> 0.01 (percent); '12GiB' (memory) -> bytes."""
    match = _NUMBER.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a number with an optional unit")
    number, unit = float(match.group(1)), match.group(2)
    if number < 0 or not math.isfinite(number):
        raise ValueError(f"'{text}': a limit is a finite number >= 0")
    if unit == "%":
        if key in ("memory", "total"):
            raise ValueError(f"{key} takes {'bytes (e.g. 12GiB)' if key == 'memory' else 'a count'}, not a percent")
        if number > 100:
            raise ValueError(f"'{text}': a share cannot be over 100%")
        return number / 100, True
    if key == "memory":
        scale = BYTE_UNITS.get(unit.upper()) if unit else 1
        if scale is None:
            raise ValueError(f"unknown byte unit '{unit}' (use B, KB, MB, GB, KiB, MiB, GiB, TiB)")
        return number * scale, False
    if unit not in COUNT_UNITS:
        raise ValueError(f"unknown count unit '{unit}' (use K, M, B, T or %)")
    return number * COUNT_UNITS[unit], False
