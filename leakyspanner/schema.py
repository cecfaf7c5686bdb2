"""The on-disk contract between the capture side and every reader.

A session is two files with one stem, ``leakyspanner_YYYYMMDD_HHMMSS[_pPID]``:

* ``.log``   - the human log, line formats kept from leakyspanner 0.1.x so
  ``grep ENDPOINT`` / ``grep ALERT`` habits keep working.
* ``.jsonl`` - one JSON value per line. The first line is the ``header``
  object. Request records are compact JSON arrays ``["r", <REQUEST_FIELDS>]``
  (about 100 bytes each), one per RSS-measured request: every request below
  about 200 requests/s, a uniform random sample above. Every other record is
  an object with a ``"kind"`` key.

Units live in the names: ``*_bytes`` bytes, ``*_s`` seconds, ``ts`` Unix
seconds (float). A reader must ignore unknown keys and kinds, treat missing
keys as null, and refuse a header whose ``schema_version`` is newer than
:data:`SCHEMA_VERSION`. Nobody outside this module spells a field name of
the format by hand: writers and readers use the constants below.
"""

from __future__ import annotations

import time

__all__ = [
    "BACKGROUND_ROUTE",
    "FIELDS",
    "FORMAT_NAME",
    "HEAP_ENDPOINT_FIELDS",
    "HEAP_ENGINES",
    "HEAP_SITE_FIELDS",
    "JSONL_SUFFIX",
    "KINDS",
    "LEVELS",
    "LOG_SUFFIX",
    "OTHER_ROUTE",
    "REQUEST_FIELDS",
    "REQUEST_TAG",
    "SCHEMA_VERSION",
    "SITE_FIELDS",
    "STEM_PREFIX",
    "UNMATCHED_ROUTE",
    "session_stem",
]

#: Bumped on any change a reader of the previous version would misread.
#: 2: RSS is measured on a random sample of requests under load (null on
#: the others); ``endpoint_interval.rss_measured`` counts the measured ones.
#: 3: request records are written for the measured requests only (header
#: ``request_records: "measured"``); ``endpoint_interval`` counts every request,
#: so calls, errors and durations per endpoint come from there.
#: 4: ``heap`` records from the sampled heap engine (live bytes per endpoint and
#: per endpoint x allocation site, estimated from allocations sampled by bytes);
#: the header names the engine (``heap_engine``); samples carry ``heap_live_bytes``;
#: tracemalloc ``snapshot`` records say ``engine: "tracemalloc"``.
SCHEMA_VERSION = 4
FORMAT_NAME = "leakyspanner-jsonl"

STEM_PREFIX = "leakyspanner_"
LOG_SUFFIX = ".log"
JSONL_SUFFIX = ".jsonl"

#: Capture levels accepted by ``leakyspanner(app, level=...)``.
LEVELS = ("basic", "mid", "deep", "auto")

#: The one bucket for requests that matched no route (never one key per raw path).
UNMATCHED_ROUTE = "<unmatched>"
#: The bucket used once the number of distinct routes hits its cap.
OTHER_ROUTE = "<other>"
#: The heap engine's bucket for allocations made outside any request (startup, threads).
BACKGROUND_ROUTE = "<background>"

#: Where a session's allocation evidence comes from: the sampled heap engine (C
#: extension), tracemalloc (the fallback), or none (level basic).
HEAP_ENGINES = ("sampler", "tracemalloc", "none")

#: First element of a request record array.
REQUEST_TAG = "r"

#: Order of the values after the tag in a request record.
REQUEST_FIELDS = (
    "ts",                   # Unix seconds when the request started
    "method",               # HTTP method, "WS" for a websocket, "OTHER" for a non-standard one
    "route",                # route template (/items/{item_id}) or UNMATCHED_ROUTE
    "status",               # response status; 500 when the app raised first
    "duration_s",           # start to last body chunk handed to the server (or websocket closed)
    "rss_before_bytes",     # resident set size at request start; null when not measured (see below)
    "rss_after_bytes",      # resident set size when the response completed; null when not measured
    "traced_before_bytes",  # tracemalloc traced memory at start (null when not tracing or not measured)
    "traced_after_bytes",   # tracemalloc traced memory at completion (null when not tracing or not measured)
    "inflight_start",       # requests in flight when this one started (itself included)
    "inflight_end",         # requests in flight when this one completed (itself included)
)
# Measured requests: RSS costs a syscall, so under load it is read for a uniform
# random sample of about one request per ``config.request_rss_interval_seconds``
# (default 5 ms; 0 = all). Below that rate every request is measured. Since
# version 3 only measured requests have a record; the exact counts are in
# ``endpoint_interval`` (before, unmeasured records had null RSS). Traced
# memory is read for the same sample (each read allocates, which costs a
# traceback capture under tracemalloc), so ``endpoint_interval``'s
# ``traced_delta_bytes_sum`` is over the ``rss_measured`` calls.

#: Record kinds and their fields: name -> description with unit.
FIELDS: dict[str, dict[str, str]] = {
    "header": {
        "kind": '"header"',
        "format": f'always "{FORMAT_NAME}"',
        "schema_version": "int, format version of this file",
        "session_id": "str, unique per session (stem of the file name)",
        "leakyspanner_version": "str",
        "pid": "int, process id",
        "host": "str, host name",
        "python": "str, Python version",
        "platform": "str, platform string",
        "level": "str, one of LEVELS",
        "config": "object, the arguments leakyspanner() was called with",
        "start_ts": "float, Unix seconds when capture started",
        "baseline_rss_bytes": "int, RSS when capture started",
        "baseline_vms_bytes": "int, VMS when capture started",
        "cgroup_memory_limit_bytes": "int|null, container memory limit if a cgroup sets one",
        "memory_reader": 'str, "statm" or "psutil"',
        "request_fields": "list[str], REQUEST_FIELDS as written in this file",
        "request_records": '"measured" (version 3): a request record per RSS-measured request; absent: every request',
        "heap_engine": 'str, one of HEAP_ENGINES (version 4; absent before: tracemalloc unless level basic)',
        "heap_engine_note": "str|null, why the sampler is not used when it was not",
        "sample_bytes": "int|null, the sampler's mean bytes between samples",
    },
    "sample": {
        "kind": '"sample"',
        "ts": "float, Unix seconds",
        "seq": "int, sample number from 0",
        "rss_bytes": "int, resident set size",
        "vms_bytes": "int, virtual memory size",
        "rss_delta_bytes": "int, rss_bytes - baseline_rss_bytes",
        "gc_count": "list[int] of 3, gc.get_count()",
        "gc_collections": "list[int] of 3, collections per generation since start of process",
        "gc_collected": "list[int] of 3, objects collected per generation",
        "gc_uncollectable": "list[int] of 3, uncollectable objects per generation",
        "gc_garbage": "int, len(gc.garbage)",
        "tracing": "bool, tracemalloc was tracing",
        "traced_bytes": "int|null, tracemalloc traced memory",
        "traced_peak_bytes": "int|null, tracemalloc peak traced memory",
        "threads": "int, OS threads of the process",
        "open_fds": "int|null, open file descriptors",
        "asyncio_tasks": "int|null, unfinished tasks on the app's event loop",
        "asyncio_tasks_by_coro": "object, coroutine qualname -> unfinished tasks (top 20)",
        "inflight": "int, requests in flight",
        "requests_total": "int, requests completed since start",
        "requests_dropped": "int, request records dropped because the buffer was full",
        "internal_errors": "int, exceptions caught inside leakyspanner",
        "cgroup_memory_bytes": "int|null, the cgroup's current memory usage",
        "heap_live_bytes": "int|null, live Python heap estimated by the sampled heap engine (null without it)",
    },
    "endpoint_interval": {
        "kind": '"endpoint_interval"',
        "ts_start": "float, Unix seconds, previous sample (or start)",
        "ts": "float, Unix seconds, the sample closing this interval",
        "seq": "int, seq of the closing sample",
        "method": "str",
        "route": "str",
        "calls": "int, requests completed in the interval",
        "errors": "int, of which status >= 500",
        "duration_s_sum": "float",
        "duration_s_max": "float",
        "rss_measured": "int, of the calls, those with RSS read at both ends (absent before version 2: all)",
        "rss_delta_bytes_sum": "int, sum of rss_after - rss_before over the measured calls",
        "rss_delta_bytes_max": "int|null, null when none was measured",
        "traced_delta_bytes_sum": "int|null",
    },
    "snapshot": {
        "kind": '"snapshot"',
        "ts": "float, Unix seconds",
        "seq": "int, snapshot number from 0",
        "traced_bytes": "int, total traced memory in the snapshot (own allocations excluded)",
        "blocks": "int, live traced blocks in the snapshot",
        "sites_total": "int, distinct file:line sites",
        "frames": "int, tracemalloc frames per traceback",
        "cost_s": "float, CPU time spent taking and grouping the snapshot, in either process",
        "take_s": "float, wall time of tracemalloc.take_snapshot() alone",
        "stall_s": "float, of cost_s, the CPU time the sampler held this process's GIL (all of it inline; fork() and reading the answer when forked); absent in older logs",
        "mode": '"inline" | "fork": where the snapshot was taken; absent in older logs',
        "engine": '"tracemalloc" (version 4; absent before)',
        "site_fields": 'list[str], ["file", "line", "size_bytes", "count", "size_diff_bytes", "count_diff"]',
        "sites": "list[list], top sites by size and by growth since the previous snapshot",
        "traces": "list[object], deep only: {size_bytes, count, frames: [[file, line], ...]}",
    },
    "heap": {
        "kind": '"heap"',
        "ts": "float, Unix seconds",
        "seq": "int, heap snapshot number from 0",
        "engine": '"sampler"',
        "sample_bytes": "int, mean bytes between sampled allocations (exponential gaps)",
        "max_frames": "int, Python frames kept per sampled allocation",
        "live_bytes": "int, estimated live bytes over every sampled allocation still alive",
        "live_samples": "int, sampled allocations still alive",
        "samples_total": "int, allocations sampled since the engine started",
        "samples_dropped": "int, sampled allocations not tracked because the engine's table was full",
        "engine_bytes": "int, memory of the engine's own tables",
        "cost_s": "float, CPU time to take and group this snapshot (GIL held)",
        "endpoint_fields": "list[str], HEAP_ENDPOINT_FIELDS",
        "endpoints": "list[list], live bytes per endpoint (request context of the allocation)",
        "site_fields": "list[str], HEAP_SITE_FIELDS",
        "sites": "list[list], live bytes per endpoint x allocating line x first application frame (largest first, capped)",
    },
    "routes": {
        "kind": '"routes"',
        "ts": "float, Unix seconds (written once, at the first request or lifespan startup)",
        "routes": "list[object], per route: method, route, file, first_line, last_line, function (where the endpoint's code lives)",
    },
    "alert": {
        "kind": '"alert"',
        "ts": "float, Unix seconds",
        "alert": '"memory_growth"',
        "rss_bytes": "int",
        "baseline_rss_bytes": "int",
        "growth_bytes": "int",
        "threshold_bytes": "int",
    },
    "event": {
        "kind": '"event"',
        "ts": "float, Unix seconds",
        "event": '"tracing_started" | "tracing_stopped" | "internal_error" | "forked" | "snapshot_fork_failed"',
        "detail": "str",
    },
    "summary": {
        "kind": '"summary"',
        "ts": "float, Unix seconds",
        "duration_s": "float",
        "baseline_rss_bytes": "int",
        "peak_rss_bytes": "int",
        "final_rss_bytes": "int",
        "net_growth_bytes": "int",
        "samples": "int",
        "requests_total": "int, requests completed (counted as of the last sample)",
        "request_records": "int, request records written (version 3: the RSS-measured requests)",
        "requests_dropped": "int",
        "internal_errors": "int",
        # avg_delta_bytes is over the rss_measured calls (null when none was measured)
        "endpoints": "list[object]: method, route, calls, errors, rss_measured, avg_delta_bytes, max_delta_bytes, avg_duration_s, max_duration_s",
    },
}

KINDS = tuple(FIELDS) + ("request",)

#: Field names of a snapshot site row, in order.
SITE_FIELDS = ("file", "line", "size_bytes", "count", "size_diff_bytes", "count_diff")

#: A heap record's endpoint row: estimated live bytes and objects, and the samples behind them.
HEAP_ENDPOINT_FIELDS = ("method", "route", "size_bytes", "count", "samples")
#: A heap record's site row. ``file``/``line``/``function`` is the allocating line
#: (innermost frame outside leakyspanner); ``app_file``/``app_line`` the first
#: frame in application code (outside the standard library and installed packages)
#: when the stack has one: the line that caused an allocation made inside a library.
HEAP_SITE_FIELDS = ("method", "route", "file", "line", "function", "app_file", "app_line",
                    "size_bytes", "count", "samples")


def session_stem(start_ts: float, pid: int | None = None) -> str:
    """File stem for a session started at ``start_ts`` (local time), pid appended when given."""
    stem = STEM_PREFIX + time.strftime("%Y%m%d_%H%M%S", time.localtime(start_ts))
    return f"{stem}_p{pid}" if pid is not None else stem
