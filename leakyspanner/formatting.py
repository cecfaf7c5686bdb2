"""How bytes and durations are written for people, defined once for the report, the HTML and the dashboard.

The terminal report and the payloads the dashboard draws call these functions;
the dashboard's script receives :func:`units` in its payload and applies the
same table to values it works out itself (chart axes), so no unit or rounding
rule is spelled a second time in JavaScript. Standard library only.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

__all__ = ["BYTE_UNITS", "format_bytes", "format_duration", "units"]

#: (bytes in one unit, unit name, decimals), largest first; 1 KB = 1024 bytes.
BYTE_UNITS: tuple[tuple[int, str, int], ...] = (
    (1024 ** 3, "GB", 1), (1024 ** 2, "MB", 1), (1024, "KB", 1), (1, "B", 0))
#: (seconds below which the rule applies, seconds per unit, unit name, decimals).
_SHORT_DURATIONS: tuple[tuple[float, float, str, int], ...] = (
    (0.01, 0.001, "ms", 2), (1.0, 0.001, "ms", 1), (60.0, 1.0, "s", 2))


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_bytes(n: float | None, *, signed: bool = False, missing: str = "n/a") -> str:
    """``10.1 KB``, ``-2.0 MB``, ``+512 B`` (``signed`` adds ``+`` to growth); ``missing`` for None/NaN."""
    if not _finite(n):
        return missing
    sign = "+" if signed and n > 0 else "-" if n < 0 else ""
    a = abs(n)
    scale, unit, decimals = next(u for u in BYTE_UNITS if a >= u[0] or u[0] == 1)
    return f"{sign}{a / scale:.{decimals}f} {unit}"


def format_duration(seconds: float | None, *, missing: str = "n/a") -> str:
    """``4.20 ms``, ``5.23 s``, ``3 min 07 s``, ``2 h 05 min``; ``missing`` for None/NaN."""
    if not _finite(seconds):
        return missing
    sign = "-" if seconds < 0 else ""
    a = abs(seconds)
    for below, per, unit, decimals in _SHORT_DURATIONS:
        if round(a / per, decimals) * per < below:  # 59.999 s is "1 min 00 s", not "60.00 s"
            return f"{sign}{a / per:.{decimals}f} {unit}"
    total = round(a)
    hours, minutes, secs = total // 3600, total % 3600 // 60, total % 60
    return f"{sign}{hours} h {minutes:02d} min" if hours else f"{sign}{minutes} min {secs:02d} s"


def units() -> dict[str, Any]:
    """The formatting rules as JSON for the dashboard's script (chart axes, tooltips)."""
    return {"bytes": [list(u) for u in BYTE_UNITS],
            "short_durations": [list(d) for d in _SHORT_DURATIONS]}
