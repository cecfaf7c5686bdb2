"""Synthetic sessions with known truth, written in the schema's format."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from leakyspanner import schema

MB = 1024 * 1024
START = 1_700_000_000.0


def write_session(
    path: Path,
    rss: Sequence[float],
    *,
    traced: Sequence[float] | None = None,
    calls: dict[str, Sequence[int]] | None = None,
    extra: Callable[[int], dict] | None = None,
    interval_s: float = 5.0,
    name: str = "leakyspanner_20231114_221320",
) -> Path:
    """One session whose samples follow ``rss`` (bytes); ``calls[route][k]`` requests in interval k."""
    calls = calls or {}
    lines = [json.dumps({
        "kind": "header", "format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION,
        "session_id": name, "pid": 1, "host": "h", "python": "3.11", "platform": "p",
        "level": "mid" if traced is not None else "basic", "config": {"interval_seconds": interval_s},
        "start_ts": START, "baseline_rss_bytes": int(rss[0]), "request_fields": list(schema.REQUEST_FIELDS)})]
    for k, value in enumerate(rss):
        ts = START + (k + 1) * interval_s
        for route, per_interval in calls.items():
            n = int(per_interval[k])
            for i in range(n):
                t0 = ts - interval_s + (i + 0.5) * interval_s / max(n, 1)
                lines.append(json.dumps([schema.REQUEST_TAG, t0, "GET", route, 200, 0.001, int(value), int(value),
                                         None, None, 1, 1]))
            if n:
                lines.append(json.dumps({"kind": "endpoint_interval", "ts_start": ts - interval_s, "ts": ts, "seq": k,
                                         "method": "GET", "route": route, "calls": n, "errors": 0}))
        sample = {"kind": "sample", "ts": ts, "seq": k, "rss_bytes": int(value), "vms_bytes": int(2 * value),
                  "rss_delta_bytes": int(value - rss[0]), "gc_count": [0, 0, 0], "gc_collections": [0, 0, 0],
                  "gc_collected": [0, 0, 0], "gc_uncollectable": [0, 0, 0], "gc_garbage": 0,
                  "tracing": traced is not None, "traced_bytes": None if traced is None else int(traced[k]),
                  "threads": 3, "open_fds": 10, "asyncio_tasks": 2, "asyncio_tasks_by_coro": {"Server.serve": 1}}
        if extra:
            sample.update(extra(k))
        lines.append(json.dumps(sample))
    path.mkdir(parents=True, exist_ok=True)
    out = path / f"{name}.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def noisy(values: np.ndarray, sd: float, seed: int = 0) -> np.ndarray:
    return values + np.random.default_rng(seed).normal(0, sd, len(values))
