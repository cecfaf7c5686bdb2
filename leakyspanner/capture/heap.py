"""The sampled heap engine's Python face: whether the C extension is usable, its defaults, and its calls."""

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
    "UNAVAILABLE_REASON",
    "RequestTag",
    "running",
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

# Mean bytes between samples. benchmarks/bench_heap_alloc.py measures the cost: a sample
# (stack capture at DEFAULT_MAX_FRAMES, then interning) costs ~1000x an unsampled allocation,
# so at 512 KiB sampling adds well under 1% to allocation-heavy code, while a leak of L bytes
# of small objects is estimated with a relative standard error of sqrt(512 KiB / L): 7% at 100 MB.
DEFAULT_SAMPLE_BYTES = 512 * 1024
# Deep enough to reach a FastAPI endpoint from an allocation inside a library it calls
# (innermost frames come first); bench_heap_alloc.py measures the capture cost at this depth.
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
