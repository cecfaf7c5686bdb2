"""Line formats of the human ``.log``, kept from leakyspanner 0.1.x for grep habits.

Every string that may come from outside (routes, methods, file names) goes
through :func:`clean` first, so a ``%0A`` in a path can never start a new line.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "alert_line",
    "clean",
    "endpoint_line",
    "header_lines",
    "sample_line",
    "summary_lines",
    "top_allocation_lines",
]

_MB = 1024 * 1024
_MAX_FIELD = 200
# Translation table: C0 controls, DEL and C1 controls become visible escapes.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\x85"})


def clean(text: object, limit: int = _MAX_FIELD) -> str:
    """One printable line: control characters escaped, length capped."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "…"
    return s.translate(_ESCAPES)


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def header_lines(
    version: str, start_ts: float, platform: str, level: str, interval_s: float,
    threshold_mb: float, baseline_rss_bytes: int, jsonl_name: str,
) -> list[str]:
    sep = "=" * 70
    return [
        sep,
        f"  LeakySpanner v{version}",
        f"  started  : {time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(start_ts))}",
        f"  platform : {clean(platform)}",
        f"  level    : {level}  interval={interval_s}s  threshold={threshold_mb}MB",
        f"  baseline : {baseline_rss_bytes / _MB:.2f} MB RSS",
        f"  jsonl    : {clean(jsonl_name)}",
        sep,
    ]


def sample_line(ts: float, rss_bytes: int, vms_bytes: int, delta_bytes: int, gc_count: tuple[int, ...]) -> str:
    delta = delta_bytes / _MB
    return (
        f"[{_clock(ts)}] RSS={rss_bytes / _MB:.1f}MB  VMS={vms_bytes / _MB:.1f}MB  "
        f"delta={delta:+.1f}MB  GC={tuple(gc_count)}"
    )


def endpoint_line(ts: float, method: str, route: str, delta_bytes: int, status: int) -> str:
    return (
        f"  [{_clock(ts)}] ENDPOINT {clean(method, 16)} {clean(route)}  "
        f"mem_delta={delta_bytes / _MB:+.2f}MB  status={int(status)}"
    )


def alert_line(ts: float, growth_bytes: int, baseline_bytes: int, rss_bytes: int) -> str:
    return (
        f"⚠️ [{_clock(ts)}] MEMORY GROWTH ALERT: {growth_bytes / _MB:+.1f} MB above baseline "
        f"(baseline={baseline_bytes / _MB:.1f} MB, current={rss_bytes / _MB:.1f} MB)"
    )


def _size(n: float) -> str:
    if abs(n) >= _MB:
        return f"{n / _MB:.1f}MB"
    return f"{n / 1024:.1f}KB"


def top_allocation_lines(sites: Iterable[tuple[str, int, int, int]], limit: int = 5) -> list[str]:
    """``── top allocations ──`` block: (file, line, size_bytes, count) rows."""
    lines = ["  ── top allocations ──"]
    for i, (file, line, size, count) in enumerate(sites):
        if i >= limit:
            break
        lines.append(f"    {_size(size)} × {count}  {clean(file, 300)}:{int(line)}")
    return lines


def summary_lines(summary: Mapping[str, Any], platform: str) -> list[str]:
    sep = "=" * 70
    lines = [
        "",
        sep,
        "  LEAKYSPANNER SESSION SUMMARY",
        sep,
        f"  Peak RSS    : {summary['peak_rss_bytes'] / _MB:.1f} MB",
        f"  Final RSS   : {summary['final_rss_bytes'] / _MB:.1f} MB",
        f"  Baseline RSS: {summary['baseline_rss_bytes'] / _MB:.1f} MB",
        f"  Net growth  : {summary['net_growth_bytes'] / _MB:+.1f} MB",
        f"  Samples     : {summary['samples']}",
        f"  Requests    : {summary['requests_total']}  dropped={summary['requests_dropped']}"
        f"  internal_errors={summary['internal_errors']}",
        f"  Platform    : {clean(platform)}",
        "",
        "  ENDPOINT MEMORY DELTAS (sorted by avg):",
    ]
    for ep in summary["endpoints"]:
        avg, peak = ep["avg_delta_bytes"], ep["max_delta_bytes"]
        deltas = ("avg=n/a  max=n/a" if avg is None or peak is None
                  else f"avg={avg / _MB:+.2f}MB  max={peak / _MB:+.2f}MB")
        measured = ep.get("rss_measured", ep["calls"])
        lines.append(
            f"    {clean(ep['method'], 16):6} {clean(ep['route']):<40} calls={ep['calls']:4}  {deltas}"
            + (f"  (RSS measured on {measured})" if measured < ep["calls"] else "")
        )
    lines += [sep, ""]
    return lines
