"""The one thread that turns buffered records into files.

The request path and the sampler only append tuples to a ``deque`` (atomic,
never blocks). This thread drains it in FIFO order every ``flush_s``, so the
requests completed before a sample are always aggregated into that sample's
interval. Each drain is written with one ``write`` and flushed, so a SIGKILL
loses at most what was still buffered in memory and a torn last line.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from ..schema import OTHER_ROUTE, REQUEST_TAG
from . import humanlog, niceness
from .routes import METHODS, RouteNamer

__all__ = ["RecordWriter", "REQUEST", "SAMPLE", "OBJECT"]

logger = logging.getLogger("leakyspanner")

#: (REQUEST, t0, t1, method, target id, root_after, root_before, status, rss0, rss1, tr0, tr1, in0, in1);
#: the id is a key of the profiler's targets dict, which holds (route, endpoint)
REQUEST = 0
SAMPLE = 1   # (SAMPLE, record_dict)
OBJECT = 2   # (OBJECT, record_dict): snapshot, alert, event

_MB = 1024 * 1024
# One request record: the tag, then schema.REQUEST_FIELDS in order (method and route pre-encoded).
_REQUEST_LINE = '["' + REQUEST_TAG + '",%.4f,%s,%d,%.6f,%s,%s,%s,%s,%d,%d]\n'
_REQUEST_ARITY = _REQUEST_LINE.count("%")  # values per request line
_CHUNK = 16  # records per GIL hold while draining (~20 µs)
#: between chunks: releases the GIL and lets a thread waiting for it (the event loop) run
#: first. 0.3 µs here, where ``time.sleep(0)`` costs 30 µs of CPU (a timer syscall in a VM).
_yield: Callable[[], None] = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))
_ENDPOINT_LINE_BYTES = _MB  # the human log lists requests whose |delta| exceeds 1 MB
#: routes whose template depends on the raw root path, cached (~400 B each with their keys)
_MAX_RESOLVED = 512


@functools.lru_cache(maxsize=_CHUNK + 1)
def _request_lines(n: int) -> str:
    """The format of ``n`` request lines, for one ``%`` per chunk."""
    return _REQUEST_LINE * n


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), default=str)


class RecordWriter:
    """Drains the record buffer into the ``.jsonl`` and ``.log`` files."""

    def __init__(
        self,
        buffer: deque[tuple[Any, ...]],
        jsonl: IO[str],
        log: IO[str],
        routes: RouteNamer,
        targets: dict[int, tuple[Any, Any]],
        perf_to_wall: float,
        on_error: Callable[[str, BaseException], None],
        dropped: Callable[[], int],
        flush_s: float = 0.2,
    ) -> None:
        self._buffer = buffer
        self._jsonl = jsonl
        self._log = log
        self._routes = routes
        self._targets = targets
        self._offset = perf_to_wall
        self._on_error = on_error
        self._dropped = dropped
        self._flush_s = flush_s
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._draining = threading.Lock()
        self._json_str: dict[str, str] = {}
        self._resolved: dict[tuple[Any, ...], tuple[tuple[str, str], str]] = {}
        #: target id -> method -> hit: no key tuple per record
        self._resolved_static: dict[int, dict[str, tuple[tuple[str, str], str]]] = {}
        self._n_static = 0
        self._interval: dict[tuple[str, str], list[Any]] = {}
        self._interval_start: float | None = None
        self._endpoints: dict[tuple[str, str], list[Any]] = {}
        self.requests_total = 0
        self.samples = 0
        self.peak_rss_bytes = 0
        self.final_rss_bytes = 0

    # -- thread -------------------------------------------------------------
    def start(self, start_ts: float) -> None:
        self._interval_start = start_ts
        self._thread = threading.Thread(target=self._run, name="leakyspanner-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        niceness.lower_this_thread()  # the event loop goes first on a shared core
        while not self._stopped.wait(self._flush_s):
            self.drain()

    def stop(self) -> None:
        """Stop the thread and write whatever is still buffered; idempotent."""
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.drain()

    def write_lines(self, jsonl_lines: list[str], log_lines: list[str]) -> None:
        try:
            if jsonl_lines:
                self._jsonl.write("".join(jsonl_lines))
                self._jsonl.flush()
            if log_lines:
                self._log.write("\n".join(log_lines) + "\n")
                self._log.flush()
        except Exception as exc:  # disk full, closed file: count it, keep going
            self._on_error("write", exc)

    # -- records ------------------------------------------------------------
    def drain(self) -> None:
        """Write what is buffered now; records that arrive meanwhile wait for the next drain.

        Chasing the tail under load would keep this thread contending for the
        GIL with the event loop without end. Each chunk of ``_CHUNK`` records
        holds the GIL for about 30 µs; between chunks the thread yields the GIL
        and the CPU, so an event loop waiting for either gets it.
        """
        # one drainer at a time, so pops cannot fail; stop() after a join timeout gives up
        # rather than hang behind a writer thread stuck on a dead disk
        if not self._draining.acquire(timeout=10):
            return
        try:
            buffer = self._buffer
            out: list[str] = []
            log: list[str] = []
            popleft = buffer.popleft
            left = len(buffer)
            while left > 0:
                n = min(left, _CHUNK)
                left -= n
                self._records([popleft() for _ in range(n)], out, log)
                if len(out) >= 500:
                    self.write_lines(out, log)
                    out, log = [], []
                if left > 0:
                    _yield()
            self.write_lines(out, log)
        finally:
            self._draining.release()

    def _jstr(self, s: str) -> str:
        cached = self._json_str.get(s)
        if cached is None:
            cached = json.dumps(s)
            if len(self._json_str) < 4096:
                self._json_str[s] = cached
        return cached

    def _hit(self, method: str, template: str) -> tuple[tuple[str, str], str]:
        """(method, template) and its JSON text."""
        return (method, template), f"{self._jstr(method)},{self._jstr(template)}"

    def _slow_hit(self, method: str, target_id: int, root_after: str, root_before: str
                  ) -> tuple[tuple[str, str], str]:
        """Resolve a route the fast cache does not hold, caching it where that stays bounded."""
        if method not in METHODS:  # the raw method is the client's to choose: cache only its bucket
            method = "OTHER"
            by_method = self._resolved_static.get(target_id)
            hit = by_method.get(method) if by_method is not None else None
            if hit is not None:
                return hit
        target = self._targets.get(target_id)
        if target is None:  # past the registry's cap: named, not guessed
            return self._hit(method, OTHER_ROUTE)
        route, endpoint = target
        cache_key = (method, target_id, root_after, root_before)
        hit = self._resolved.get(cache_key)
        if hit is None:
            hit = self._hit(method, self._routes.name(route, endpoint, root_after or "", root_before or ""))
            if self._routes.is_static(route, endpoint):
                if self._n_static < 4096:
                    self._resolved_static.setdefault(target_id, {})[method] = hit
                    self._n_static += 1
            elif len(self._resolved) < _MAX_RESOLVED:  # raw root paths are unbounded: stop caching, stay correct
                self._resolved[cache_key] = hit
        return hit

    def _other(self, item: tuple[Any, ...], out: list[str], log: list[str]) -> None:
        try:
            if item[0] == SAMPLE:
                self._sample(item[1], out, log)
            else:
                self._object(item[1], out, log)
        except Exception as exc:
            self._on_error("writer", exc)

    def _records(self, items: list[tuple[Any, ...]], out: list[str], log: list[str]) -> None:
        """Write a chunk of records in order; request records are formatted with one ``%``.

        The hot loop of the writer: it allocates little (no key tuple per
        record, one string per chunk), because under tracemalloc every
        allocation costs a traceback capture and the GIL it is made under.
        """
        static_get = self._resolved_static.get
        interval = self._interval
        offset = self._offset
        values: list[Any] = []
        add = values.extend
        done = 0
        item: Any = None
        try:
            for item in items:
                try:
                    (_, t0, t1, method, target_id, root_after, root_before, status,
                     rss0, rss1, tr0, tr1, in0, in1) = item
                except ValueError:  # a sample or object: write the requests before it first
                    if done:
                        self._flush_requests(done, values, out)
                        values.clear()
                        done = 0
                    self._other(item, out, log)
                    interval = self._interval  # a sample closed the interval: a new dict
                    continue
                by_method = static_get(target_id)
                hit = by_method.get(method) if by_method is not None else None
                if hit is None:
                    hit = self._slow_hit(method, target_id, root_after, root_before)
                key, names = hit
                duration = t1 - t0
                agg = interval.get(key)
                if agg is None:
                    # calls, errors, duration sum, duration max, RSS-measured calls, delta sum, delta max, traced sum
                    agg = interval[key] = [0, 0, 0.0, 0.0, 0, 0, None, None]
                agg[0] += 1
                if status >= 500:
                    agg[1] += 1
                agg[2] += duration
                if duration > agg[3]:
                    agg[3] = duration
                if tr0 is None or tr1 is None:
                    tr0 = tr1 = "null"
                else:
                    agg[7] = tr1 - tr0 if agg[7] is None else agg[7] + tr1 - tr0
                if rss0 is None:  # not measured: the middleware reads RSS for a random sample
                    add((t0 + offset, names, status, duration, "null", "null", tr0, tr1, in0, in1))
                else:
                    add((t0 + offset, names, status, duration, rss0, rss1, tr0, tr1, in0, in1))
                    delta = rss1 - rss0
                    agg[4] += 1
                    agg[5] += delta
                    if agg[6] is None or delta > agg[6]:
                        agg[6] = delta
                    if delta > _ENDPOINT_LINE_BYTES or delta < -_ENDPOINT_LINE_BYTES:
                        log.append(humanlog.endpoint_line(t0 + offset + duration, key[0], key[1], delta, status))
                done += 1
        except Exception as exc:  # one bad record: write the ones before it, then go on past it
            self._on_error("writer", exc)
            del values[done * _REQUEST_ARITY:]
            if done:
                self._flush_requests(done, values, out)
            bad = next(i for i, x in enumerate(items) if x is item)
            if bad + 1 < len(items):
                self._records(items[bad + 1:], out, log)
            return
        if done:
            self._flush_requests(done, values, out)

    def _flush_requests(self, n: int, values: list[Any], out: list[str]) -> None:
        self.requests_total += n
        out.append(_request_lines(n) % tuple(values))

    def _fold_interval(self) -> None:
        """Add the current interval's aggregates to the session totals."""
        for key, (calls, errors, dur_sum, dur_max, measured, d_sum, d_max, _) in self._interval.items():
            total = self._endpoints.get(key)
            if total is None:
                self._endpoints[key] = [calls, errors, dur_sum, dur_max, measured, d_sum, d_max]
            else:
                total[0] += calls
                total[1] += errors
                total[2] += dur_sum
                total[3] = max(total[3], dur_max)
                total[4] += measured
                total[5] += d_sum
                if d_max is not None and (total[6] is None or d_max > total[6]):
                    total[6] = d_max
        self._interval = {}

    def _sample(self, record: dict[str, Any], out: list[str], log: list[str]) -> None:
        record["requests_total"] = self.requests_total
        record["requests_dropped"] = self._dropped()
        self.samples += 1
        rss = record["rss_bytes"]
        self.final_rss_bytes = rss
        if rss > self.peak_rss_bytes:
            self.peak_rss_bytes = rss
        out.append(_dumps(record) + "\n")
        for (method, route), agg in self._interval.items():
            out.append(_dumps({
                "kind": "endpoint_interval", "ts_start": self._interval_start, "ts": record["ts"],
                "seq": record["seq"], "method": method, "route": route, "calls": agg[0],
                "errors": agg[1], "duration_s_sum": round(agg[2], 6), "duration_s_max": round(agg[3], 6),
                "rss_measured": agg[4], "rss_delta_bytes_sum": agg[5], "rss_delta_bytes_max": agg[6],
                "traced_delta_bytes_sum": agg[7],
            }) + "\n")
        self._fold_interval()
        self._interval_start = record["ts"]
        log.append(humanlog.sample_line(record["ts"], rss, record["vms_bytes"],
                                        record["rss_delta_bytes"], record["gc_count"]))

    def _object(self, record: dict[str, Any], out: list[str], log: list[str]) -> None:
        out.append(_dumps(record) + "\n")
        kind = record.get("kind")
        if kind == "alert":
            log.append(humanlog.alert_line(record["ts"], record["growth_bytes"],
                                           record["baseline_rss_bytes"], record["rss_bytes"]))
        elif kind == "snapshot":
            rows = [(r[0], r[1], r[2], r[3]) for r in record.get("sites", ())]
            rows.sort(key=lambda r: r[2], reverse=True)
            log.extend(humanlog.top_allocation_lines(rows))
        elif kind == "event":
            log.append(f"  [event] {humanlog.clean(record.get('event'))}: {humanlog.clean(record.get('detail', ''))}")

    def endpoint_summary(self) -> list[dict[str, Any]]:
        """Per-endpoint totals, sorted by average delta as the seed's summary was."""
        self._fold_interval()
        rows = []
        for (method, route), (calls, errors, dur_sum, dur_max, measured, d_sum, d_max) in self._endpoints.items():
            rows.append({
                "method": method, "route": route, "calls": calls, "errors": errors, "rss_measured": measured,
                "avg_delta_bytes": round(d_sum / measured) if measured else None, "max_delta_bytes": d_max,
                "avg_duration_s": round(dur_sum / calls, 6), "max_duration_s": round(dur_max, 6),
            })
        rows.sort(key=lambda r: -1e18 if r["avg_delta_bytes"] is None else r["avg_delta_bytes"], reverse=True)
        return rows
