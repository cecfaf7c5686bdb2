"""Placeholder until the C engine's wrapper lands (helper writes the real one)."""

from __future__ import annotations

from typing import Any

AVAILABLE = False
UNAVAILABLE_REASON: str | None = "the C extension leakyspanner.capture._heap is not built; falling back to tracemalloc"
METHOD_CODES = {"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4, "PATCH": 5, "HEAD": 6, "OPTIONS": 7, "TRACE": 8,
                "CONNECT": 9, "WS": 10, "OTHER": 11}
METHOD_NAMES = {0: "", **{v: k for k, v in METHOD_CODES.items()}}
DEFAULT_SAMPLE_BYTES = 512 * 1024
DEFAULT_MAX_FRAMES = 32
RequestTag: Any = None


def running() -> bool:
    return False
