"""How long ``leakyspanner report`` takes on a 24-hour session with 60 endpoints.

Writes a synthetic day through the schema (one sample every 5 s: 17,280
samples; 60 endpoints with Zipf-like shares of about a million requests, every
one RSS-measured as the capture does at that rate; an ``endpoint_interval``
record per endpoint called in each interval; a sampled-heap ``heap`` record
per sample with a row per endpoint and 120 (endpoint, site) rows; a slow leak
in one mid-traffic endpoint), then runs the real CLI, ``python -m
leakyspanner report PATH``, in a fresh process and times it (median of
``--repeat`` runs) against the 5 s target. ``--profile`` also prints where an
in-process report spends its time (load vs diagnose, cProfile top 25).

    python -m benchmarks.bench_report [--hours 24] [--repeat 3] [--profile]

Writes ``benchmarks/results/report.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    from . import _common as common
    from .bench_ui import _check, _dump
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]
    from bench_ui import _check, _dump  # type: ignore[no-redef]

from leakyspanner import schema

NAME = "report"
TARGET_S = 5.0
INTERVAL_S = 5.0
ENDPOINTS = 60
REQUESTS_PER_DAY = 1_000_000
SITE_ROWS = 120          # (endpoint, site) rows per heap record; the engine caps them at 400
SAMPLE_BYTES = 512 * 1024
LEAKER = 7               # index of the leaking endpoint (mid-traffic, never the busiest)
LEAK_BYTES = 2048        # kept per call of the leaker
_MB = 1024 * 1024


def _routes() -> list[tuple[str, str]]:
    out = []
    for i in range(ENDPOINTS):
        method = ("GET", "POST", "PUT", "DELETE")[i % 4]
        out.append((method, f"/api/v1/resource{i // 4}/{{item_id}}/action{i % 4}"))
    return out


def write_day(directory: Path, hours: float = 24.0, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """Write the synthetic session; returns its path and record counts."""
    rng = np.random.default_rng(seed)
    start_ts = 1_790_000_000.0
    stem = schema.session_stem(start_ts)
    path = directory / f"{stem}{schema.JSONL_SUFFIX}"
    n_samples = int(hours * 3600 / INTERVAL_S)
    routes = _routes()
    shares = 1.0 / np.arange(1, ENDPOINTS + 1) ** 1.1
    shares /= shares.sum()
    per_interval = REQUESTS_PER_DAY / (24 * 3600 / INTERVAL_S)
    keeps = np.zeros(ENDPOINTS)
    keeps[LEAKER] = LEAK_BYTES
    baseline = 150 * _MB
    rss, heap_live = baseline, 40 * _MB
    # each endpoint's steady live bytes (in-flight buffers, caches) and its sites
    endpoint_live = rng.integers(1, 40, ENDPOINTS).astype(float) * SAMPLE_BYTES
    site_of = rng.integers(0, ENDPOINTS, SITE_ROWS)
    site_of[0] = LEAKER
    site_live = rng.integers(1, 10, SITE_ROWS).astype(float) * SAMPLE_BYTES
    counts = {"samples": n_samples, "requests": 0, "intervals": 0, "heap_records": 0, "heap_site_rows": 0}
    total = 0
    leaked = 0.0
    header = _check("header", {
        "format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION, "session_id": stem,
        "leakyspanner_version": "0.3.0", "pid": 4321, "host": "bench-host", "python": "3.11.7",
        "platform": "Linux-bench", "level": "mid", "heap_engine": "sampler",
        "config": {"interval_seconds": INTERVAL_S, "sample_bytes": SAMPLE_BYTES},
        "start_ts": start_ts, "baseline_rss_bytes": baseline, "baseline_vms_bytes": 4 * baseline,
        "cgroup_memory_limit_bytes": None, "memory_reader": "statm", "request_fields": list(schema.REQUEST_FIELDS)})
    with path.open("w", encoding="utf-8") as f:
        f.write(_dump(header) + "\n")
        f.write(_dump(_check("routes", {"ts": start_ts + 0.5, "routes": [
            {"method": m, "route": r, "file": "/srv/app/api.py", "first_line": 10 + 20 * i, "last_line": 28 + 20 * i}
            for i, (m, r) in enumerate(routes)]})) + "\n")
        for seq in range(n_samples):
            t0 = start_ts + seq * INTERVAL_S
            calls = rng.poisson(per_interval * shares)
            n = int(calls.sum())
            which = np.repeat(np.arange(ENDPOINTS), calls)
            rng.shuffle(which)
            ts = np.sort(t0 + rng.random(n) * INTERVAL_S)
            kept = keeps[which]
            deltas = kept + rng.choice([0, 0, 4096, -4096], n)  # pages come and go; only the leak stays
            before = rss + np.concatenate(([0], np.cumsum(deltas)[:-1]))
            durations = rng.gamma(2.0, 0.004, n)
            lines = []
            for i in range(n):
                method, route = routes[which[i]]
                b = int(before[i])
                lines.append(f'["r",{ts[i]:.4f},"{method}","{route}",200,{durations[i]:.6f},{b},'
                             f'{b + int(deltas[i])},null,null,1,1]')
            rss += int(deltas.sum())
            leaked += float(kept.sum())
            total += n
            counts["requests"] += n
            for r in np.flatnonzero(calls):
                mine = which == r
                lines.append(_dump(_check("endpoint_interval", {
                    "ts_start": t0, "ts": t0 + INTERVAL_S, "seq": seq, "method": routes[r][0], "route": routes[r][1],
                    "calls": int(calls[r]), "errors": 0, "duration_s_sum": float(durations[mine].sum()),
                    "duration_s_max": float(durations[mine].max()),
                    "rss_delta_bytes_sum": int(deltas[mine].sum()), "rss_delta_bytes_max": int(deltas[mine].max())})))
                counts["intervals"] += 1
            live = heap_live + leaked
            lines.append(_dump(_check("sample", {
                "ts": t0 + INTERVAL_S, "seq": seq, "rss_bytes": rss, "vms_bytes": 4 * rss,
                "rss_delta_bytes": rss - baseline, "gc_count": [100, 5, 1],
                "gc_collections": [seq, seq // 10, seq // 100], "gc_collected": [0, 0, 0],
                "gc_uncollectable": [0, 0, 0], "gc_garbage": 0, "tracing": False, "traced_bytes": None,
                "traced_peak_bytes": None, "threads": 6, "open_fds": 30 + seq % 5, "asyncio_tasks": 5 + seq % 7,
                "asyncio_tasks_by_coro": {"RequestResponseCycle.run_asgi": 3, "Server.serve": 1}, "inflight": 1,
                "requests_total": total, "requests_dropped": 0, "internal_errors": 0,
                "cgroup_memory_bytes": None, "heap_live_bytes": int(live)})))
            # sampled estimates: multiples of sample_bytes, with sampling noise
            e_live = endpoint_live * rng.uniform(0.7, 1.3, ENDPOINTS)
            e_live[LEAKER] += leaked
            s_live = site_live * rng.uniform(0.7, 1.3, SITE_ROWS)
            s_live[0] += leaked
            endpoint_rows = [[m, r, int(v), int(v) // 200, max(1, int(v // SAMPLE_BYTES))]
                             for (m, r), v in zip(routes, e_live)]
            site_rows = [[*routes[site_of[k]], f"/srv/app/module{k % 30}.py", 10 + k, f"fn{k}",
                          "/srv/app/api.py" if k % 3 == 0 else None, 12 + k if k % 3 == 0 else None,
                          int(s_live[k]), int(s_live[k]) // 200, max(1, int(s_live[k] // SAMPLE_BYTES))]
                         for k in range(SITE_ROWS)]
            lines.append(_dump(_check("heap", {
                "ts": t0 + INTERVAL_S, "seq": seq, "engine": "sampler", "sample_bytes": SAMPLE_BYTES,
                "max_frames": 16, "live_bytes": int(live), "live_samples": int(live // SAMPLE_BYTES),
                "samples_total": seq * 40, "samples_dropped": 0, "engine_bytes": 200_000, "cost_s": 0.0004,
                "endpoint_fields": list(schema.HEAP_ENDPOINT_FIELDS), "endpoints": endpoint_rows,
                "site_fields": list(schema.HEAP_SITE_FIELDS), "sites": site_rows})))
            counts["heap_records"] += 1
            counts["heap_site_rows"] += SITE_ROWS
            f.write("\n".join(lines) + "\n")
        end = start_ts + n_samples * INTERVAL_S + 0.5
        f.write(_dump(_check("summary", {
            "ts": end, "duration_s": end - start_ts, "baseline_rss_bytes": baseline, "peak_rss_bytes": rss,
            "final_rss_bytes": rss, "net_growth_bytes": rss - baseline, "samples": n_samples, "requests_total": total,
            "requests_dropped": 0, "internal_errors": 0, "endpoints": []})) + "\n")
    counts["file_bytes"] = path.stat().st_size
    return path, counts


def _cli(path: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "leakyspanner", "report", str(path)], capture_output=True,
                          text=True, cwd=common.REPO_ROOT, timeout=600)
    return time.perf_counter() - started, done.returncode, done.stdout


def _profile(path: Path) -> dict[str, Any]:
    from leakyspanner.analysis import load
    from leakyspanner.analysis.diagnose import diagnose

    started = time.perf_counter()
    sessions = load(path)
    loaded = time.perf_counter()
    profiler = cProfile.Profile()
    profiler.enable()
    diagnose(sessions)
    profiler.disable()
    finished = time.perf_counter()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    print(out.getvalue())
    return {"load_s": round(loaded - started, 3), "diagnose_s": round(finished - loaded, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also time load and diagnose in process, cProfile")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        started = time.perf_counter()
        path, counts = write_day(Path(tmp), args.hours)
        written = time.perf_counter() - started
        runs = [_cli(path) for _ in range(max(1, args.repeat))]
        inprocess = _profile(path) if args.profile else None
    walls = [w for w, _, _ in runs]
    codes = sorted({c for _, c, _ in runs})
    result = {"hours": args.hours, "endpoints": ENDPOINTS, "interval_s": INTERVAL_S, "counts": counts,
              "write_s": round(written, 1), "report_s": [round(w, 2) for w in walls],
              "report_median_s": round(statistics.median(walls), 2), "target_s": TARGET_S,
              "within_target": statistics.median(walls) <= TARGET_S, "exit_codes": codes,
              "headline": runs[0][2].splitlines()[2] if len(runs[0][2].splitlines()) > 2 else runs[0][2][:300],
              "in_process": inprocess}
    path_out = common.write_result(NAME, result)
    print({k: v for k, v in result.items() if k != "headline"})
    print("headline:", result["headline"])
    print(f"wrote {path_out}")
    return 0 if result["within_target"] and codes == [1] else 1


if __name__ == "__main__":
    sys.exit(main())
