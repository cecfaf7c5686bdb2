"""Text that is safe to print on a terminal, whatever a log put into it.

Routes, file names, hosts and session ids come from logs, and logs can come from
anyone: an ESC starts a terminal control sequence (clear the screen, set the
title, remap keys on some terminals), C1 controls do the same on others, and a
bidi override (U+202A-U+202E, U+2066-U+2069) makes text read in another order
than it is written. Every such character is shown as a visible escape instead.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

__all__ = ["escaped", "printable"]

_T = TypeVar("_T")
_BIDI = (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)
_CONTROLS = (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)
_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in (*_CONTROLS, *_BIDI)}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})
_KEEP_NEWLINES = {c: e for c, e in _ESCAPES.items() if c != 0x0A}


def printable(text: object, *, newlines: bool = False) -> str:
    """``text`` with control characters and bidi overrides escaped (line breaks kept with ``newlines``)."""
    return str(text).translate(_KEEP_NEWLINES if newlines else _ESCAPES)


def escaped(value: _T) -> _T:
    """A copy of ``value`` (a dataclass, list, dict or str) with every string in it made :func:`printable`.

    Line breaks inside strings are escaped too: a route holding a newline must
    not start a line of its own in a report.
    """
    if isinstance(value, str):
        return printable(value)  # type: ignore[return-value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: escaped(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, list):
        return [escaped(item) for item in value]  # type: ignore[return-value]
    if isinstance(value, tuple):
        return tuple(escaped(item) for item in value)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {escaped(k): escaped(v) for k, v in value.items()}  # type: ignore[return-value]
    return value
