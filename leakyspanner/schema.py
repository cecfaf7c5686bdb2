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
the format by hand: writers and readers use the constants below. Every field
is described as data (:class:`Field`: type, unit, nullability), and the human
log's lines as one table (:data:`LOG_LINES`) that its writer and reader share.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

__all__ = [
    "BACKGROUND_ROUTE",
    "DATASET_FILE",
    "FIELDS",
    "FORMAT_NAME",
    "Field",
    "FieldType",
    "HEAP_ENDPOINT",
    "HEAP_ENDPOINT_FIELDS",
    "HEAP_ENGINES",
    "HEAP_SITE",
    "HEAP_SITE_FIELDS",
    "ItemType",
    "JSONL_SUFFIX",
    "KINDS",
    "LEVELS",
    "LOG_LINES",
    "LOG_RULE",
    "LOG_SUFFIX",
    "LOG_VALUES",
    "LOG_VARIANTS",
    "LogLine",
    "OTHER_ROUTE",
    "REQUEST",
    "REQUEST_FIELDS",
    "REQUEST_TAG",
    "ROUTE",
    "SCHEMA_VERSION",
    "SITE",
    "SITE_FIELDS",
    "STEM_PREFIX",
    "SUMMARY_ENDPOINT",
    "TRACE",
    "UNMATCHED_ROUTE",
    "Unit",
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
#: The file at the root of a Parquet dataset (``leakyspanner export --parquet``) that marks it as ours.
DATASET_FILE = "leakyspanner-dataset.json"

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

# ------------------------------------------------------------------ fields as data
# Each field is described once, here, by what a reader needs to check and type
# it: its JSON type, unit, whether it may be null or negative, and the version
# that added it. The loader takes its column types and its checks from these;
# ``doc`` is for people only, so editing it never changes a type.

#: JSON types a field can have.
FieldType = Literal["int", "float", "str", "bool", "list", "object"]
#: Units, when a number has one: bytes, a duration in seconds, Unix seconds.
Unit = Literal["bytes", "s", "unix_s"]
#: What a list or an object holds: numbers or text, rows (lists named by
#: ``row_names`` or the record's own ``<name>_fields``), objects (keys in ``keys``),
#: or ``[file, line]`` frames.
ItemType = Literal["int", "str", "row", "object", "frame"]


class Field(NamedTuple):
    """One field of a record (or one column of a row): a description readers type and check values by."""

    type: FieldType
    doc: str = ""
    unit: Unit | None = None
    null: bool = False      # null even in a complete record (every field is null when missing)
    signed: bool = False    # may be negative: a difference, never a size or a count
    since: int = 1          # schema version that added it; absent from older files
    choices: tuple[str, ...] = ()  # the values a text field takes today (readers accept others)
    length: int | None = None      # a list of fixed length
    items: ItemType | None = None  # what a list holds, or an object's values
    keys: Mapping[str, Field] | None = None  # items "object" or "row": the fields of one item
    row_names: str | None = None   # items "row": the record field that names the row's columns


def _ts(doc: str = "Unix seconds", **kw: Any) -> Field:
    return Field("float", doc, unit="unix_s", **kw)


def _seconds(doc: str = "", **kw: Any) -> Field:
    return Field("float", doc, unit="s", **kw)


def _bytes(doc: str = "", **kw: Any) -> Field:
    return Field("int", doc, unit="bytes", **kw)


def _count(doc: str = "", **kw: Any) -> Field:
    return Field("int", doc, **kw)


def _text(doc: str = "", **kw: Any) -> Field:
    return Field("str", doc, **kw)


def _kind(name: str) -> Field:
    return Field("str", f'always "{name}"', choices=(name,))


#: A request record's values after the tag, in order; ``REQUEST_FIELDS`` names them.
REQUEST: dict[str, Field] = {
    "ts": _ts("when the request started"),
    "method": _text('HTTP method, "WS" for a websocket, "OTHER" for a non-standard one'),
    "route": _text("route template (/items/{item_id}) or UNMATCHED_ROUTE"),
    "status": _count("response status; 500 when the app raised first"),
    "duration_s": _seconds("start to last body chunk handed to the server (or websocket closed)"),
    "rss_before_bytes": _bytes("resident set size at request start; null when not measured", null=True),
    "rss_after_bytes": _bytes("resident set size when the response completed; null when not measured", null=True),
    "traced_before_bytes": _bytes("tracemalloc traced memory at start (null when not tracing or not measured)",
                                  null=True),
    "traced_after_bytes": _bytes("tracemalloc traced memory at completion (null when not tracing or not measured)",
                                 null=True),
    "inflight_start": _count("requests in flight when this one started (itself included)"),
    "inflight_end": _count("requests in flight when this one completed (itself included)"),
}
#: Order of the values after the tag in a request record.
REQUEST_FIELDS = tuple(REQUEST)
# Measured requests: RSS costs a syscall, so under load it is read for a uniform
# random sample of about one request per ``config.request_rss_interval_seconds``
# (default 5 ms; 0 = all). Below that rate every request is measured. Since
# version 3 only measured requests have a record; the exact counts are in
# ``endpoint_interval`` (before, unmeasured records had null RSS). Traced
# memory is read for the same sample (each read allocates, which costs a
# traceback capture under tracemalloc), so ``endpoint_interval``'s
# ``traced_delta_bytes_sum`` is over the ``rss_measured`` calls.

#: A snapshot's site row: a file:line, its live bytes and blocks, and their growth since the previous snapshot.
SITE: dict[str, Field] = {
    "file": _text(), "line": _count(), "size_bytes": _bytes(), "count": _count(),
    "size_diff_bytes": _bytes(signed=True), "count_diff": _count(signed=True),
}
#: Field names of a snapshot site row, in order.
SITE_FIELDS = tuple(SITE)

#: A heap record's endpoint row: estimated live bytes and objects, and the samples behind them.
HEAP_ENDPOINT: dict[str, Field] = {
    "method": _text(), "route": _text(), "size_bytes": _bytes(), "count": _count(), "samples": _count(),
}
HEAP_ENDPOINT_FIELDS = tuple(HEAP_ENDPOINT)
#: A heap record's site row. ``file``/``line``/``function`` is the allocating line
#: (innermost frame outside leakyspanner); ``app_file``/``app_line`` the first
#: frame in application code (outside the standard library and installed packages)
#: when the stack has one: the line that caused an allocation made inside a library.
HEAP_SITE: dict[str, Field] = {
    "method": _text(), "route": _text(), "file": _text(), "line": _count(), "function": _text(),
    "app_file": _text(null=True), "app_line": _count(null=True),
    "size_bytes": _bytes(), "count": _count(), "samples": _count(),
}
HEAP_SITE_FIELDS = tuple(HEAP_SITE)

#: One entry of a deep snapshot's ``traces``.
TRACE: dict[str, Field] = {
    "size_bytes": _bytes(), "count": _count(), "frames": Field("list", "[file, line] pairs", items="frame"),
}
#: One entry of a ``routes`` record: where an endpoint's code lives.
ROUTE: dict[str, Field] = {
    "method": _text(), "route": _text(), "file": _text(null=True), "first_line": _count(null=True),
    "last_line": _count(null=True), "function": _text(null=True),
}
#: One entry of the summary's ``endpoints``; the averages are over the ``rss_measured`` calls.
SUMMARY_ENDPOINT: dict[str, Field] = {
    "method": _text(), "route": _text(), "calls": _count(), "errors": _count(),
    "rss_measured": _count("of the calls, those with RSS read at both ends (absent before version 2: all)"),
    "avg_delta_bytes": _bytes("null when none was measured", signed=True, null=True),
    "max_delta_bytes": _bytes("null when none was measured", signed=True, null=True),
    "avg_duration_s": _seconds(), "max_duration_s": _seconds(),
}



def _gc(doc: str) -> Field:
    return Field("list", doc, items="int", length=3)

#: Record kinds and their fields: kind -> field name -> :class:`Field`.
FIELDS: dict[str, dict[str, Field]] = {
    "header": {
        "kind": _kind("header"),
        "format": Field("str", "always FORMAT_NAME", choices=(FORMAT_NAME,)),
        "schema_version": _count("format version of this file"),
        "session_id": _text("unique per session (stem of the file name)"),
        "leakyspanner_version": _text(),
        "pid": _count("process id"),
        "host": _text("host name"),
        "python": _text("Python version"),
        "platform": _text("platform string"),
        "level": _text("the capture level", choices=LEVELS),
        "config": Field("object", "the arguments leakyspanner() was called with"),
        "start_ts": _ts("when capture started"),
        "baseline_rss_bytes": _bytes("RSS when capture started"),
        "baseline_vms_bytes": _bytes("VMS when capture started"),
        "cgroup_memory_limit_bytes": _bytes("container memory limit if a cgroup sets one", null=True),
        "memory_reader": _text(choices=("statm", "psutil")),
        "request_fields": Field("list", "REQUEST_FIELDS as written in this file", items="str"),
        "request_records": _text('"measured": a request record per RSS-measured request; absent: every request',
                                 choices=("measured",), since=3),
        "heap_engine": _text("absent before version 4: tracemalloc unless level basic", choices=HEAP_ENGINES,
                             since=4),
        "heap_engine_note": _text("why the sampler is not used when it was not", null=True, since=4),
        "sample_bytes": _bytes("the sampler's mean bytes between samples", null=True, since=4),
        "request_path": _text("the middleware's per-request bookkeeping: the C extension or pure Python "
                              "(absent from older files: python)", choices=("c", "python"),
                              since=4),
    },
    "sample": {
        "kind": _kind("sample"),
        "ts": _ts(),
        "seq": _count("sample number from 0"),
        "rss_bytes": _bytes("resident set size"),
        "vms_bytes": _bytes("virtual memory size"),
        "rss_delta_bytes": _bytes("rss_bytes - baseline_rss_bytes", signed=True),
        "gc_count": _gc("gc.get_count()"),
        "gc_collections": _gc("collections per generation since start of process"),
        "gc_collected": _gc("objects collected per generation"),
        "gc_uncollectable": _gc("uncollectable objects per generation"),
        "gc_garbage": _count("len(gc.garbage)"),
        "tracing": Field("bool", "tracemalloc was tracing"),
        "traced_bytes": _bytes("tracemalloc traced memory", null=True),
        "traced_peak_bytes": _bytes("tracemalloc peak traced memory", null=True),
        "threads": _count("OS threads of the process"),
        "open_fds": _count("open file descriptors", null=True),
        "asyncio_tasks": _count("unfinished tasks on the app's event loop", null=True),
        "asyncio_tasks_by_coro": Field("object", "coroutine qualname -> unfinished tasks (top 20)", items="int"),
        "inflight": _count("requests in flight"),
        "requests_total": _count("requests completed since start"),
        "requests_dropped": _count("request records dropped because the buffer was full"),
        "internal_errors": _count("exceptions caught inside leakyspanner"),
        "cgroup_memory_bytes": _bytes("the cgroup's current memory usage", null=True),
        "heap_live_bytes": _bytes("live Python heap estimated by the sampled heap engine (null without it)",
                                  null=True, since=4),
    },
    "endpoint_interval": {
        "kind": _kind("endpoint_interval"),
        "ts_start": _ts("the previous sample (or start)"),
        "ts": _ts("the sample closing this interval"),
        "seq": _count("seq of the closing sample"),
        "method": _text(),
        "route": _text(),
        "calls": _count("requests completed in the interval"),
        "errors": _count("of which status >= 500"),
        "duration_s_sum": _seconds(),
        "duration_s_max": _seconds(),
        "rss_measured": _count("of the calls, those with RSS read at both ends (absent before version 2: all)",
                               since=2),
        "rss_delta_bytes_sum": _bytes("sum of rss_after - rss_before over the measured calls", signed=True),
        "rss_delta_bytes_max": _bytes("null when none was measured", signed=True, null=True),
        "traced_delta_bytes_sum": _bytes(signed=True, null=True),
    },
    "snapshot": {
        "kind": _kind("snapshot"),
        "ts": _ts(),
        "seq": _count("snapshot number from 0"),
        "traced_bytes": _bytes("total traced memory in the snapshot (own allocations excluded)"),
        "blocks": _count("live traced blocks in the snapshot"),
        "sites_total": _count("distinct file:line sites"),
        "frames": _count("tracemalloc frames per traceback"),
        "cost_s": _seconds("CPU time spent taking and grouping the snapshot, in either process"),
        "take_s": _seconds("wall time of tracemalloc.take_snapshot() alone"),
        "stall_s": _seconds("of cost_s, the CPU time the sampler held this process's GIL (all of it "
                         "inline; fork() and reading the answer when forked); absent in older logs"),
        "mode": _text("where the snapshot was taken; absent in older logs", choices=("inline", "fork")),
        "engine": _text("absent before version 4", choices=("tracemalloc",), since=4),
        "site_fields": Field("list", "SITE_FIELDS", items="str"),
        "sites": Field("list", "top sites by size and by growth since the previous snapshot", items="row",
                       keys=SITE, row_names="site_fields"),
        "traces": Field("list", "deep only: the largest traces", items="object", keys=TRACE),
    },
    "heap": {
        "kind": _kind("heap"),
        "ts": _ts(),
        "seq": _count("heap snapshot number from 0"),
        "engine": _text(choices=("sampler",)),
        "sample_bytes": _bytes("mean bytes between sampled allocations (exponential gaps)"),
        "max_frames": _count("Python frames kept per sampled allocation"),
        "live_bytes": _bytes("estimated live bytes over every sampled allocation still alive"),
        "live_samples": _count("sampled allocations still alive"),
        "samples_total": _count("allocations sampled since the engine started"),
        "samples_dropped": _count("sampled allocations not tracked because the engine's table was full"),
        "engine_bytes": _bytes("memory of the engine's own tables"),
        "cost_s": _seconds("CPU time to take and group this snapshot (GIL held)"),
        "endpoint_fields": Field("list", "HEAP_ENDPOINT_FIELDS", items="str"),
        "endpoints": Field("list", "live bytes per endpoint (request context of the allocation)", items="row",
                           keys=HEAP_ENDPOINT, row_names="endpoint_fields"),
        "site_fields": Field("list", "HEAP_SITE_FIELDS", items="str"),
        "sites": Field("list", "live bytes per endpoint x allocating line x first application frame "
                       "(largest first, capped)", items="row", keys=HEAP_SITE, row_names="site_fields"),
    },
    "routes": {
        "kind": _kind("routes"),
        "ts": _ts("written once, at the first request or lifespan startup"),
        "routes": Field("list", "per route, where the endpoint's code lives", items="object", keys=ROUTE),
    },
    "alert": {
        "kind": _kind("alert"),
        "ts": _ts(),
        "alert": _text(choices=("memory_growth",)),
        "rss_bytes": _bytes(),
        "baseline_rss_bytes": _bytes(),
        "growth_bytes": _bytes(signed=True),
        "threshold_bytes": _bytes(),
    },
    "event": {
        "kind": _kind("event"),
        "ts": _ts(),
        "event": _text(choices=("tracing_started", "tracing_stopped", "internal_error", "forked",
                                "snapshot_fork_failed", "snapshot_skipped", "heap_engine_fallback",
                                "heap_sampling_started")),
        "detail": _text(),
    },
    "summary": {
        "kind": _kind("summary"),
        "ts": _ts(),
        "duration_s": _seconds(),
        "baseline_rss_bytes": _bytes(),
        "peak_rss_bytes": _bytes(),
        "final_rss_bytes": _bytes(),
        "net_growth_bytes": _bytes(signed=True),
        "samples": _count(),
        "requests_total": _count("requests completed (counted as of the last sample)"),
        "request_records": _count("request records written (version 3: the RSS-measured requests)"),
        "requests_dropped": _count(),
        "internal_errors": _count(),
        "endpoints": Field("list", "per endpoint totals", items="object", keys=SUMMARY_ENDPOINT),
    },
}

KINDS = tuple(FIELDS) + ("request",)


# ------------------------------------------------------------------ the human .log
# The 0.1.x line formats, described once for the writer (capture/humanlog.py
# fills ``template`` and the ``tails`` it has values for) and every reader
# (analysis/legacy.py builds its patterns from the same table). Values are
# formatted by the writer; ``values`` says how a reader recognises each one.


class LogLine(NamedTuple):
    """One kind of line of the human ``.log``.

    ``template`` is a :meth:`str.format` string; ``tails`` are optional
    endings (name -> template) written after it, in order, when their value
    is known (older writers left them out). ``values`` names each placeholder's
    shape, a key of :data:`LOG_VALUES`. ``record`` is the JSONL record kind the
    line shows, when it shows one.
    """

    template: str
    values: Mapping[str, str]
    tails: Mapping[str, str] = {}
    record: str | None = None


#: Shapes of the values in a log line (readers turn these into patterns).
LOG_VALUES = {
    "clock": r"\d{1,2}:\d{2}:\d{2}",           # local HH:MM:SS
    "number": r"[+-]?\d+(?:\.\d+)?",            # MB, seconds: as formatted, sign included
    "int": r"\d+",
    "word": r"\S+",
    "label": r"[^:]+",                          # up to the next colon
    "text": r".+?",                             # anything, at least one character
    "rest": r".*?",                             # anything, possibly nothing
    "gc": r"\(\d+,\s*\d+,\s*\d+\)",             # a tuple of three generation counts
    "size": r"[+-]?\d+(?:\.\d+)?(?:KB|MB)",     # a number with its unit
    "mb_or_na": r"(?:[+-]?\d+(?:\.\d+)?MB|n/a)",  # n/a: no request of the endpoint was measured
}

#: What 0.1.x wrote where today's writer writes the key (readers accept either).
LOG_VARIANTS = {
    "\u26a0\ufe0f": ("!!", "\u26a0"),
    "\u2500\u2500": ("--",),
    "\u00d7": ("x",),
    "Samples": ("Snapshots",),
}

#: The rule above and below the header and the summary.
LOG_RULE = "=" * 70
#: Every line kind of the human log, in the order a session writes them.
LOG_LINES: dict[str, LogLine] = {
    # header block, between two rules
    "version": LogLine("  LeakySpanner v{version}", {"version": "word"}),
    "started": LogLine("  started  : {started}", {"started": "word"}),
    "platform": LogLine("  platform : {platform}", {"platform": "rest"}),
    "level": LogLine("  level    : {level}", {"level": "word", "interval_s": "number", "threshold_mb": "number"},
                     tails={"interval_s": "  interval={interval_s}s", "threshold_mb": "  threshold={threshold_mb}MB"}),
    "baseline": LogLine("  baseline : {baseline_mb:.2f} MB RSS", {"baseline_mb": "number"}),
    "jsonl": LogLine("  jsonl    : {jsonl}", {"jsonl": "rest"}),
    # body
    "sample": LogLine("[{clock}] RSS={rss_mb:.1f}MB  VMS={vms_mb:.1f}MB  delta={delta_mb:+.1f}MB",
                      {"clock": "clock", "rss_mb": "number", "vms_mb": "number", "delta_mb": "number", "gc": "gc"},
                      tails={"gc": "  GC={gc}"}, record="sample"),
    "endpoint": LogLine("  [{clock}] ENDPOINT {method} {route}  mem_delta={delta_mb:+.2f}MB",
                        {"clock": "clock", "method": "word", "route": "text", "delta_mb": "number",
                         "status": "int"},
                        tails={"status": "  status={status}"}, record="request"),
    "alert": LogLine("\u26a0\ufe0f [{clock}] MEMORY GROWTH ALERT: {growth_mb:+.1f} MB above baseline "
                     "(baseline={baseline_mb:.1f} MB, current={rss_mb:.1f} MB)",
                     {"clock": "clock", "growth_mb": "number", "baseline_mb": "number", "rss_mb": "number"},
                     record="alert"),
    "allocations": LogLine("  \u2500\u2500 top allocations \u2500\u2500", {}, record="snapshot"),
    "allocation": LogLine("    {size} \u00d7 {count}  {file}:{line}",
                          {"size": "size", "count": "int", "file": "text", "line": "int"}),
    "event": LogLine("  [event] {event}: {detail}", {"event": "label", "detail": "rest"}, record="event"),
    # summary, between rules
    "summary": LogLine("  LEAKYSPANNER SESSION SUMMARY", {}, record="summary"),
    "peak_rss": LogLine("  Peak RSS    : {mb:.1f} MB", {"mb": "number"}),
    "final_rss": LogLine("  Final RSS   : {mb:.1f} MB", {"mb": "number"}),
    "baseline_rss": LogLine("  Baseline RSS: {mb:.1f} MB", {"mb": "number"}),
    "net_growth": LogLine("  Net growth  : {mb:+.1f} MB", {"mb": "number"}),
    "samples": LogLine("  Samples     : {samples}", {"samples": "int"}),
    "requests": LogLine("  Requests    : {requests_total}  dropped={requests_dropped}  "
                        "internal_errors={internal_errors}",
                        {"requests_total": "int", "requests_dropped": "int", "internal_errors": "int"}),
    "summary_platform": LogLine("  Platform    : {platform}", {"platform": "rest"}),
    "endpoints": LogLine("  ENDPOINT MEMORY DELTAS (sorted by avg):", {}),
    "summary_endpoint": LogLine("    {method:6} {route:<40} calls={calls:4}  avg={avg}  max={max}",
                                {"method": "word", "route": "text", "calls": "int", "avg": "mb_or_na",
                                 "max": "mb_or_na", "measured": "int"},
                                tails={"measured": "  (RSS measured on {measured})"}),
}


def session_stem(start_ts: float, pid: int | None = None) -> str:
    """File stem for a session started at ``start_ts`` (local time), pid appended when given."""
    stem = STEM_PREFIX + time.strftime("%Y%m%d_%H%M%S", time.localtime(start_ts))
    return f"{stem}_p{pid}" if pid is not None else stem
