"""A fleet's sessions at honest sizes: the DuckDB fleet verdict against the pandas path.

    python -m benchmarks.bench_fleet                        # 200 sessions, 50M requests, 2M samples
    python -m benchmarks.bench_fleet --sessions 20 --subset 1,2,4   # smaller, for a quick look
    python -m benchmarks.bench_fleet --keep /tmp/fleet      # keep the generated dataset there

The fleet: 50 hosts, 4 releases, one session per host and release (200), each
250,000 request records, 10,000 samples and up to 80,000 interval rows over 14 h.
From release v3 on, ``POST /orders/{order_id}`` retains 2 KB per call on 45
of the 50 hosts; host ``web-07`` also leaks in ``GET /export`` in every
release. The dataset is generated straight to Parquet with numpy and pyarrow
(vectorised), in the layout ``leakyspanner export`` writes, its schema taken
from a real export of a generated JSON-lines session.

Measured, each in a fresh process (wall time including imports; peak memory
is the process's own ``VmHWM``): ``fleet_verdict()`` over the full dataset
with DuckDB; and, on subsets of 1, 2, 4 and 8 sessions written as JSON-lines,
the pandas path (``load()``, then the same verdict on the DataFrames) beside
DuckDB on the same sessions exported with ``leakyspanner export``, checking
both name the same routes. The pandas path at 200 sessions is extrapolated
with a line through the subsets, not run: it would take more memory than
this shared machine should give it. Writes ``benchmarks/results/fleet.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from leakyspanner import schema

try:
    from . import _common as common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as common  # type: ignore[no-redef]

NAME = "fleet"
HOSTS, RELEASES = 50, ("v1", "v2", "v3", "v4")
REQUESTS, SAMPLES, INTERVAL_S = 250_000, 10_000, 5.0
START_TS = 1_780_000_000.0
MB = 1024 * 1024
ROUTES = (("POST", "/orders/{order_id}"), ("GET", "/orders/{order_id}"), ("GET", "/items/{item_id}"),
          ("GET", "/users/{user_id}"), ("POST", "/login"), ("GET", "/health"), ("GET", "/export"),
          ("GET", schema.UNMATCHED_ROUTE))
WEIGHTS = np.array([0.15, 0.25, 0.25, 0.15, 0.05, 0.12, 0.01, 0.02])
LEAK_BYTES = 2048
EXPORT_LEAK_BYTES = 400_000
PYTHON = sys.executable


# ------------------------------------------------------------------ the fleet

def _meta(i: int) -> dict[str, Any]:
    # the first sessions are web-07's, so even a one-session subset has a leak to find
    host, release = (i // len(RELEASES) + 7) % HOSTS, RELEASES[i % len(RELEASES)]
    start = START_TS + (i % len(RELEASES)) * 86_400 + host * 7.0
    return {"index": i, "host": f"web-{host:02d}", "release": release, "start_ts": start,
            "session_id": f"leakyspanner_fleet_{i:03d}", "pid": 1000 + i,
            "orders_leak": RELEASES.index(release) >= 2 and host >= 5, "export_leak": host == 7}


def _generate(i: int) -> dict[str, Any]:
    """One session's columns (numpy), seeded by its index."""
    meta = _meta(i)
    rng = np.random.default_rng(i)
    duration = SAMPLES * INTERVAL_S
    start = meta["start_ts"]
    ts = start + np.sort(rng.uniform(0, duration, REQUESTS))
    route = rng.choice(len(ROUTES), REQUESTS, p=WEIGHTS)
    retained = np.zeros(REQUESTS, dtype=np.int64)
    if meta["orders_leak"]:
        retained[route == 0] = LEAK_BYTES
    if meta["export_leak"]:
        retained[route == 6] = EXPORT_LEAK_BYTES
    noise = rng.choice(np.array([-8192, -4096, 0, 0, 0, 0, 4096, 8192]), REQUESTS)
    baseline = 180 * MB + int(rng.integers(0, 20 * MB))
    held = np.cumsum(retained)
    before = baseline + held - retained + rng.integers(0, 64, REQUESTS) * 4096
    after = before + retained + noise
    req = {"ts": ts, "route": route, "status": np.where(rng.random(REQUESTS) < 0.01, 500, 200),
           "duration_s": rng.lognormal(-4.5, 0.7, REQUESTS), "rss_before_bytes": before,
           "rss_after_bytes": after, "inflight_start": rng.integers(1, 6, REQUESTS),
           "inflight_end": rng.integers(1, 6, REQUESTS)}
    sample_ts = start + INTERVAL_S * np.arange(1, SAMPLES + 1)
    held_at = np.concatenate([[0], held])[np.searchsorted(ts, sample_ts, side="right")]
    rss = baseline + held_at + rng.integers(0, 256, SAMPLES) * 4096
    done = np.searchsorted(ts, sample_ts, side="right")
    samples = {"ts": sample_ts, "seq": np.arange(SAMPLES), "rss_bytes": rss, "vms_bytes": rss + 600 * MB,
               "rss_delta_bytes": rss - baseline, "threads": np.full(SAMPLES, 6), "inflight": np.ones(SAMPLES, int),
               "requests_total": done, "requests_dropped": np.zeros(SAMPLES, int),
               "internal_errors": np.zeros(SAMPLES, int)}
    # per (interval, route): calls, errors and sums, from the requests that ended in it
    slot = np.minimum(((ts - start) // INTERVAL_S).astype(np.int64), SAMPLES - 1)
    key = slot * len(ROUTES) + route
    size = SAMPLES * len(ROUTES)
    calls = np.bincount(key, minlength=size)
    errors = np.bincount(key, weights=(req["status"] >= 500), minlength=size).astype(np.int64)
    dsum = np.bincount(key, weights=req["duration_s"], minlength=size)
    rsum = np.bincount(key, weights=after - before, minlength=size).astype(np.int64)
    present = np.flatnonzero(calls)
    intervals = {"seq": present // len(ROUTES), "route": present % len(ROUTES), "calls": calls[present],
                 "errors": errors[present], "duration_s_sum": dsum[present], "rss_delta_bytes_sum": rsum[present]}
    intervals["ts"] = sample_ts[intervals["seq"]]
    intervals["ts_start"] = intervals["ts"] - INTERVAL_S
    return {"meta": meta, "baseline": baseline, "duration": duration, "requests": req, "samples": samples,
            "intervals": intervals}


# --------------------------------------------------------- JSON-lines writer

def _record(kind: str, **values: Any) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(schema.FIELDS[kind])
    record.update(values, kind=kind)
    return record


def write_jsonl(data: dict[str, Any], directory: Path) -> Path:
    """The session as capture writes it (header, samples, request arrays, intervals, summary)."""
    meta, req, smp, itv = data["meta"], data["requests"], data["samples"], data["intervals"]
    path = directory / f"{meta['session_id']}{schema.JSONL_SUFFIX}"
    header = _record("header", format=schema.FORMAT_NAME, schema_version=schema.SCHEMA_VERSION,
                     session_id=meta["session_id"], leakyspanner_version="0.2.0", pid=meta["pid"],
                     host=meta["host"], python="3.11", platform="Linux", level="basic",
                     config={"interval_seconds": INTERVAL_S, "leak_threshold_mb": 50.0},
                     start_ts=meta["start_ts"], baseline_rss_bytes=data["baseline"],
                     baseline_vms_bytes=data["baseline"] + 600 * MB, memory_reader="statm",
                     request_fields=list(schema.REQUEST_FIELDS), request_records="measured", heap_engine="none")
    lines = [json.dumps(header)]
    methods = [m for m, _ in ROUTES]
    names = [r for _, r in ROUTES]
    ts = np.round(req["ts"], 4).tolist()
    dur = np.round(req["duration_s"], 6).tolist()
    cols = [req[c].tolist() for c in ("route", "status", "rss_before_bytes", "rss_after_bytes",
                                       "inflight_start", "inflight_end")]
    sample_rows = {k: v.tolist() for k, v in smp.items()}
    nxt = 0
    for s in range(SAMPLES):  # requests in order, each sample after the requests before it
        end = sample_rows["requests_total"][s]
        for j in range(nxt, end):
            r = cols[0][j]
            lines.append(json.dumps([schema.REQUEST_TAG, ts[j], methods[r], names[r], cols[1][j], dur[j], cols[2][j],
                                     cols[3][j], None, None, cols[4][j], cols[5][j]]))
        nxt = end
        lines.append(json.dumps(_record("sample", **{k: v[s] for k, v in sample_rows.items()},
                                        gc_count=[0, 0, 0], tracing=False)))
    for j in range(len(itv["seq"])):
        r = int(itv["route"][j])
        lines.append(json.dumps(_record(
            "endpoint_interval", ts_start=float(itv["ts_start"][j]), ts=float(itv["ts"][j]), seq=int(itv["seq"][j]),
            method=methods[r], route=names[r], calls=int(itv["calls"][j]), errors=int(itv["errors"][j]),
            duration_s_sum=float(itv["duration_s_sum"][j]), duration_s_max=None, rss_measured=int(itv["calls"][j]),
            rss_delta_bytes_sum=int(itv["rss_delta_bytes_sum"][j]), rss_delta_bytes_max=None,
            traced_delta_bytes_sum=None)))
    rss = smp["rss_bytes"]
    lines.append(json.dumps(_record(
        "summary", ts=meta["start_ts"] + data["duration"], duration_s=data["duration"],
        baseline_rss_bytes=data["baseline"], peak_rss_bytes=int(rss.max()), final_rss_bytes=int(rss[-1]),
        net_growth_bytes=int(rss[-1] - data["baseline"]), samples=SAMPLES, requests_total=REQUESTS,
        request_records=REQUESTS, requests_dropped=0, internal_errors=0, endpoints=[])))
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------ Parquet writer

def _column(values: Any, field: pa.Field) -> pa.Array:
    return pa.array(values).cast(field.type) if values is not None else pa.nulls(0, field.type)


def _table(schema_: pa.Schema, n: int, given: dict[str, Any]) -> pa.Table:
    arrays = []
    for field in schema_:
        if field.name in given:
            value = given[field.name]
            arrays.append(value.cast(field.type) if isinstance(value, pa.Array) else pa.array(value).cast(field.type))
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(arrays, schema=schema_)


def _constant(text: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), [text]).cast(pa.string())


def _labels(codes: np.ndarray, labels: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(codes.astype(np.int32), labels).cast(pa.string())


def write_parquet(data: dict[str, Any], root: Path, schemas: dict[str, pa.Schema]) -> int:
    """The session's tables in ``leakyspanner export``'s layout; returns bytes written."""
    meta = data["meta"]
    sid, start = meta["session_id"], meta["start_ts"]
    where = f"host={meta['host']}/date={time.strftime('%Y-%m-%d', time.gmtime(start))}"
    name = f"{sid}-{_hash(sid)}.parquet"
    req, smp, itv = data["requests"], data["samples"], data["intervals"]
    n = len(req["ts"])
    methods, names = [m for m, _ in ROUTES], [r for _, r in ROUTES]
    ts = req["ts"]
    tables = {
        "requests": (n, {"session_id": _constant(sid, n), "ts": ts, "method": _labels(req["route"], methods),
                         "route": _labels(req["route"], names), "status": req["status"],
                         "duration_s": req["duration_s"], "rss_before_bytes": req["rss_before_bytes"],
                         "rss_after_bytes": req["rss_after_bytes"], "inflight_start": req["inflight_start"],
                         "inflight_end": req["inflight_end"],
                         "time": pa.array((ts * 1e9).astype("datetime64[ns]")), "elapsed_s": ts - start,
                         "rss_delta_bytes": req["rss_after_bytes"] - req["rss_before_bytes"]}),
        "samples": (SAMPLES, {"session_id": _constant(sid, SAMPLES), **smp, "elapsed_s": smp["ts"] - start,
                              "time": pa.array((smp["ts"] * 1e9).astype("datetime64[ns]")),
                              "tracing": np.zeros(SAMPLES, bool)}),
        "intervals": (len(itv["seq"]), {"session_id": _constant(sid, len(itv["seq"])), **itv,
                                        "method": _labels(itv["route"], methods),
                                        "route": _labels(itv["route"], names),
                                        "rss_measured": itv["calls"], "elapsed_s": itv["ts"] - start,
                                        "time": pa.array((itv["ts"] * 1e9).astype("datetime64[ns]"))}),
    }
    rss = smp["rss_bytes"]
    tables["sessions"] = (1, {
        "session_id": [sid], "path": [f"/var/log/app/{sid}.jsonl"], "format": ["jsonl"],
        "schema_version": [schema.SCHEMA_VERSION], "pid": [meta["pid"]], "host": [meta["host"]],
        "python": ["3.11"], "platform": ["Linux"], "level": ["basic"], "leakyspanner_version": ["0.2.0"],
        "start": pa.array(np.array([start * 1e9]).astype("datetime64[ns]")), "start_ts": [start],
        "end_ts": [start + data["duration"]], "duration_s": [data["duration"]],
        "baseline_rss_bytes": [data["baseline"]], "peak_rss_bytes": [int(rss.max())],
        "final_rss_bytes": [int(rss[-1])], "net_growth_bytes": [int(rss[-1] - data["baseline"])],
        "requests_total": [REQUESTS], "requests_dropped": [0], "internal_errors": [0], "complete": [True],
        "interval_seconds": [INTERVAL_S], "leak_threshold_mb": [50.0], "release": [meta["release"]]})
    written = 0
    for table_name in ("requests", "samples", "intervals", "sessions"):  # sessions last, as export does
        rows, given = tables[table_name]
        out = _table(schemas[table_name], rows, given)
        path = root / table_name / where / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(out, path, compression="zstd")
        written += path.stat().st_size
    return written


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:8]


# ------------------------------------------------------------------- runs

# VmHWM is this process's own peak: ru_maxrss would start at the benchmark's RSS when it forked
_PEAK = """
import atexit, re
atexit.register(lambda: print('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1),
                              flush=True))
"""


def _timed(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter: wall seconds (imports included), its own peak RSS, its JSON line."""
    t0 = time.perf_counter()
    proc = subprocess.run([PYTHON, "-c", _PEAK + code, *args], capture_output=True, text=True, cwd=common.REPO_ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    peak_kb = int(lines[-1].split()[1])
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak_kb / 1024, 1), "out": json.loads(lines[-2])}


DUCKDB_STEP = """
import json, sys, time
t0 = time.perf_counter()
from leakyspanner.fleet import fleet_verdict
v = fleet_verdict(sys.argv[1])
print(json.dumps({"verdict_s": round(time.perf_counter() - t0, 2), "lines": v.lines(),
                  "routes": v.leaking_routes[["method", "route", "hosts_leaking"]].values.tolist()}))
"""

PANDAS_STEP = """
import json, sys, time, glob
t0 = time.perf_counter()
from leakyspanner.analysis.load import load
s = load(sorted(glob.glob(sys.argv[1] + "/*.jsonl")), warn=False)
t1 = time.perf_counter()
from leakyspanner.fleet import fleet_verdict
v = fleet_verdict(s)
print(json.dumps({"load_s": round(t1 - t0, 2), "verdict_s": round(time.perf_counter() - t1, 2),
                  "requests": len(s.requests), "lines": v.lines(),
                  "routes": v.leaking_routes[["method", "route", "hosts_leaking"]].values.tolist()}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=HOSTS * len(RELEASES))
    parser.add_argument("--subset", default="1,2,4,8", help="session counts for the pandas comparison")
    parser.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it")
    args = parser.parse_args(argv)
    subset = sorted(int(x) for x in args.subset.split(","))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="leakyspanner-fleet-", dir="/work"))
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < 8 * 1024 ** 3:
        raise SystemExit(f"{work} has {free / 1024 ** 3:.1f} GB free; the benchmark needs about 8 GB")
    result: dict[str, Any] = {"sessions": args.sessions, "requests_per_session": REQUESTS,
                              "samples_per_session": SAMPLES}
    try:
        # 1. the pandas path and DuckDB on the same small subsets, written as capture writes them
        comparison = []
        jsonl_root = work / "jsonl"
        for k in subset:
            directory = jsonl_root / f"k{k}"
            directory.mkdir(parents=True, exist_ok=True)
            for j in range(k):  # spread over hosts and releases: leaks of both kinds, and clean sessions
                write_jsonl(_generate(j * 13 % args.sessions), directory)
            dataset = work / f"subset{k}"
            t0 = time.perf_counter()
            subprocess.run([PYTHON, "-m", "leakyspanner", "-q", "export", str(directory), "--parquet", str(dataset)],
                           check=True, cwd=common.REPO_ROOT)
            export_s = time.perf_counter() - t0
            pandas_run = _timed(PANDAS_STEP, str(directory))
            duck_run = _timed(DUCKDB_STEP, str(dataset))
            same = pandas_run["out"]["routes"] == duck_run["out"]["routes"]
            comparison.append({"sessions": k, "requests": k * REQUESTS,
                               "jsonl_mb": round(sum(p.stat().st_size for p in directory.glob("*")) / MB, 1),
                               "export_s": round(export_s, 2), "pandas": pandas_run, "duckdb": duck_run,
                               "same_routes": same})
            print(f"subset {k}: pandas {pandas_run['wall_s']} s {pandas_run['peak_rss_mb']} MB; "
                  f"duckdb {duck_run['wall_s']} s {duck_run['peak_rss_mb']} MB; same routes: {same}", flush=True)
        result["comparison"] = comparison
        # 2. the full fleet, generated straight to Parquet in export's layout
        schemas = {name: pq.read_schema(work / f"subset{subset[0]}" / "_schema" / f"{name}.parquet")
                   for name in ("sessions", "requests", "samples", "intervals")}
        root = work / "fleet"
        shutil.copytree(work / f"subset{subset[0]}" / "_schema", root / "_schema")
        shutil.copy(work / f"subset{subset[0]}" / "leakyspanner-dataset.json", root / "leakyspanner-dataset.json")
        t0 = time.perf_counter()
        size = intervals = 0
        for i in range(args.sessions):
            data = _generate(i)
            intervals += len(data["intervals"]["seq"])
            size += write_parquet(data, root, schemas)
        result["generate"] = {"wall_s": round(time.perf_counter() - t0, 1), "parquet_mb": round(size / MB, 1),
                              "requests": args.sessions * REQUESTS, "samples": args.sessions * SAMPLES,
                              "intervals": intervals}
        print(f"generated {args.sessions} sessions, {size / MB:.0f} MB of Parquet in "
              f"{result['generate']['wall_s']} s", flush=True)
        full = _timed(DUCKDB_STEP, str(root))
        result["fleet_verdict"] = full
        print(f"fleet verdict over {args.sessions * REQUESTS:,} requests: {full['wall_s']} s, "
              f"peak {full['peak_rss_mb']} MB", flush=True)
        print("\n".join(full["out"]["lines"]))
        # 3. the pandas path at full size, extrapolated: a line through the subsets (cost per session + fixed)
        ks = np.array([c["sessions"] for c in comparison], dtype=float)
        extrapolated: dict[str, Any] = {"from_sessions": [int(k) for k in ks],
                                        "note": "a least-squares line through the subsets; not run at full size"}
        for key in ("wall_s", "peak_rss_mb"):
            values = np.array([c["pandas"][key] for c in comparison], dtype=float)
            per, fixed = np.polyfit(ks, values, 1) if len(ks) > 1 else (values[0] / ks[0], 0.0)
            extrapolated[key] = round(float(fixed + per * args.sessions), 0)
            extrapolated[key.replace("_s", "_per_session_s") if key == "wall_s" else "rss_mb_per_session"] = \
                round(float(per), 2)
        result["pandas_extrapolated"] = extrapolated
        print(f"pandas path extrapolated to {args.sessions} sessions: {extrapolated['wall_s']:.0f} s, "
              f"{extrapolated['peak_rss_mb']:.0f} MB", flush=True)
        path = common.write_result(NAME, result)
        print(f"wrote {path}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
