"""OpenTelemetry metrics of a live profiler, through the OTel SDK.

:func:`instrument` registers observable instruments whose callbacks read the
profiler when the SDK's reader collects (every export interval), so nothing
runs in between. :func:`otlp_meter_provider` builds a ``MeterProvider`` that
exports over OTLP/HTTP, configured entirely by the standard variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_METRIC_EXPORT_INTERVAL``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``...).

Names follow OTel's conventions (dotted, unit in ``unit``, not in the name):
``leakyspanner.process.memory.usage`` (By), ``leakyspanner.heap.live`` (By),
``leakyspanner.requests`` ({request}), ``leakyspanner.request.errors``,
``leakyspanner.request.duration`` (s, the total), ``leakyspanner.route.heap.live``
(By), ``leakyspanner.memory.growth.rate`` (By/s), ``leakyspanner.memory.growth.alert``.
Per-route attributes are ``http.request.method`` and ``http.route`` (templates only).
Each process exports its own numbers with its own resource (``process.pid``), so
workers never double count: sum the counters over processes in the backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import MissingExtraError
from .state import GrowthRate, LiveState, read_state

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test in a fresh interpreter
    raise MissingExtraError("leakyspanner.metrics.otel needs the OpenTelemetry SDK: "
                      "pip install 'leakyspanner[otel]'") from exc

__all__ = ["instrument", "otlp_meter_provider"]

_log = logging.getLogger("leakyspanner")
_METHOD, _ROUTE = "http.request.method", "http.route"


class _Reader:
    """One state per collection: every callback of a collection reads the same snapshot."""

    def __init__(self, profiler: Any, max_age_s: float = 0.5) -> None:
        self.profiler = profiler
        self.growth = GrowthRate()
        self.max_age_s = max_age_s
        self._state: LiveState | None = None
        self._at = float("-inf")
        self._lock = threading.Lock()

    def state(self) -> LiveState | None:
        with self._lock:
            now = time.monotonic()
            if self._state is None or now - self._at > self.max_age_s:
                try:
                    self._state = read_state(self.profiler, self.growth)
                except Exception as exc:  # an export must never fail because of us
                    _log.warning("leakyspanner: metrics could not be read: %s: %s", type(exc).__name__, exc)
                    self._state = None
                self._at = now
            return self._state


def _process(reader: _Reader, pick: Callable[[LiveState], float | None]
             ) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        state = reader.state()
        value = pick(state) if state is not None else None
        return [Observation(value)] if value is not None else []
    return callback


def _per_route(reader: _Reader, pick: Callable[[Any], float | None]
               ) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        state = reader.state()
        out = []
        for route in state.routes if state is not None else ():
            value = pick(route)
            if value is not None:
                out.append(Observation(value, {_METHOD: route.method, _ROUTE: route.route}))
        return out
    return callback


def instrument(profiler: Any, meter_provider: Any = None) -> Any:
    """Register observable instruments for ``profiler`` on ``meter_provider`` (the global one when None).

    Returns the ``Meter`` used. The instruments live as long as the provider.
    """
    if profiler is None:
        raise ValueError("instrument() needs the Profiler that leakyspanner(app) returned, got None "
                         "(leakyspanner(app, enabled=False) returns None: instrument only when enabled)")
    from .. import __version__

    provider = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
    meter = provider.get_meter("leakyspanner", __version__)
    reader = _Reader(profiler)
    gauges = {
        "leakyspanner.process.memory.usage": ("By", "Resident set size of the process.",
                                              lambda s: s.rss_bytes),
        "leakyspanner.process.memory.baseline": ("By", "Resident set size when the session started.",
                                                 lambda s: s.baseline_rss_bytes),
        "leakyspanner.heap.live": ("By", "Live Python heap estimated by the sampled heap engine.",
                                   lambda s: s.heap_live_bytes),
        "leakyspanner.traced.memory": ("By", "Memory traced by tracemalloc.", lambda s: s.traced_bytes),
        "leakyspanner.memory.growth.rate": ("By/s", "RSS growth: least-squares slope over the last minutes.",
                                            lambda s: s.growth_bytes_per_s),
        "leakyspanner.memory.growth.alert": ("1", "1 while RSS is more than the leak threshold above baseline.",
                                             lambda s: int(s.alerting)),
        "leakyspanner.memory.growth.threshold": ("By", "RSS growth over the baseline that raises the alert.",
                                                 lambda s: s.threshold_bytes),
    }
    for name, (unit, description, pick) in gauges.items():
        meter.create_observable_gauge(name, callbacks=[_process(reader, pick)], unit=unit,
                                      description=description)
    counters = {
        "leakyspanner.requests": ("{request}", "Requests completed, per route template.", lambda r: r.calls),
        "leakyspanner.request.errors": ("{request}", "Requests that ended with status >= 500.",
                                        lambda r: r.errors),
        "leakyspanner.request.duration": ("s", "Total time spent in requests, per route template.",
                                          lambda r: r.duration_s_sum),
    }
    for name, (unit, description, pick) in counters.items():
        meter.create_observable_counter(name, callbacks=[_per_route(reader, pick)], unit=unit,
                                        description=description)
    meter.create_observable_gauge("leakyspanner.route.heap.live", callbacks=[_per_route(
        reader, lambda r: r.heap_live_bytes)], unit="By",
        description="Live Python heap allocated in a route's requests (sampled heap engine).")
    return meter


def otlp_meter_provider(**kwargs: Any) -> Any:
    """A ``MeterProvider`` exporting over OTLP/HTTP, configured by the ``OTEL_*`` variables.

    ``kwargs`` go to ``MeterProvider`` (``resource=...``). Shut it down at exit
    (``provider.shutdown()``) to export the last numbers.
    """
    import os

    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
    except ImportError as exc:
        raise MissingExtraError("OTLP export needs the OpenTelemetry SDK and OTLP exporter: "
                          "pip install 'leakyspanner[otel]'") from exc
    # Resource.create() reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the pid keeps workers apart
    resource = kwargs.pop("resource", None) or Resource.create({"process.pid": os.getpid()})
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())  # interval: OTEL_METRIC_EXPORT_INTERVAL
    return MeterProvider(metric_readers=[reader], resource=resource, **kwargs)
