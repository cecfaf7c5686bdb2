"""Owns the process's handle on the ``_heap`` C engine: loaded (or why not) once at import, started and stopped by heapsites.

The sampled heap engine's Python face: whether the C extension is usable, its defaults, and its calls.
"""

from __future__ import annotations

import atexit
import contextvars
import importlib
from typing import Any

__all__ = [
    "AVAILABLE",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_SAMPLE_BYTES",
    "METHOD_CODES",
    "METHOD_NAMES",
    "RequestTag",
    "UNAVAILABLE_REASON",
    "running",
    "set_sample_bytes",
    "snapshot",
    "stack",
    "start",
    "stats",
    "stop",
]

#: HTTP method → the small int a RequestTag carries; 0 means "not in a request".
METHOD_CODES: dict[str, int] = {
    "GET": 1, "POST": 2, "PUT": 3, "DELETE": 4, "PATCH": 5, "HEAD": 6,
    "OPTIONS": 7, "TRACE": 8, "CONNECT": 9, "WS": 10, "OTHER": 11,
}
METHOD_NAMES: dict[int, str] = {0: "", **{code: name for name, code in METHOD_CODES.items()}}

# Mean bytes between samples. benchmarks/bench_heap_alloc.py measures both sides of the
# choice: an unsampled allocation and its free cost ~6-10 instructions each in the hooks, and a
# sample ~3.5k instructions (stack capture at DEFAULT_MAX_FRAMES read from the interpreter's
# frames, interned; ~35k where the build falls back to the public frame API, see stats()["frame_walk"]).
# At 512 KiB that is under 0.01 instructions per allocated byte, ~0.4 for a 64-byte block, far
# below the cost of the hooks themselves. The price is
# precision: a leak of L bytes of small objects is estimated with a relative standard error of
# sqrt(512 KiB / L), 7% at 100 MB (unbiased: tests/capture/test_heap_engine.py checks ±10%).
DEFAULT_SAMPLE_BYTES = 512 * 1024
# Innermost frames first, so the endpoint is found below however deep the server's frames go:
# under FastAPI an async endpoint's json.loads() sampled 4 frames in (of 36 in all), a sync
# endpoint runs in a worker thread whose whole stack is ~5 frames; 32 leaves room for libraries
# ~28 frames deep. Capture cost grows with depth: ~3.5k instructions at 32 frames, ~2-3x at 128.
DEFAULT_MAX_FRAMES = 32
DEFAULT_MAX_SAMPLES = 1 << 20

_engine: Any = None
UNAVAILABLE_REASON: str | None = None
try:
    _engine = importlib.import_module("._heap", __package__)
except ModuleNotFoundError:
    UNAVAILABLE_REASON = ("the C extension leakyspanner.capture._heap is not built (no C compiler when "
                          "installed); falling back to tracemalloc")
except ImportError as exc:  # the module refuses this interpreter and says why
    UNAVAILABLE_REASON = f"{exc}; falling back to tracemalloc"
AVAILABLE = _engine is not None

_atexit_registered = False


def _require() -> Any:
    if _engine is None:
        raise RuntimeError(UNAVAILABLE_REASON)
    return _engine


def start(sample_bytes: int, max_frames: int, tag_var: contextvars.ContextVar[Any],
          max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
    """Hook the allocators and sample every ``sample_bytes`` on average; stopped again at exit."""
    global _atexit_registered
    engine = _require()
    engine.start(sample_bytes, max_frames, tag_var, max_samples)
    if not _atexit_registered:
        # the hooks must not sample while the interpreter finalizes
        atexit.register(engine.stop)
        _atexit_registered = True


def stop() -> None:
    """Stop sampling and free the engine's tables (idempotent)."""
    _require().stop()


def set_sample_bytes(sample_bytes: int) -> None:
    """A new mean gap between samples from now on; samples already live keep their weights."""
    _require().set_sample_bytes(sample_bytes)


def running() -> bool:
    """Whether the engine is sampling."""
    return bool(_require().running())


def snapshot() -> list[tuple[int, int, int, int, int, int]]:
    """Live samples as (route_id, method_code, stack_id, samples, est_count, est_bytes) rows."""
    rows: list[tuple[int, int, int, int, int, int]] = _require().snapshot()
    return rows


def stack(stack_id: int) -> tuple[tuple[str, int, str], ...]:
    """The (filename, lineno, qualname) frames of a stack id from snapshot(), innermost first."""
    frames: tuple[tuple[str, int, str], ...] = _require().stack(stack_id)
    return frames


def stats() -> dict[str, Any]:
    """The engine's settings and counters (see the C module's stats())."""
    result: dict[str, Any] = _require().stats()
    return result


class _UnavailableRequestTag:
    """Stands in for RequestTag when the extension is missing: constructing one says why."""

    def __init__(self, scope: dict[str, Any], method_code: int) -> None:
        raise RuntimeError(UNAVAILABLE_REASON)


#: The tag of one HTTP request: ``RequestTag(scope, method_code)``, then ``close(route_id)``.
RequestTag: Any = _engine.RequestTag if _engine is not None else _UnavailableRequestTag
