"""Owns no state: formats the human ``.log`` lines, on the writer thread, from :data:`schema.LOG_LINES`.

The formats, one table of them, are leakyspanner 0.1.x's, kept for grep habits; the reader
(``analysis/legacy.py``) matches the same table. Every string that may come
from outside (routes, methods, file names) goes through :func:`one_line`
first, so a ``%0A`` in a path can never start a new line. Runs on the writer
thread: plain ``str.format`` on prepared templates, nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..schema import LOG_LINES, LOG_RULE

__all__ = [
    "alert_line",
    "endpoint_line",
    "event_line",
    "header_lines",
    "one_line",
    "sample_line",
    "summary_lines",
    "top_allocation_lines",
]

_MB = 1024 * 1024
_MAX_FIELD = 200
# Translation table: C0 controls, DEL and C1 controls become visible escapes.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\x85"})


def one_line(text: object, limit: int = _MAX_FIELD) -> str:
    """``text`` as one line of the log: control characters escaped (a newline cannot start a line), length capped."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "…"
    return s.translate(_ESCAPES)


# kind -> (template, (value name, tail template), ...): looked up once per line on the writer thread.
_TEMPLATES = {kind: (line.template, tuple(line.tails.items())) for kind, line in LOG_LINES.items()}


def _format(kind: str, values: Mapping[str, Any] | None = None) -> str:
    """The line of ``kind``: its template, then every tail whose value is given (not None)."""
    template, tails = _TEMPLATES[kind]
    if values is None:
        return template
    text = template.format_map(values)
    for name, tail in tails:
        if values.get(name) is not None:
            text += tail.format_map(values)
    return text


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def header_lines(
    version: str, start_ts: float, platform: str, level: str, interval_s: float,
    threshold_mb: float, baseline_rss_bytes: int, jsonl_name: str,
) -> list[str]:
    return [
        LOG_RULE,
        _format("version", {"version": one_line(version, 40)}),
        _format("started", {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start_ts))}),
        _format("platform", {"platform": one_line(platform)}),
        _format("level", {"level": level, "interval_s": interval_s, "threshold_mb": threshold_mb}),
        _format("baseline", {"baseline_mb": baseline_rss_bytes / _MB}),
        _format("jsonl", {"jsonl": one_line(jsonl_name)}),
        LOG_RULE,
    ]


def sample_line(ts: float, rss_bytes: int, vms_bytes: int, delta_bytes: int, gc_count: tuple[int, ...]) -> str:
    return _format("sample", {"clock": _clock(ts), "rss_mb": rss_bytes / _MB, "vms_mb": vms_bytes / _MB,
                              "delta_mb": delta_bytes / _MB, "gc": tuple(gc_count)})


def endpoint_line(ts: float, method: str, route: str, delta_bytes: int, status: int) -> str:
    return _format("endpoint", {"clock": _clock(ts), "method": one_line(method, 16), "route": one_line(route),
                                "delta_mb": delta_bytes / _MB, "status": int(status)})


def alert_line(ts: float, growth_bytes: int, baseline_bytes: int, rss_bytes: int) -> str:
    return _format("alert", {"clock": _clock(ts), "growth_mb": growth_bytes / _MB,
                             "baseline_mb": baseline_bytes / _MB, "rss_mb": rss_bytes / _MB})


def event_line(event: object, detail: object) -> str:
    return _format("event", {"event": one_line(event), "detail": one_line(detail)})


def _size(n: float) -> str:
    if abs(n) >= _MB:
        return f"{n / _MB:.1f}MB"
    return f"{n / 1024:.1f}KB"


def top_allocation_lines(sites: Iterable[tuple[str, int, int, int]], limit: int = 5) -> list[str]:
    """``── top allocations ──`` block: (file, line, size_bytes, count) rows."""
    lines = [_format("allocations")]
    for i, (file, line, size, count) in enumerate(sites):
        if i >= limit:
            break
        lines.append(_format("allocation", {"size": _size(size), "count": count, "file": one_line(file, 300),
                                            "line": int(line)}))
    return lines


def _mb_or_na(n: float | None) -> str:
    return "n/a" if n is None else f"{n / _MB:+.2f}MB"


def summary_lines(summary: Mapping[str, Any], platform: str) -> list[str]:
    lines = [
        "",
        LOG_RULE,
        _format("summary"),
        LOG_RULE,
        _format("peak_rss", {"mb": summary["peak_rss_bytes"] / _MB}),
        _format("final_rss", {"mb": summary["final_rss_bytes"] / _MB}),
        _format("baseline_rss", {"mb": summary["baseline_rss_bytes"] / _MB}),
        _format("net_growth", {"mb": summary["net_growth_bytes"] / _MB}),
        _format("samples", {"samples": summary["samples"]}),
        _format("requests", {name: summary[name]
                             for name in ("requests_total", "requests_dropped", "internal_errors")}),
        _format("summary_platform", {"platform": one_line(platform)}),
        "",
        _format("endpoints"),
    ]
    for ep in summary["endpoints"]:
        avg, peak = ep["avg_delta_bytes"], ep["max_delta_bytes"]
        if avg is None or peak is None:
            avg = peak = None
        measured = ep.get("rss_measured", ep["calls"])
        lines.append(_format("summary_endpoint", {
            "method": one_line(ep["method"], 16), "route": one_line(ep["route"]), "calls": ep["calls"],
            "avg": _mb_or_na(avg), "max": _mb_or_na(peak),
            "measured": measured if measured < ep["calls"] else None,  # the tail only for sampled endpoints
        }))
    lines += [LOG_RULE, ""]
    return lines
