"""The writer thread's drain: order, aggregates and containment, record by record."""

from __future__ import annotations

import io
import json
import threading
from collections import deque

import pytest

from leakyspanner.capture import writer as writer_module
from leakyspanner.capture.writer import REQUEST, SAMPLE, RecordWriter
from leakyspanner.schema import REQUEST_FIELDS

KEY = ("GET", "/items/{item_id}")


def _request(t0: float, status: int = 200, rss: tuple[int, int] = (10, 10), key: tuple = KEY) -> tuple:
    """A measured request record as the middleware appends it."""
    return (REQUEST, t0, 0.25, key, status, rss[0], rss[1], None, None, 1, 1)


def _sample(seq: int, ts: float, counters: list | None = None) -> tuple:
    return (SAMPLE, {"kind": "sample", "seq": seq, "ts": ts, "rss_bytes": 100, "vms_bytes": 200,
                     "rss_delta_bytes": 0, "gc_count": [0, 0, 0]}, counters or [], True)


def _writer(buffer: deque, errors: list | None = None) -> tuple[RecordWriter, io.StringIO]:
    """A writer over ``buffer`` whose thread is already stopped: the tests drain by hand."""
    records = list(buffer)
    buffer.clear()
    jsonl = io.StringIO()
    on_error = (lambda where, exc: errors.append((where, exc))) if errors is not None else (lambda *a: None)
    w = RecordWriter(buffer, jsonl, io.StringIO(), perf_to_wall=1000.0, on_error=on_error, dropped=lambda: 0)
    w.start(1000.0)
    w.stop()
    buffer.extend(records)
    return w, jsonl


def _lines(jsonl: io.StringIO) -> list:
    return [json.loads(line) for line in jsonl.getvalue().splitlines()]


def test_requests_spanning_many_chunks_are_written_in_order_with_every_field():
    buffer: deque = deque(_request(float(i), rss=(10, 10 + i)) for i in range(200))
    w, jsonl = _writer(buffer)
    w.drain()
    lines = _lines(jsonl)
    assert len(lines) == 200 and w.requests_total == 200 and not buffer
    for i, line in enumerate(lines):
        record = dict(zip(REQUEST_FIELDS, line[1:]))
        assert record["ts"] == 1000.0 + i and (record["method"], record["route"]) == KEY
        assert record["duration_s"] == 0.25 and record["status"] == 200
        assert (record["rss_before_bytes"], record["rss_after_bytes"]) == (10, 10 + i)
        assert record["traced_before_bytes"] is None and record["inflight_end"] == 1


def test_interval_counts_are_the_difference_of_cumulative_counters_and_measured_ones_stay_per_interval():
    other = ("POST", "/upload")
    buffer: deque = deque([
        _request(1.0, rss=(10, 110)), _request(2.0, status=503, rss=(10, 20)),
        _sample(1, 1003.0, [(40, 3, 4.0, 0.5, KEY), (7, 0, 0.7, 0.2, other)]),
        _request(4.0, rss=(0, 1000)),
        _sample(2, 1007.0, [(100, 5, 9.0, 0.25, KEY), (7, 0, 0.7, 0.0, other)]),
    ])
    w, jsonl = _writer(buffer)
    w.drain()
    lines = _lines(jsonl)
    kinds = ["r" if isinstance(x, list) else x["kind"] for x in lines]
    assert kinds == ["r", "r", "sample", "endpoint_interval", "endpoint_interval", "r", "sample", "endpoint_interval"]
    first, post, second = (x for x in lines if isinstance(x, dict) and x["kind"] == "endpoint_interval")
    assert (first["calls"], first["errors"], first["duration_s_sum"], first["duration_s_max"]) == (40, 3, 4.0, 0.5)
    assert (first["rss_measured"], first["rss_delta_bytes_sum"], first["rss_delta_bytes_max"]) == (2, 110, 100)
    assert (post["route"], post["calls"], post["rss_measured"], post["rss_delta_bytes_max"]) == ("/upload", 7, 0, None)
    # the second interval: 60 more calls, POST had none and is left out
    assert (second["calls"], second["errors"], second["duration_s_sum"], second["rss_measured"]) == (60, 2, 5.0, 1)
    assert lines[2]["requests_total"] == 47 and lines[6]["requests_total"] == 107
    summary = {(e["method"], e["route"]): e for e in w.endpoint_summary()}
    assert (summary[KEY]["calls"], summary[KEY]["errors"], summary[KEY]["rss_measured"]) == (100, 5, 3)
    assert summary[KEY]["avg_delta_bytes"] == round(1110 / 3) and summary[KEY]["max_duration_s"] == 0.5
    assert summary[other]["calls"] == 7 and summary[other]["avg_delta_bytes"] is None


def test_one_malformed_request_record_is_counted_and_the_rest_are_written():
    bad = (REQUEST, 3.0, 0.5, KEY, 200, None, 10, None, None, 1, 1)  # rss_before None
    buffer: deque = deque([_request(1.0), _request(2.0), bad, _request(4.0), _request(5.0)])
    errors: list = []
    w, jsonl = _writer(buffer, errors)
    w.drain()
    assert [line[1] for line in _lines(jsonl)] == [1001.0, 1002.0, 1004.0, 1005.0]
    assert w.requests_total == 4 and len(errors) == 1 and errors[0][0] == "writer"


def test_drain_gives_the_gil_back_between_chunks(monkeypatch):
    yields = []
    monkeypatch.setattr(writer_module, "_yield", lambda: yields.append(1))
    n = writer_module._CHUNK * 5 + 1
    buffer: deque = deque(_request(float(i)) for i in range(n))
    w, jsonl = _writer(buffer)
    w.drain()
    assert len(yields) == 5 and len(_lines(jsonl)) == n


def test_records_arriving_during_a_drain_wait_for_the_next_one(monkeypatch):
    buffer: deque = deque(_request(float(i)) for i in range(writer_module._CHUNK * 2))
    monkeypatch.setattr(writer_module, "_yield", lambda: buffer.append(_request(99.0)))
    w, jsonl = _writer(buffer)
    w.drain()
    assert len(_lines(jsonl)) == writer_module._CHUNK * 2 and len(buffer) == 1
    w.drain()
    assert _lines(jsonl)[-1][1] == 1099.0 and not buffer


@pytest.mark.timeout(30)
def test_a_second_drain_waits_for_the_first_instead_of_losing_records():
    release = threading.Event()
    buffer: deque = deque(_request(float(i)) for i in range(writer_module._CHUNK * 3))
    w, jsonl = _writer(buffer)
    entered = threading.Event()
    original = w._records

    def slow_records(items, out, log):
        entered.set()
        release.wait(5)
        original(items, out, log)

    w._records = slow_records  # type: ignore[method-assign]
    first = threading.Thread(target=w.drain)
    first.start()
    entered.wait(5)
    second = threading.Thread(target=w.drain)
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert len(_lines(jsonl)) == writer_module._CHUNK * 3 and w.requests_total == writer_module._CHUNK * 3
