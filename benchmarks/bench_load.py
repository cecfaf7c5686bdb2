"""Time ``leakyspanner.analysis.load`` on a large synthetic session against ``pandas.read_json``.

The session is written the way the capture side writes it (header, request
arrays, samples, interval rows, snapshots, summary), all from the schema's
constants. ``pandas.read_json(lines=True)`` cannot read that file at all: it
mixes arrays and objects. So pandas reads the nearest thing it can, the same
requests written one JSON object per line, and the output says so.

    python benchmarks/bench_load.py [--requests N] [--repeat K]
    python -m benchmarks.bench_load [--requests N] [--repeat K]

Appends one result to ``benchmarks/results/load.json`` (a JSON list, newest last).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from leakyspanner import schema
from leakyspanner.analysis import load

try:
    from . import _common as common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]

RESULTS = common.RESULTS_DIR / "load.json"
START_TS = 1_700_000_000.0
REQUESTS_PER_SAMPLE = 1000
ROUTES = ("/items/{item_id}", "/users", "/users/{user_id}/orders", "/health", schema.UNMATCHED_ROUTE)
METHODS = ("GET", "GET", "POST", "GET", "DELETE")
MB = 1024 * 1024


def _record(kind: str, **values: Any) -> dict[str, Any]:
    """A record with every schema field of ``kind``, null unless given."""
    record: dict[str, Any] = dict.fromkeys(schema.FIELDS[kind])
    record.update(values, kind=kind)
    return record


def _request(i: int, ts: float, rss: int) -> dict[str, Any]:
    values = {
        "ts": round(ts, 6), "method": METHODS[i % 5], "route": ROUTES[i % 5], "status": 500 if i % 97 == 0 else 200,
        "duration_s": round(0.001 + (i % 50) / 1000, 6), "rss_before_bytes": rss, "rss_after_bytes": rss + (i % 3) * 4096,
        "traced_before_bytes": None if i % 10 == 0 else 5 * MB + i, "traced_after_bytes": None if i % 10 == 0 else 5 * MB + i + 512,
        "inflight_start": 1 + i % 4, "inflight_end": 1 + i % 3,
    }
    return values


def session_records(requests: int) -> Iterator[tuple[str, Any]]:
    """(kind, record) in writing order; requests as dicts keyed by REQUEST_FIELDS."""
    yield "header", _record(
        "header", format=schema.FORMAT_NAME, schema_version=schema.SCHEMA_VERSION, session_id="bench",
        leakyspanner_version="bench", pid=1, host="bench", python=platform.python_version(),
        platform=sys.platform, level="mid", config={"interval_seconds": 5.0, "leak_threshold_mb": 50.0},
        start_ts=START_TS, baseline_rss_bytes=100 * MB, baseline_vms_bytes=400 * MB,
        memory_reader="statm", request_fields=list(schema.REQUEST_FIELDS))
    rss, seq, ts = 100 * MB, 0, START_TS
    for i in range(requests):
        ts = START_TS + i * 0.005
        yield "request", _request(i, ts, rss)
        if (i + 1) % REQUESTS_PER_SAMPLE == 0:
            rss += 4096
            yield "sample", _record(
                "sample", ts=ts, seq=seq, rss_bytes=rss, vms_bytes=400 * MB, rss_delta_bytes=rss - 100 * MB,
                gc_count=[1, 2, 3], gc_collections=[10, 2, 1], gc_collected=[5, 1, 0], gc_uncollectable=[0, 0, 0],
                gc_garbage=0, tracing=True, traced_bytes=5 * MB, threads=4, asyncio_tasks=3,
                asyncio_tasks_by_coro={"serve": 1, "handler": 2}, inflight=1, requests_total=i + 1,
                requests_dropped=0, internal_errors=0)
            yield "endpoint_interval", _record(
                "endpoint_interval", ts_start=ts - 5, ts=ts, seq=seq, method="GET", route=ROUTES[0],
                calls=REQUESTS_PER_SAMPLE, errors=0, duration_s_sum=1.0, duration_s_max=0.05,
                rss_delta_bytes_sum=4096, rss_delta_bytes_max=4096, traced_delta_bytes_sum=512)
            yield "snapshot", _record(
                "snapshot", ts=ts, seq=seq, traced_bytes=5 * MB, blocks=1000, sites_total=50, frames=1,
                cost_s=0.01, take_s=0.005, site_fields=list(schema.SITE_FIELDS),
                sites=[[f"app/mod{k}.py", k, 4096 * k, k, 64, 1] for k in range(1, 21)], traces=[])
            seq += 1
    yield "summary", _record(
        "summary", ts=ts + 1, duration_s=ts + 1 - START_TS, baseline_rss_bytes=100 * MB, peak_rss_bytes=rss,
        final_rss_bytes=rss, net_growth_bytes=rss - 100 * MB, samples=seq, requests_total=requests,
        requests_dropped=0, internal_errors=0, endpoints=[])


def write_files(directory: Path, requests: int) -> tuple[Path, Path]:
    """The session as written (mixed arrays and objects) and its requests as objects, one per line."""
    session = directory / f"bench{schema.JSONL_SUFFIX}"
    objects = directory / "requests_as_objects.jsonl"
    if set(_request(0, START_TS, 0)) != set(schema.REQUEST_FIELDS):
        raise SystemExit(f"schema.REQUEST_FIELDS changed to {schema.REQUEST_FIELDS}: update _request()")
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with session.open("w") as mixed, objects.open("w") as plain:
        for kind, record in session_records(requests):
            if kind == "request":
                mixed.write(dumps([schema.REQUEST_TAG, *(record[f] for f in schema.REQUEST_FIELDS)]) + "\n")
                plain.write(dumps(record) + "\n")
            else:
                mixed.write(dumps(record) + "\n")
    return session, objects


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        result = None  # free the previous result before timing the next run
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000, help="request records (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per reader; the best counts (default 3)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="leakyspanner-bench-") as tmp:
        started = time.perf_counter()
        session, objects = write_files(Path(tmp), args.requests)
        print(f"wrote {args.requests:,} requests in {time.perf_counter() - started:.1f}s: "
              f"{session.stat().st_size / MB:.0f} MB session, {objects.stat().st_size / MB:.0f} MB as objects")

        load_s, loaded = best_of(args.repeat, lambda: load(session))
        pandas_s, frame = best_of(args.repeat, lambda: pd.read_json(objects, lines=True))
        if not len(loaded.requests) == len(frame) == args.requests:
            raise SystemExit(f"row counts differ: load {len(loaded.requests)}, read_json {len(frame)}")
        del loaded, frame

    ratio = pandas_s / load_s
    print(f"leakyspanner.analysis.load(session)              {load_s:7.2f}s  (all frames, typed columns)")
    print(f"pandas.read_json(requests-as-objects, lines=True) {pandas_s:7.2f}s  (requests only, inferred types)")
    verdict = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
    print(f"load is {verdict} (best of {args.repeat}). pandas.read_json(lines=True) cannot read "
          "the session file itself: it mixes request arrays with record objects.")

    result = {
        "benchmark": "load", "environment": common.environment(),
        "requests": args.requests, "repeat": args.repeat,
        "load_s": round(load_s, 3), "pandas_read_json_s": round(pandas_s, 3), "speedup": round(ratio, 2),
        "pandas_input": "same requests, one JSON object per line",
        "pandas": pd.__version__, "orjson": "orjson" in sys.modules,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    history.append(result)
    RESULTS.write_text(json.dumps(history, indent=2) + "\n")
    print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
