"""Synthetic sessions written the way the capture side writes them, from the schema's constants."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from leakyspanner import schema

MB = 1024 * 1024
START_TS = 1_700_000_000.0


def blank(kind: str, **values: Any) -> dict[str, Any]:
    """A record of ``kind`` with every schema field present and neutral, then ``values`` on top."""
    record: dict[str, Any] = {}
    neutral = {"int": 0, "float": 0.0, "bool": False, "str": ""}
    for name, f in schema.FIELDS[kind].items():
        if f.type == "list":
            record[name] = [0] * f.length if f.length is not None else []
        elif f.type == "object":
            record[name] = {}
        else:
            record[name] = None if f.null and f.type == "int" else neutral[f.type]
    record["kind"] = kind
    record.update(values)
    return record


def request(request_fields: Sequence[str] = schema.REQUEST_FIELDS, **values: Any) -> list[Any]:
    """A request record array, its values placed by ``request_fields``."""
    return [schema.REQUEST_TAG, *(values.get(name) for name in request_fields)]


def synthetic_session(
    *,
    start_ts: float = START_TS,
    pid: int = 4242,
    samples: int = 4,
    interval_s: float = 5.0,
    requests_per_sample: int = 3,
    routes: Sequence[str] = ("/items/{item_id}", "/users"),
    growth_per_sample_bytes: int = MB,
    baseline_rss_bytes: int = 100 * MB,
    snapshots: bool = True,
    alert_after: int | None = None,
    complete: bool = True,
    request_fields: Sequence[str] = schema.REQUEST_FIELDS,
    schema_version: int = schema.SCHEMA_VERSION,
) -> list[Any]:
    """The records of one session, header first, in writing order."""
    session_id = schema.session_stem(start_ts, pid)
    records: list[Any] = [blank(
        "header", format=schema.FORMAT_NAME, schema_version=schema_version, session_id=session_id,
        leakyspanner_version="0.2.0", pid=pid, host="testhost", python="3.11.7", platform="Linux",
        level="deep", config={"interval_seconds": interval_s, "leak_threshold_mb": 50.0},
        start_ts=start_ts, baseline_rss_bytes=baseline_rss_bytes, baseline_vms_bytes=400 * MB,
        memory_reader="statm", request_fields=list(request_fields))]
    total = 0
    rss = baseline_rss_bytes
    for seq in range(samples):
        ts = start_ts + (seq + 1) * interval_s
        counts: dict[tuple[str, str], list[Any]] = {}  # (method, route) -> calls, errors, duration sum, measured
        for i in range(requests_per_sample):
            total += 1
            key = ("GET" if i % 2 == 0 else "POST", routes[i % len(routes)])
            count = counts.setdefault(key, [0, 0, 0.0, 0, 0])
            count[0] += 1
            count[1] += 0 if i else 1
            count[2] += 0.01 * (i + 1)
            count[3] += 4096 * (i + 1)
            count[4] = max(count[4], 4096 * (i + 1))
            records.append(request(
                request_fields, ts=ts - interval_s + i * 0.1, method="GET" if i % 2 == 0 else "POST",
                route=routes[i % len(routes)], status=200 if i else 500, duration_s=0.01 * (i + 1),
                rss_before_bytes=rss, rss_after_bytes=rss + 4096 * (i + 1),
                traced_before_bytes=None if i == 0 else 1000, traced_after_bytes=None if i == 0 else 1500,
                inflight_start=1, inflight_end=1))
        rss = baseline_rss_bytes + (seq + 1) * growth_per_sample_bytes
        records.append(blank(
            "sample", ts=ts, seq=seq, rss_bytes=rss, vms_bytes=400 * MB, rss_delta_bytes=rss - baseline_rss_bytes,
            gc_count=[seq, 1, 2], gc_collections=[10 + seq, 2, 1], tracing=True, traced_bytes=1000 * seq,
            threads=3, asyncio_tasks=2, asyncio_tasks_by_coro={"serve": 1, "worker": 1 + seq},
            requests_total=total, inflight=0))
        for (method, route), (calls, errors, duration_sum, delta_sum, delta_max) in counts.items():
            records.append(blank(
                "endpoint_interval", ts_start=ts - interval_s, ts=ts, seq=seq, method=method, route=route,
                calls=calls, errors=errors, duration_s_sum=round(duration_sum, 6), rss_measured=calls,
                rss_delta_bytes_sum=delta_sum, rss_delta_bytes_max=delta_max))
        if snapshots:
            records.append(blank(
                "snapshot", ts=ts, seq=seq, traced_bytes=5000 + seq, blocks=10, sites_total=2, frames=2,
                site_fields=list(schema.SITE_FIELDS),
                sites=[["app/leak.py", 12, 4096 * (seq + 1), seq + 1, 4096, 1], ["app/ok.py", 3, 100, 1, 0, 0]],
                traces=[{"size_bytes": 4096 * (seq + 1), "count": seq + 1,
                         "frames": [["app/leak.py", 12], ["app/main.py", 40]]}]))
        if alert_after is not None and seq >= alert_after:
            records.append(blank("alert", ts=ts, alert="memory_growth", rss_bytes=rss,
                                 baseline_rss_bytes=baseline_rss_bytes, growth_bytes=rss - baseline_rss_bytes,
                                 threshold_bytes=50 * MB))
    records.append(blank("event", ts=start_ts + 1, event="tracing_started", detail="frames=2"))
    if complete:
        end_ts = start_ts + samples * interval_s + 1
        records.append(blank(
            "summary", ts=end_ts, duration_s=end_ts - start_ts, baseline_rss_bytes=baseline_rss_bytes,
            peak_rss_bytes=rss + MB, final_rss_bytes=rss, net_growth_bytes=rss - baseline_rss_bytes,
            samples=samples, requests_total=total, requests_dropped=0, internal_errors=0,
            endpoints=[{"method": "GET", "route": routes[0], "calls": total, "errors": 1,
                        "avg_delta_bytes": 4096, "max_delta_bytes": 8192,
                        "avg_duration_s": 0.02, "max_duration_s": 0.03}]))
    return records


def write_records(path: Path, records: Sequence[Any]) -> Path:
    """One JSON value per line, compact like the writer's, newline-terminated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    return path


@pytest.fixture
def write_session(tmp_path: Path) -> Callable[..., Path]:
    """``write_session(directory=None, **synthetic_session params) -> path`` of a new .jsonl."""

    def write(directory: Path | None = None, **params: Any) -> Path:
        records = synthetic_session(**params)
        stem = records[0]["session_id"]
        return write_records((directory or tmp_path) / f"{stem}{schema.JSONL_SUFFIX}", records)

    return write


@pytest.fixture
def synth() -> SimpleNamespace:
    """The builders above, for tests that assemble or damage records themselves."""
    return SimpleNamespace(blank=blank, request=request, session=synthetic_session, write=write_records,
                           MB=MB, START_TS=START_TS)
