"""What the metrics integrations read from a live profiler, in one read-only snapshot.

Everything comes from ``Profiler.stats()`` except two things it does not
carry: the per-route counters the request path keeps (copied here the way the
sampler copies them, without a lock: they are cumulative, so a request counted
during the copy shows at the next read) and the live sampled bytes per route,
read from the heap engine's snapshot. Nothing here writes to the profiler.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..schema import BACKGROUND_ROUTE, UNMATCHED_ROUTE

__all__ = ["GrowthRate", "LiveState", "RouteState", "read_state"]

_MB = 1024 * 1024


@dataclass(frozen=True)
class RouteState:
    """One route template's cumulative numbers since the session started."""

    method: str
    route: str
    calls: int
    errors: int
    duration_s_sum: float
    heap_live_bytes: int | None  # estimated live bytes allocated in its requests (heap engine only)


@dataclass(frozen=True)
class LiveState:
    """A profiler's numbers at one instant; None where this session does not measure it."""

    active: bool
    pid: int
    rss_bytes: int | None
    baseline_rss_bytes: int
    heap_live_bytes: int | None
    traced_bytes: int | None
    threshold_bytes: int
    growth_bytes_per_s: float | None
    alerting: bool
    routes: tuple[RouteState, ...]


class GrowthRate:
    """RSS growth in bytes per second: a least-squares slope over the last ``window_s``.

    Fed at each read (scrape or export); ``clock`` is injectable for tests.
    Needs 3 points spanning ``min_span_s`` before it gives a rate.
    """

    def __init__(self, window_s: float = 300.0, min_span_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0 or min_span_s <= 0 or min_span_s > window_s:
            raise ValueError(f"need 0 < min_span_s <= window_s, got min_span_s={min_span_s!r}, "
                             f"window_s={window_s!r}")
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._clock = clock
        self._points: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def add(self, rss_bytes: int | None) -> float | None:
        """Record RSS now and return the current slope (None until there is enough history)."""
        now = self._clock()
        with self._lock:
            if rss_bytes is not None and (not self._points or now - self._points[-1][0] >= 0.5):
                self._points.append((now, float(rss_bytes)))
            while self._points and now - self._points[0][0] > self.window_s:
                self._points.popleft()
            points = list(self._points)
        if len(points) < 3 or points[-1][0] - points[0][0] < self.min_span_s:
            return None
        n = len(points)
        mean_t = sum(t for t, _ in points) / n
        mean_v = sum(v for _, v in points) / n
        var = sum((t - mean_t) ** 2 for t, _ in points)
        cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
        return cov / var if var > 0 else None


def _route_counters(profiler: Any) -> list[tuple[str, str, int, int, float]]:
    """(method, route, calls, errors, duration sum) per route template, copied without a lock."""
    counters = getattr(profiler, "_counters", None) or {}
    out = []
    for counter in list(counters.values()):
        try:
            calls, errors, duration_sum, _max, (method, route) = tuple(counter)
        except (TypeError, ValueError):  # a counter of another shape: skipped, never an error in a scrape
            continue
        out.append((str(method), str(route), int(calls), int(errors), float(duration_sum)))
    return out


def _route_heap_bytes(profiler: Any) -> dict[tuple[str, str], int]:
    """Estimated live bytes per (method, route) from the sampled heap engine's live samples."""
    from ..capture import heap

    if not heap.AVAILABLE or not heap.running():
        return {}
    name_of = getattr(profiler, "_route_name", None)
    out: dict[tuple[str, str], int] = {}
    names: dict[tuple[int, int], tuple[str, str]] = {}
    for route_id, method_code, _stack, _samples, _count, size in heap.snapshot():
        key = names.get((route_id, method_code))
        if key is None:
            method = heap.METHOD_NAMES.get(method_code, "OTHER")
            if method_code == 0:
                key = ("", BACKGROUND_ROUTE)
            elif route_id == 0 or name_of is None:
                key = (method, UNMATCHED_ROUTE)
            else:
                key = (method, name_of(route_id, method) or UNMATCHED_ROUTE)
            names[(route_id, method_code)] = key
        out[key] = out.get(key, 0) + int(size)
    return out


def _threshold_bytes(profiler: Any) -> int:
    given = getattr(profiler, "threshold_bytes", None)
    if isinstance(given, (int, float)):
        return int(given)
    return int(float(getattr(profiler, "leak_threshold_mb", 0.0)) * _MB)


def read_state(profiler: Any, growth: GrowthRate | None = None) -> LiveState:
    """The profiler's numbers now. Cheap enough for every scrape; never raises for a stopped profiler."""
    import os

    stats = profiler.stats()
    rss = stats["rss_bytes"]
    baseline = int(stats["baseline_rss_bytes"] or 0)
    heap_live = stats["heap_live_bytes"]
    by_route = _route_heap_bytes(profiler) if heap_live is not None else {}
    routes = []
    for method, route, calls, errors, duration_sum in _route_counters(profiler):
        live = by_route.get((method, route)) if heap_live is not None else None
        routes.append(RouteState(method, route, calls, errors, duration_sum,
                                 live if live is not None or heap_live is None else 0))
    threshold = _threshold_bytes(profiler)
    return LiveState(
        active=bool(stats["active"]), pid=os.getpid(), rss_bytes=rss, baseline_rss_bytes=baseline,
        heap_live_bytes=heap_live, traced_bytes=stats["traced_bytes"], threshold_bytes=threshold,
        growth_bytes_per_s=growth.add(rss) if growth is not None else None,
        alerting=rss is not None and rss - baseline > threshold,
        routes=tuple(routes),
    )
