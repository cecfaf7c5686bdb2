"""How fast the dashboard opens a 24-hour session.

Writes a synthetic day-long session through the schema into a temp directory
(one sample every 5 s: 17,280 samples, about a million requests, a snapshot
every 5 minutes: 288 of them, with a slow leak in ``POST /ocr/process``), then
measures

* server side, in process: loading PATH (``create_app``), and the first
  (uncached) and second (cached) response of each API call the session page
  makes, over real HTTP to uvicorn on 127.0.0.1;
* in headless Chromium (Debian's ``/usr/bin/chromium``) against a fresh server:
  navigation to the session page until the charts are drawn
  (``body[data-ready=true]``), cold (the server computes the verdict and
  payload) and warm (cached; median of 5 reloads).

Writes ``benchmarks/results/ui.json`` and prints it.

    python -m benchmarks.bench_ui [--hours 24] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

try:
    from . import _common as common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]

from leakyspanner import schema

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_MB = 1024 * 1024
_PAGE = 4096
INTERVAL_S = 5.0
SNAPSHOT_EVERY = 60  # samples: every 5 minutes
REQUESTS_PER_DAY = 1_000_000
# route -> (share of traffic, bytes each call keeps for good)
ROUTES = {
    ("GET", "/health"): (0.50, 0), ("GET", "/items/{item_id}"): (0.20, 0), ("GET", "/search"): (0.12, 256),
    ("GET", "/report"): (0.07, 0), ("POST", "/ocr/process"): (0.06, 1536), ("GET", "/stream"): (0.05, 0),
}
SITES = [(f"/srv/app/module_{i}.py", 10 + i) for i in range(18)] + [("/srv/app/ocr.py", 88), ("/srv/app/search.py", 41)]


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


def _check(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    unknown = set(record) - set(schema.FIELDS[kind])
    if unknown:
        raise ValueError(f"{kind} has no field(s) {sorted(unknown)} in the schema")
    return {"kind": kind, **record}


def write_day(directory: Path, hours: float = 24.0, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """Write a synthetic session of ``hours``; returns its path and record counts."""
    rng = np.random.default_rng(seed)
    start_ts = 1_790_000_000.0
    stem = schema.session_stem(start_ts)
    path = directory / f"{stem}{schema.JSONL_SUFFIX}"
    n_samples = int(hours * 3600 / INTERVAL_S)
    per_interval = REQUESTS_PER_DAY / (24 * 3600 / INTERVAL_S)
    routes = list(ROUTES)
    shares = np.array([ROUTES[r][0] for r in routes])
    keeps = np.array([ROUTES[r][1] for r in routes])
    baseline = 120 * _MB
    counts = {"samples": n_samples, "requests": 0, "intervals": 0, "snapshots": 0, "alerts": 0}
    rss, traced, total = baseline, 30 * _MB, 0
    site_sizes = rng.integers(50_000, 2_000_000, len(SITES)).astype(np.int64)
    threshold = 50 * _MB
    alerted = False
    header = _check("header", {
        "format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION, "session_id": stem,
        "leakyspanner_version": "0.2.0", "pid": 4321, "host": "bench-host", "python": "3.11.7",
        "platform": "Linux-bench", "level": "mid",
        "config": {"interval_seconds": INTERVAL_S, "leak_threshold_mb": threshold / _MB},
        "start_ts": start_ts, "baseline_rss_bytes": baseline, "baseline_vms_bytes": 4 * baseline,
        "cgroup_memory_limit_bytes": None, "memory_reader": "statm", "request_fields": list(schema.REQUEST_FIELDS)})
    with path.open("w", encoding="utf-8") as f:
        f.write(_dump(header) + "\n")
        for seq in range(n_samples):
            t0 = start_ts + seq * INTERVAL_S
            calls = rng.poisson(per_interval * shares)
            n = int(calls.sum())
            which = np.repeat(np.arange(len(routes)), calls)
            ts = np.sort(t0 + rng.random(n) * INTERVAL_S)
            rng.shuffle(which)
            transient = rng.choice([0, 0, 0, _PAGE, 2 * _PAGE, -_PAGE], n)
            kept = keeps[which]
            deltas = kept + transient
            before = rss + np.concatenate(([0], np.cumsum(deltas)[:-1]))
            durations = rng.gamma(2.0, 0.004, n)
            lines = []
            for i in range(n):
                method, route = routes[which[i]]
                b = int(before[i])
                lines.append(f'["r",{ts[i]:.4f},"{method}","{route}",200,{durations[i]:.6f},{b},{b + int(deltas[i])},'
                             f'{traced},{traced + int(kept[i])},1,1]')
                traced += int(kept[i])
            rss += int(deltas.sum())
            total += n
            counts["requests"] += n
            for r, c in enumerate(calls):
                if not c:
                    continue
                mine = which == r
                lines.append(_dump(_check("endpoint_interval", {
                    "ts_start": t0, "ts": t0 + INTERVAL_S, "seq": seq, "method": routes[r][0], "route": routes[r][1],
                    "calls": int(c), "errors": 0, "duration_s_sum": float(durations[mine].sum()),
                    "duration_s_max": float(durations[mine].max()),
                    "rss_delta_bytes_sum": int(deltas[mine].sum()), "rss_delta_bytes_max": int(deltas[mine].max()),
                    "traced_delta_bytes_sum": int(kept[mine].sum())})))
                counts["intervals"] += 1
            lines.append(_dump(_check("sample", {
                "ts": t0 + INTERVAL_S, "seq": seq, "rss_bytes": rss, "vms_bytes": 4 * rss,
                "rss_delta_bytes": rss - baseline, "gc_count": [100, 5, 1], "gc_collections": [seq, seq // 10, seq // 100],
                "gc_collected": [0, 0, 0], "gc_uncollectable": [0, 0, 0], "gc_garbage": 0, "tracing": True,
                "traced_bytes": traced, "traced_peak_bytes": traced, "threads": 6, "open_fds": 30 + seq % 5,
                "asyncio_tasks": 5 + seq % 7, "asyncio_tasks_by_coro": {"RequestResponseCycle.run_asgi": 3, "Server.serve": 1},
                "inflight": 1, "requests_total": total, "requests_dropped": 0, "internal_errors": 0,
                "cgroup_memory_bytes": None})))
            if not alerted and rss - baseline > threshold:
                alerted = True
                counts["alerts"] += 1
                lines.append(_dump(_check("alert", {
                    "ts": t0 + INTERVAL_S, "alert": "memory_growth", "rss_bytes": rss, "baseline_rss_bytes": baseline,
                    "growth_bytes": rss - baseline, "threshold_bytes": threshold})))
            if seq % SNAPSHOT_EVERY == 0:
                growth = np.zeros(len(SITES), dtype=np.int64)
                growth[-2] = int(keeps[4] * calls[4]) * SNAPSHOT_EVERY
                growth[-1] = int(keeps[2] * calls[2]) * SNAPSHOT_EVERY
                site_sizes += growth
                rows = [[file, line, int(size), int(size) // 120, int(g), int(g) // 120]
                        for (file, line), size, g in zip(SITES, site_sizes, growth)]
                lines.append(_dump(_check("snapshot", {
                    "ts": t0 + INTERVAL_S + 0.1, "seq": counts["snapshots"], "traced_bytes": traced, "blocks": 200_000,
                    "sites_total": 4000, "frames": 1, "cost_s": 0.05, "take_s": 0.02,
                    "site_fields": list(schema.SITE_FIELDS), "sites": rows})))
                counts["snapshots"] += 1
            f.write("\n".join(lines) + "\n")
        end = start_ts + n_samples * INTERVAL_S + 0.5
        f.write(_dump(_check("summary", {
            "ts": end, "duration_s": end - start_ts, "baseline_rss_bytes": baseline, "peak_rss_bytes": rss,
            "final_rss_bytes": rss, "net_growth_bytes": rss - baseline, "samples": n_samples, "requests_total": total,
            "requests_dropped": 0, "internal_errors": 0, "endpoints": []})) + "\n")
    return path, counts


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    """uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="bench-ui-server", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _timed_get(client: Any, url: str, **params: Any) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.get(url, params=params)
    response.raise_for_status()
    return time.perf_counter() - started, len(response.content)


def measure_server(directory: Path, sid: str) -> dict[str, Any]:
    """Load time and first/second response time of every call the session page makes."""
    import httpx

    from leakyspanner.ui.server import create_app

    started = time.perf_counter()
    app = create_app(directory, follow=False)
    out: dict[str, Any] = {"load_s": time.perf_counter() - started}
    # A new connection per request: on a kept-alive one, delayed ACKs add ~40 ms that are not the server's.
    with _serve(app) as base, httpx.Client(base_url=base, timeout=600, headers={"Connection": "close"}) as client:
        calls = {"detail": (f"/api/sessions/{sid}", {}), "list": ("/api/sessions", {}),
                 "endpoint": (f"/api/sessions/{sid}/endpoint", {"method": "POST", "route": "/ocr/process"})}
        for name, (url, params) in calls.items():
            first, size = _timed_get(client, url, **params)
            second, _ = _timed_get(client, url, **params)
            out[name] = {"first_s": first, "cached_s": second, "bytes": size}
        detail = client.get(f"/api/sessions/{sid}").json()
        out["trend_points"] = len(detail["trend"]["x"])
        diff = {"a": detail["snapshots"][0]["seq"], "b": detail["snapshots"][-1]["seq"]}
        first, size = _timed_get(client, f"/api/sessions/{sid}/diff", **diff)
        second, _ = _timed_get(client, f"/api/sessions/{sid}/diff", **diff)
        out["diff"] = {"first_s": first, "cached_s": second, "bytes": size}
    out["load_plus_first_detail_s"] = out["load_s"] + out["detail"]["first_s"]
    return out


def measure_browser(directory: Path, sid: str, reloads: int = 5) -> dict[str, Any]:
    """Navigation to the session page until its charts are drawn, on a fresh server (cold) then cached."""
    from playwright.sync_api import sync_playwright

    from leakyspanner.ui.server import create_app

    app = create_app(directory, follow=False)
    with _serve(app) as base, tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1360, "height": 900})
        page = context.new_page()
        url = f"{base}/#/session/{sid}"

        def open_page() -> float:
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("body[data-page=session][data-ready=true]", timeout=600_000)
            return time.perf_counter() - started

        cold = open_page()
        warm = []
        for _ in range(reloads):
            page.goto("about:blank")
            warm.append(open_page())
        points = int(page.get_by_test_id("rss-chart").get_attribute("data-points") or 0)
        context.close()
    return {"page_open_cold_s": cold, "page_open_warm_s": statistics.median(warm), "page_open_warm_all_s": warm,
            "chart_points": points}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="session length (default 24)")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium measurement")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="leakyspanner-bench-ui-"))
    try:
        started = time.perf_counter()
        path, counts = write_day(directory, args.hours)
        generated = {"hours": args.hours, "write_s": time.perf_counter() - started,
                     "file_bytes": path.stat().st_size, **counts}
        print(f"wrote {path.name}: {generated}", flush=True)
        result: dict[str, Any] = {"session": generated, "server": measure_server(directory, path.stem)}
        print(json.dumps(result["server"], indent=1), flush=True)
        if args.no_browser or not CHROMIUM.exists():
            result["browser"] = None
        else:
            result["browser"] = measure_browser(directory, path.stem)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    written = common.write_result("ui", result)
    print(json.dumps(result, indent=1))
    print(f"-> {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
