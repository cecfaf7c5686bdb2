"""Owns the open ``.jsonl``/``.log`` files and the endpoint totals, written by the writer thread (by stop() once it is joined).

The one thread that turns buffered records into files.

The request path and the sampler only append tuples to a ``deque`` (atomic,
never blocks). This thread drains it in FIFO order every ``flush_s``. Request
records are the RSS-measured sample; the exact per-endpoint counts arrive with
each sample as a copy of the request path's cumulative counters, and an
interval's counts are the difference between two copies, so no request is
lost or counted twice even when one completes while the copy is taken. Each
drain is written with one ``write`` and flushed, so a SIGKILL loses at most
what was still buffered in memory and a torn last line.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from json import dumps as _json_dumps  # bound at import: a test mocking json.dumps never sees us
from typing import IO, Any

from ..schema import REQUEST_TAG
from . import humanlog
from .threads import Ticker

__all__ = ["RecordWriter", "REQUEST", "SAMPLE", "OBJECT"]

logger = logging.getLogger("leakyspanner")

#: (REQUEST, t0, duration, (method, route), status, rss0, rss1, tr0, tr1, in0, in1): a measured request
REQUEST = 0
#: (SAMPLE, record_dict, counters, human): counters are copies of the request path's
#: [calls, errors, duration sum, duration max, (method, route)], cumulative but the max;
#: human says whether the sample also gets a line in the human log
SAMPLE = 1
OBJECT = 2   # (OBJECT, record_dict): snapshot, alert, event

_MB = 1024 * 1024
# One request record: the tag, then schema.REQUEST_FIELDS in order (method and route pre-encoded).
_REQUEST_LINE = '["' + REQUEST_TAG + '",%.4f,%s,%d,%.6f,%d,%d,%s,%s,%d,%d]\n'
_REQUEST_ARITY = _REQUEST_LINE.count("%")  # values per request line
_CHUNK = 16  # records per GIL hold while draining (~15 µs)
#: between chunks: releases the GIL and lets a thread waiting for it (the event loop) run
#: first. 0.3 µs here, where ``time.sleep(0)`` costs 30 µs of CPU (a timer syscall in a VM).
_yield: Callable[[], None] = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))
_ENDPOINT_LINE_BYTES = _MB  # the human log lists requests whose |delta| exceeds 1 MB


@functools.lru_cache(maxsize=_CHUNK + 1)
def _request_lines(n: int) -> str:
    """The format of ``n`` request lines, for one ``%`` per chunk."""
    return _REQUEST_LINE * n


def _dumps(record: dict[str, Any]) -> str:
    return _json_dumps(record, separators=(",", ":"), default=str)


class RecordWriter:
    """Drains the record buffer into the ``.jsonl`` and ``.log`` files."""

    def __init__(
        self,
        buffer: deque[tuple[Any, ...]],
        jsonl: IO[str],
        log: IO[str],
        perf_to_wall: float,
        on_error: Callable[[str, BaseException], None],
        dropped: Callable[[], int],
        flush_s: float = 0.2,
        reopen: Callable[[], tuple[IO[str], IO[str]] | None] | None = None,
    ) -> None:
        self._buffer = buffer
        #: new files when ours were deleted (their directory removed): the session goes on there
        self._reopen = reopen
        self._jsonl, self._log = jsonl, log
        self._offset = perf_to_wall
        self._on_error = on_error
        self._dropped = dropped
        self.ticker = Ticker("leakyspanner-writer", lambda: flush_s, self.drain)
        self._draining = threading.Lock()
        self._names: dict[tuple[str, str], str] = {}  # (method, route) -> its JSON text
        #: measured requests this interval: (method, route) -> [calls, delta sum, delta max, traced sum]
        self._measured: dict[tuple[str, str], list[Any]] = {}
        self._interval_start: float | None = None
        #: session totals: (method, route) -> [calls, errors, duration sum, duration max,
        #: measured, delta sum, delta max]; calls, errors and the duration sum are the
        #: cumulative counters as last copied
        self._endpoints: dict[tuple[str, str], list[Any]] = {}
        self.requests_total = 0  # request records written
        self.calls_total = 0  # requests counted, as of the last sample
        self.samples = 0
        self.peak_rss_bytes = 0
        self.final_rss_bytes = 0

    # -- thread -------------------------------------------------------------
    def start(self, start_ts: float) -> None:
        self._interval_start = start_ts
        self.ticker.start()

    def stop(self) -> None:
        """Stop the thread and write whatever is still buffered; idempotent."""
        self.ticker.stop(join_s=2)  # shutdown stays bounded; the drain below writes the rest
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
        holds the GIL for about 15 µs; between chunks the thread yields the GIL
        and the CPU, so an event loop waiting for either gets it.
        """
        # one drainer at a time, so pops cannot fail; stop() after a join timeout gives up
        # rather than hang behind a writer thread stuck on a dead disk
        if not self._draining.acquire(timeout=10):
            return
        try:
            self._check_files()
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

    def _check_files(self) -> None:
        """A deleted file takes writes without a word: one ``fstat`` per drain notices it."""
        if self._reopen is None:
            return
        try:
            if os.fstat(self._jsonl.fileno()).st_nlink > 0:
                return
        except (OSError, ValueError):  # closed, or not a real file
            return
        files = self._reopen()
        if files is not None:
            self._jsonl, self._log = files

    def _name(self, key: tuple[str, str]) -> str:
        """``"GET","/items/{item_id}"``: the JSON of a (method, route) key (bounded: one per counter)."""
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = f"{_json_dumps(key[0])},{_json_dumps(key[1])}"
        return names

    def _other(self, item: tuple[Any, ...], out: list[str], log: list[str]) -> None:
        try:
            if item[0] == SAMPLE:
                self._sample(item[1], item[2], out, log, item[3])
            else:
                self._object(item[1], out, log)
        except Exception as exc:
            self._on_error("writer", exc)

    def _records(self, items: list[tuple[Any, ...]], out: list[str], log: list[str]) -> None:
        """Write a chunk of records in order; request records are formatted with one ``%``."""
        names = self._names
        measured = self._measured
        offset = self._offset
        values: list[Any] = []
        add = values.extend
        done = 0
        item: Any = None
        try:
            for item in items:
                if item[0] != REQUEST:  # a sample or object: write the requests before it first
                    if done:
                        self._flush_requests(done, values, out)
                        values.clear()
                        done = 0
                    self._other(item, out, log)
                    measured = self._measured  # a sample closed the interval: a new dict
                    continue
                _, t0, duration, key, status, rss0, rss1, tr0, tr1, in0, in1 = item
                name = names.get(key)
                if name is None:
                    name = self._name(key)
                agg = measured.get(key)
                if agg is None:
                    agg = measured[key] = [0, 0, None, None]
                delta = rss1 - rss0
                agg[0] += 1
                agg[1] += delta
                if agg[2] is None or delta > agg[2]:
                    agg[2] = delta
                if tr0 is None or tr1 is None:
                    tr0 = tr1 = "null"
                else:
                    agg[3] = tr1 - tr0 if agg[3] is None else agg[3] + tr1 - tr0
                add((t0 + offset, name, status, duration, rss0, rss1, tr0, tr1, in0, in1))
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

    def _sample(self, record: dict[str, Any], counters: Any, out: list[str], log: list[str],
                human: bool = True) -> None:
        """The sample, then one ``endpoint_interval`` per endpoint called or measured since the last one."""
        intervals: dict[tuple[str, str], list[Any]] = {}
        endpoints = self._endpoints
        for calls, errors, dur_sum, dur_max, key in counters:
            total = endpoints.get(key)
            if total is None:
                total = endpoints[key] = [0, 0, 0.0, 0.0, 0, 0, None]
            if calls != total[0]:
                intervals[key] = [calls - total[0], errors - total[1], dur_sum - total[2], dur_max]
                total[0], total[1], total[2] = calls, errors, dur_sum
                if dur_max > total[3]:
                    total[3] = dur_max
        self.calls_total = sum(total[0] for total in endpoints.values())
        record["requests_total"] = self.calls_total
        record["requests_dropped"] = self._dropped()
        self.samples += 1
        rss = record["rss_bytes"]
        self.final_rss_bytes = rss
        if rss > self.peak_rss_bytes:
            self.peak_rss_bytes = rss
        out.append(_dumps(record) + "\n")
        for key in [*intervals, *(k for k in self._measured if k not in intervals)]:
            calls, errors, dur_sum, dur_max = intervals.get(key, (0, 0, 0.0, 0.0))
            measured, d_sum, d_max, tr_sum = self._measured.get(key, (0, 0, None, None))
            out.append(_dumps({
                "kind": "endpoint_interval", "ts_start": self._interval_start, "ts": record["ts"],
                "seq": record["seq"], "method": key[0], "route": key[1], "calls": calls,
                "errors": errors, "duration_s_sum": round(dur_sum, 6), "duration_s_max": round(dur_max, 6),
                "rss_measured": measured, "rss_delta_bytes_sum": d_sum, "rss_delta_bytes_max": d_max,
                "traced_delta_bytes_sum": tr_sum,
            }) + "\n")
        self._fold_measured()
        self._interval_start = record["ts"]
        if human:
            log.append(humanlog.sample_line(record["ts"], rss, record["vms_bytes"],
                                            record["rss_delta_bytes"], record["gc_count"]))

    def _fold_measured(self) -> None:
        """Add this interval's measured requests to the session totals."""
        for key, (measured, d_sum, d_max, _) in self._measured.items():
            total = self._endpoints.get(key)
            if total is None:
                total = self._endpoints[key] = [0, 0, 0.0, 0.0, 0, 0, None]
            total[4] += measured
            total[5] += d_sum
            if d_max is not None and (total[6] is None or d_max > total[6]):
                total[6] = d_max
        self._measured = {}

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
            log.append(humanlog.event_line(record.get("event"), record.get("detail", "")))

    def endpoint_summary(self) -> list[dict[str, Any]]:
        """Per-endpoint totals as of the last sample, sorted by average delta as the seed's summary was."""
        self._fold_measured()
        rows = []
        for (method, route), (calls, errors, dur_sum, dur_max, measured, d_sum, d_max) in self._endpoints.items():
            rows.append({
                "method": method, "route": route, "calls": calls, "errors": errors, "rss_measured": measured,
                "avg_delta_bytes": round(d_sum / measured) if measured else None, "max_delta_bytes": d_max,
                "avg_duration_s": round(dur_sum / calls, 6) if calls else None, "max_duration_s": round(dur_max, 6),
            })
        rows.sort(key=lambda r: -1e18 if r["avg_delta_bytes"] is None else r["avg_delta_bytes"], reverse=True)
        return rows
