"""The profiler's own memory after a million requests with a hundred thousand distinct raw paths.

Each scenario runs in a fresh child process (clean RSS). The app is a fast
in-process ASGI app that routes the way FastAPI does, leaving the real
``APIRoute`` of ``/items/{item_id}`` in ``scope["route"]`` (a full FastAPI
request costs ~50 µs, which would make a million of them take minutes). After
a warm-up, RSS is read and the loop runs; tracemalloc (1 frame, which makes
every request ~10x slower) is on only for the last tenth of the requests, a
full cycle of the distinct values, so a structure that grows per distinct
value shows there. At the end the profiler's containers (route cache, endpoint
aggregates, string cache, buffer) are sized directly. The loop pauses while
the writer is more than 20k records behind, as a server waits on sockets, so
no record is dropped for want of buffer. Scenarios (``basic`` level, ``interval_seconds=0.2``):

* ``bare-paths``: the app alone, distinct ``/items/<i>`` paths (the baseline);
* ``basic-paths``: the same loop with the profiler;
* ``basic-junk``: distinct non-standard methods, half of them on unmatched paths;
* ``basic-root-paths``: distinct ``root_path`` values (as a Mount with a path
  parameter, e.g. ``/tenants/{tenant}``, produces).

    python -m benchmarks.bench_memory [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from typing import Any

try:
    from . import _common as common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]

SCENARIOS = ("bare-paths", "basic-paths", "basic-junk", "basic-root-paths")
_START = {code: {"type": "http.response.start", "status": code, "headers": [(b"content-length", b"2")]}
          for code in (200, 404, 405)}
_BODY = {"type": "http.response.body", "body": b"{}"}
_PAGE = os.sysconf("SC_PAGE_SIZE")


_BACKLOG = 20_000  # records; the default buffer cap is 50,000


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def _route() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    return next(r for r in app.router.routes if getattr(r, "path", "") == "/items/{item_id}")


def _fast_app(route: Any) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"][len(scope["root_path"]):]
        if path.startswith("/items/"):
            scope["route"] = route
            scope["endpoint"] = route.endpoint
            status = 200 if scope["method"] == "GET" else 405
        else:
            status = 404
        await send(_START[status])
        await send(_BODY)

    return app


def _scope(scenario: str, i: int, distinct: int) -> dict[str, Any]:
    k = i % distinct
    method, root, path = "GET", "", f"/items/{k}"
    if scenario == "basic-junk":
        method = f"X-{k}"
        if k & 1:
            path = f"/nope/{k}"
    elif scenario == "basic-root-paths":
        root = f"/tenants/t{k}"
        path = root + path
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": root,
            "query_string": b"", "headers": [], "asgi": {"version": "3.0", "spec_version": "2.3"}}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


async def _drive(app: Any, scenario: str, start: int, n: int, distinct: int, buffer: Any) -> int:
    """Run requests back to back, pausing while the writer is more than ``_BACKLOG`` behind.

    A loop with no I/O outruns the writer thread (it never gives up the GIL on
    its own); a real server waits on its sockets. The pauses stand in for those
    waits so the measurement is of memory, not of a full buffer dropping records.
    """
    peak = 0
    for i in range(start, start + n):
        await app(_scope(scenario, i, distinct), _receive, _send)
        if buffer is not None and not i & 1023:
            peak = max(peak, len(buffer))
            while len(buffer) > _BACKLOG:
                await asyncio.sleep(0.005)
    return peak


def _state_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes owned by a container tree of dicts, lists, tuples, deques, strings and numbers.

    Other objects (routes, endpoints) belong to the app, not the profiler: not counted.
    """
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return sys.getsizeof(obj)
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + sum(_state_bytes(k, seen) + _state_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset, deque)):
        return sys.getsizeof(obj) + sum(_state_bytes(v, seen) for v in obj)
    return 0


def _child(scenario: str, requests: int, distinct: int, traced: int) -> dict[str, Any]:
    """Run one scenario in this process and return its measurements."""
    from leakyspanner import LeakyspannerMiddleware, Profiler

    app = _fast_app(_route())
    profiler = None
    log_dir = tempfile.mkdtemp(prefix="leakyspanner-bench-memory-")
    if scenario != "bare-paths":
        profiler = Profiler(app, log_path=log_dir, level="basic", interval_seconds=0.2)
        app = LeakyspannerMiddleware(app, profiler)
        profiler.start()
    buffer = profiler._buffer if profiler else None  # read-only peek, for the peak backlog
    warmup = min(10_000, requests)

    async def run() -> dict[str, Any]:
        await _drive(app, scenario, 0, warmup, distinct, buffer)
        if profiler:
            await _caught_up(profiler, warmup)
        gc.collect()
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        peak_a = await _drive(app, scenario, warmup, requests - traced, distinct, buffer)
        untraced_s = time.perf_counter() - t0
        if profiler:
            await _caught_up(profiler, warmup + requests - traced)
        gc.collect()
        tracemalloc.start(1)
        peak_b = await _drive(app, scenario, warmup + requests - traced, traced, distinct, buffer)
        if profiler:
            await _caught_up(profiler, warmup + requests)
            await asyncio.sleep(0.5)  # the writer's last batch of lines is freed after it is written
        gc.collect()
        growth, traced_peak = tracemalloc.get_traced_memory()
        top = tracemalloc.take_snapshot().statistics("lineno")[:6]
        tracemalloc.stop()
        return {"rss_before_bytes": rss0, "rss_after_bytes": _rss_bytes(), "traced_requests": traced,
                "traced_growth_bytes": growth, "traced_peak_bytes": traced_peak,
                "peak_buffered_records": max(peak_a, peak_b),
                "untraced_us_per_request": round(untraced_s / max(1, requests - traced) * 1e6, 2),
                "top_sites": [[str(s.traceback[0]), s.size, s.count] for s in top]}

    out = asyncio.run(run())
    out["rss_growth_bytes"] = out["rss_after_bytes"] - out["rss_before_bytes"]
    if profiler:
        writer = profiler._writer
        routes = profiler._routes
        stats = profiler.stats()
        parts = {"route_cache": routes._cache, "route_keep": routes._keep, "endpoints": writer._endpoints,  # type: ignore[union-attr]
                 "measured": writer._measured, "names": writer._names, "buffer": profiler._buffer,  # type: ignore[union-attr]
                 "counters": profiler._counters, "counts": profiler._counts}
        out["state_bytes"] = {name: _state_bytes(obj) for name, obj in parts.items()}
        out["state_bytes"]["total"] = sum(out["state_bytes"].values())
        out["state"] = {
            "route_cache_entries": len(routes._cache), "route_keep_entries": len(routes._keep),
            "endpoint_aggregates": len(writer._endpoints), "counters": len(profiler._counters),  # type: ignore[union-attr]
            "fast_counters": profiler._n_fast,
            "buffered": stats["buffered"], "requests_total": stats["requests_total"],
            "request_records": stats["request_records"],
            "requests_dropped": stats["requests_dropped"], "internal_errors": stats["internal_errors"],
        }
        out["routes_seen"] = sorted({f"{e['method']} {e['route']}" for e in writer.endpoint_summary()})  # type: ignore[union-attr]
        profiler.stop()
        out["jsonl_bytes"] = os.path.getsize(profiler.jsonl_file) if profiler.jsonl_file else None
    shutil.rmtree(log_dir, ignore_errors=True)
    return out


async def _caught_up(profiler: Any, total: int) -> None:
    deadline = time.monotonic() + 120
    while profiler.stats()["requests_total"] < total or profiler.stats()["buffered"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"writer did not catch up: {profiler.stats()}")
        await asyncio.sleep(0.01)


def render(runs: dict[str, dict[str, Any]]) -> str:
    bare = runs.get("bare-paths", {})
    rows = []
    for name, r in runs.items():
        state = r.get("state", {})
        rows.append([
            name, f"{r['requests']:,}", f"{r['distinct']:,}", f"{r['rss_growth_bytes']:,}",
            f"{r['rss_growth_bytes'] - bare.get('rss_growth_bytes', 0):+,}" if bare and name != "bare-paths" else "",
            f"{r['traced_growth_bytes']:,}", f"{r.get('state_bytes', {}).get('total', 0):,}",
            f"{r['peak_buffered_records']:,}", state.get("route_cache_entries", ""),
            state.get("endpoint_aggregates", ""), state.get("requests_dropped", ""),
            ", ".join(r.get("routes_seen", [])[:3]),
        ])
    return common.table(["scenario", "requests", "distinct", "RSS growth B", "vs bare B",
                         "traced growth B (last 10%)", "profiler state B", "peak buffer", "route cache",
                         "endpoint aggs", "dropped", "routes recorded"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k requests over 10k distinct values (~15 s)")
    parser.add_argument("--requests", type=int, help="requests per scenario (default 1,000,000)")
    parser.add_argument("--distinct", type=int, help="distinct paths/methods/root paths (default 100,000)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--no-seed", action="store_true", help="accepted for run_all; the seed is not run here")
    args = parser.parse_args(argv)
    requests = args.requests or (100_000 if args.quick else 1_000_000)
    distinct = args.distinct or (10_000 if args.quick else 100_000)
    if args.child:
        print(json.dumps(_child(args.child, requests, distinct, max(1, requests // 10))))
        return 0
    t0 = time.monotonic()
    runs: dict[str, dict[str, Any]] = {}
    for scenario in [s for s in args.scenarios.split(",") if s]:
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", scenario,
               "--requests", str(requests), "--distinct", str(distinct)]
        proc = subprocess.run(cmd, cwd=common.REPO_ROOT, capture_output=True, text=True, check=True)
        runs[scenario] = {"requests": requests, "distinct": distinct, **json.loads(proc.stdout.splitlines()[-1])}
        print(f"  {scenario} done ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    path = common.write_result("memory", {"quick": args.quick, "requests": requests, "distinct": distinct,
                                          "runs": runs, "elapsed_s": round(time.monotonic() - t0, 1)})
    print(render(runs))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
