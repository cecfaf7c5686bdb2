"""Live metrics from a running profiler, for the monitoring a service already has.

Each integration is an optional extra and imports its library only when used:

* :mod:`leakyspanner.metrics.prometheus` (``pip install 'leakyspanner[prometheus]'``)
* :mod:`leakyspanner.metrics.otel` (``pip install 'leakyspanner[otel]'``)

Both read the same :class:`~leakyspanner.metrics.state.LiveState`, taken when
the scraper or the exporter asks, never on the request path.
"""

from __future__ import annotations

__all__: list[str] = []
