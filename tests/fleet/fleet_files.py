"""Small generated sessions for the fleet tests: JSON-lines as capture writes them, seeded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from leakyspanner import schema

MB = 1024 * 1024
ROUTES = (("POST", "/orders/{order_id}"), ("GET", "/items/{item_id}"), ("GET", "/health"), ("GET", "/export"))


def _record(kind: str, **values: Any) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(schema.FIELDS[kind])
    record.update(values, kind=kind)
    return record


def write_session(directory: Path, sid: str, host: str, start_ts: float, leaks: dict[str, int] | None = None,
                  requests: int = 1500, samples: int = 60, interval_s: float = 60.0, seed: int = 0,
                  heap: bool = False, routes: tuple[tuple[str, str], ...] = ROUTES) -> Path:
    """A session of ``samples`` samples; ``leaks`` maps a route to the bytes each of its calls keeps.

    ``routes``: four (method, route) pairs, called 30%, 40%, 25% and 5% of the time.
    """
    rng = np.random.default_rng(seed)
    leaks = leaks or {}
    duration = samples * interval_s
    ts = start_ts + np.sort(rng.uniform(0, duration, requests))
    route = rng.choice(len(routes), requests, p=[0.3, 0.4, 0.25, 0.05])
    kept = np.array([leaks.get(routes[r][1], 0) for r in route], dtype=np.int64)
    noise = rng.choice(np.array([-4096, 0, 0, 4096]), requests)
    baseline = 150 * MB
    held = np.cumsum(kept)
    before = baseline + held - kept
    lines = [json.dumps(_record(
        "header", format=schema.FORMAT_NAME, schema_version=schema.SCHEMA_VERSION, session_id=sid,
        leakyspanner_version="0.2.0", pid=100, host=host, python="3.11", platform="Linux",
        level="mid" if heap else "basic", config={"interval_seconds": interval_s, "leak_threshold_mb": 50.0},
        start_ts=start_ts, baseline_rss_bytes=baseline, baseline_vms_bytes=baseline, memory_reader="statm",
        request_fields=list(schema.REQUEST_FIELDS), request_records="measured",
        heap_engine="sampler" if heap else "none"))]
    j = 0
    for s in range(samples):
        t = start_ts + (s + 1) * interval_s
        live_by_route = {name: 0 for _, name in routes}
        while j < requests and ts[j] <= t:
            r = int(route[j])
            lines.append(json.dumps([schema.REQUEST_TAG, round(float(ts[j]), 4), routes[r][0], routes[r][1],
                                     200, 0.01, int(before[j]), int(before[j] + kept[j] + noise[j]), None, None,
                                     1, 1]))
            j += 1
        rss = baseline + int(held[j - 1]) if j else baseline
        lines.append(json.dumps(_record("sample", ts=t, seq=s, rss_bytes=rss, vms_bytes=rss,
                                        rss_delta_bytes=rss - baseline, requests_total=j, tracing=False)))
        if heap:
            for r, (_method, name) in enumerate(routes):
                live_by_route[name] = int(kept[:j][route[:j] == r].sum()) + 50_000
            lines.append(json.dumps(_record(
                "heap", ts=t, seq=s, engine="sampler", sample_bytes=65536, max_frames=8, live_bytes=sum(
                    live_by_route.values()), live_samples=1, samples_total=1, samples_dropped=0, engine_bytes=1,
                cost_s=0.001, endpoint_fields=list(schema.HEAP_ENDPOINT_FIELDS),
                endpoints=[[m, n, live_by_route[n], 1, 1] for m, n in routes], site_fields=list(schema.HEAP_SITE_FIELDS),
                sites=[])))
    final = baseline + int(held[-1])
    lines.append(json.dumps(_record("summary", ts=start_ts + duration, duration_s=duration,
                                    baseline_rss_bytes=baseline, peak_rss_bytes=final, final_rss_bytes=final,
                                    net_growth_bytes=final - baseline, samples=samples, requests_total=requests,
                                    request_records=requests, requests_dropped=0, internal_errors=0, endpoints=[])))
    path = directory / f"{sid}{schema.JSONL_SUFFIX}"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_fleet(directory: Path, hosts: int = 6, leaky_hosts: int = 5, outlier: int | None = 2,
                start_ts: float = 1_780_000_000.0, **kwargs: Any) -> list[Path]:
    """One session per host; /orders leaks 8 KB per call on the first ``leaky_hosts``, /export
    leaks 200 KB per call on host ``outlier`` only."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for h in range(hosts):
        leaks = {"/orders/{order_id}": 8192} if h < leaky_hosts else {}
        if h == outlier:
            leaks["/export"] = 200_000
        paths.append(write_session(directory, f"leakyspanner_20260101_0000{h:02d}", f"web-{h}", start_ts + h * 3600,
                                   leaks, seed=h, **kwargs))
    return paths
