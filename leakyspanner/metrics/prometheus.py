"""Prometheus metrics of a live profiler, through ``prometheus_client``.

Single process (no ``PROMETHEUS_MULTIPROC_DIR``): :func:`register` adds a
collector that reads the profiler when Prometheus scrapes, so the numbers are
as fresh as the scrape and cost nothing in between.

Several worker processes (gunicorn) with ``PROMETHEUS_MULTIPROC_DIR`` set: a
scrape reaches one worker, so a collector in that worker would show its own
numbers only. Instead each worker copies its numbers into prometheus_client's
multiprocess files every ``interval_s`` (a ``leakyspanner-metrics`` thread),
and :func:`asgi_app` serves the merge of every worker's files: request
counters are summed over workers (each request is counted by the one worker
that served it, so nothing is counted twice), and per-process gauges (RSS,
heap, growth, alert) carry a ``pid`` label, one series per live worker. Call
``prometheus_client.multiprocess.mark_process_dead(pid)`` from gunicorn's
``child_exit`` hook, as for any multiprocess prometheus_client app. With
``--preload``, call :func:`register` in gunicorn's ``post_fork`` hook: a
thread started before the fork does not run in the workers (the profiler's
own snapshot children fork too, so no thread is restarted behind your back).

Labels are ``method`` and ``route`` with the route template (``/items/{item_id}``),
never the raw path, so a flood of random URLs cannot grow the series.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import MissingExtraError
from .state import GrowthRate, LiveState, read_state

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test in a fresh interpreter
    raise MissingExtraError("leakyspanner.metrics.prometheus needs prometheus_client: "
                      "pip install 'leakyspanner[prometheus]'") from exc

__all__ = ["LeakyspannerCollector", "MultiprocessExporter", "asgi_app", "multiprocess_dir", "register"]

_log = logging.getLogger("leakyspanner")
_LABELS = ("method", "route")

#: name (without prefix) -> help; the one place the metric names are spelled.
_HELP = {
    "process_resident_memory_bytes": "Resident set size of the profiled process.",
    "process_resident_memory_baseline_bytes": "Resident set size when the profiling session started.",
    "heap_live_bytes": "Live Python heap estimated by the sampled heap engine.",
    "traced_memory_bytes": "Memory traced by tracemalloc (when tracing).",
    "memory_growth_bytes_per_second": "RSS growth rate: least-squares slope over the last minutes.",
    "memory_growth_alert": "1 while RSS is more than the leak threshold above the baseline.",
    "memory_growth_threshold_bytes": "The leak threshold: RSS growth over the baseline that raises the alert.",
    "requests": "Requests completed, per route template.",
    "request_errors": "Requests that ended with status >= 500, per route template.",
    "request_duration_seconds": "Request duration, per route template.",
    "route_heap_live_bytes": "Live Python heap allocated in a route's requests (sampled heap engine).",
}
_PREFIX = "leakyspanner_"


def _process_gauges(state: LiveState) -> dict[str, float | None]:
    return {
        "process_resident_memory_bytes": state.rss_bytes,
        "process_resident_memory_baseline_bytes": state.baseline_rss_bytes,
        "heap_live_bytes": state.heap_live_bytes,
        "traced_memory_bytes": state.traced_bytes,
        "memory_growth_bytes_per_second": state.growth_bytes_per_s,
        "memory_growth_alert": float(state.alerting),
        "memory_growth_threshold_bytes": state.threshold_bytes,
    }


class LeakyspannerCollector:
    """A ``prometheus_client`` collector reading one profiler at scrape time."""

    def __init__(self, profiler: Any, growth: GrowthRate | None = None) -> None:
        self.profiler = profiler
        self.growth = growth or GrowthRate()

    def describe(self) -> list[Any]:
        return []  # no samples at registration: the profiler may not have started yet

    def collect(self) -> Iterator[Any]:
        try:
            state = read_state(self.profiler, self.growth)
        except Exception as exc:  # a scrape must never fail because of us
            _log.warning("leakyspanner: metrics could not be read: %s: %s", type(exc).__name__, exc)
            return
        for name, value in _process_gauges(state).items():
            if value is not None:
                yield GaugeMetricFamily(_PREFIX + name, _HELP[name], value=value)
        requests = CounterMetricFamily(_PREFIX + "requests", _HELP["requests"], labels=_LABELS)
        errors = CounterMetricFamily(_PREFIX + "request_errors", _HELP["request_errors"], labels=_LABELS)
        duration = SummaryMetricFamily(_PREFIX + "request_duration_seconds", _HELP["request_duration_seconds"],
                                       labels=_LABELS)
        heap = GaugeMetricFamily(_PREFIX + "route_heap_live_bytes", _HELP["route_heap_live_bytes"], labels=_LABELS)
        for route in state.routes:
            labels = [route.method, route.route]
            requests.add_metric(labels, route.calls)
            errors.add_metric(labels, route.errors)
            duration.add_metric(labels, count_value=route.calls, sum_value=route.duration_s_sum)
            if route.heap_live_bytes is not None:
                heap.add_metric(labels, route.heap_live_bytes)
        yield from (requests, errors, duration)
        if state.heap_live_bytes is not None:
            yield heap


class MultiprocessExporter:
    """Copies one worker's numbers into prometheus_client's multiprocess files every ``interval_s``.

    Counters advance by what the profiler counted since the previous copy, so
    the merged value is the sum over workers of each worker's own requests.
    """

    def __init__(self, profiler: Any, interval_s: float = 5.0, registry: Any = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        self.profiler = profiler
        self.interval_s = float(interval_s)
        self.growth = GrowthRate()
        registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self._gauges = {name: prometheus_client.Gauge(_PREFIX + name, _HELP[name], registry=registry,
                                                      multiprocess_mode="liveall")
                        for name in _process_gauges(_EMPTY)}
        self._requests = prometheus_client.Counter(_PREFIX + "requests", _HELP["requests"], _LABELS,
                                                   registry=registry)
        self._errors = prometheus_client.Counter(_PREFIX + "request_errors", _HELP["request_errors"], _LABELS,
                                                 registry=registry)
        self._duration = prometheus_client.Summary(_PREFIX + "request_duration_seconds",
                                                   _HELP["request_duration_seconds"], _LABELS, registry=registry)
        self._heap = prometheus_client.Gauge(_PREFIX + "route_heap_live_bytes", _HELP["route_heap_live_bytes"],
                                             _LABELS, registry=registry, multiprocess_mode="liveall")
        self._seen: dict[tuple[str, str], tuple[int, int, float]] = {}
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> None:
        """Copy the numbers now (the thread calls this every ``interval_s``)."""
        state = read_state(self.profiler, self.growth)
        for name, value in _process_gauges(state).items():
            if value is not None:
                self._gauges[name].set(value)
        for route in state.routes:
            key = (route.method, route.route)
            calls, errors, duration = self._seen.get(key, (0, 0, 0.0))
            if route.calls > calls:
                self._requests.labels(*key).inc(route.calls - calls)
                # the Summary's count and sum: one observation carrying the interval's total duration
                # would count one call, so the count and sum are advanced through its children directly
                child = self._duration.labels(*key)
                child._count.inc(route.calls - calls)
                child._sum.inc(max(0.0, route.duration_s_sum - duration))
            if route.errors > errors:
                self._errors.labels(*key).inc(route.errors - errors)
            self._seen[key] = (route.calls, route.errors, route.duration_s_sum)
            if route.heap_live_bytes is not None:
                self._heap.labels(*key).set(route.heap_live_bytes)

    def start(self) -> MultiprocessExporter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="leakyspanner-metrics", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread after one last copy (idempotent)."""
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            stopped = self._stopped.is_set()  # set during the wait: one last copy, then out
            try:
                self.sync()
            except Exception as exc:  # one failed copy is logged; the next one may work
                _log.warning("leakyspanner: metrics copy failed: %s: %s", type(exc).__name__, exc)
            if stopped:
                return
            self._stopped.wait(self.interval_s)


_EMPTY = LiveState(active=False, pid=0, rss_bytes=None, baseline_rss_bytes=0, heap_live_bytes=None,
                   traced_bytes=None, threshold_bytes=0, growth_bytes_per_s=None, alerting=False, routes=())


def multiprocess_dir() -> str | None:
    """The ``PROMETHEUS_MULTIPROC_DIR`` prometheus_client writes to, when set."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


def register(profiler: Any, registry: Any = None, *, interval_s: float = 5.0
             ) -> LeakyspannerCollector | MultiprocessExporter:
    """Expose ``profiler``'s numbers to Prometheus; returns what was set up.

    Without ``PROMETHEUS_MULTIPROC_DIR``: a :class:`LeakyspannerCollector` in
    ``registry`` (the default registry when None), read at scrape time. With
    it: a started :class:`MultiprocessExporter` (call ``stop()`` at shutdown).
    """
    if profiler is None:
        raise ValueError("register() needs the Profiler that leakyspanner(app) returned, got None "
                         "(leakyspanner(app, enabled=False) returns None: register only when enabled)")
    if multiprocess_dir():
        return MultiprocessExporter(profiler, interval_s=interval_s).start()
    collector = LeakyspannerCollector(profiler)
    (registry if registry is not None else prometheus_client.REGISTRY).register(collector)
    return collector


def asgi_app(registry: Any = None) -> Any:
    """An ASGI app serving ``/metrics``: the merged worker files in multiprocess mode, else ``registry``."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
    return prometheus_client.make_asgi_app(registry=registry if registry is not None else prometheus_client.REGISTRY)
