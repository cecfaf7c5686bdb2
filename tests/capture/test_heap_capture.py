"""The sampled heap engine inside a session: tagged heap records, and the fallback that says so."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from capture_files import read_jsonl
from fastapi import FastAPI

from leakyspanner import Profiler, leakyspanner, schema
from leakyspanner.capture import heap

needs_engine = pytest.mark.skipif(not heap.AVAILABLE, reason=str(heap.UNAVAILABLE_REASON))

KEPT: list[bytes] = []


def _leaky_app() -> FastAPI:
    app = FastAPI()

    @app.post("/orders")
    async def create_order() -> dict[str, int]:
        KEPT.append(bytes(200_000))  # the leaking line
        return {"n": len(KEPT)}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        scratch = [bytes(50_000) for _ in range(4)]  # transient
        return {"ok": bool(scratch)}

    return app


async def _drive(app: FastAPI, orders: int, health: int) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for i in range(max(orders, health)):
            if i < orders:
                assert (await client.post("/orders")).status_code == 200
            if i < health:
                assert (await client.get("/health")).status_code == 200


@needs_engine
def test_mid_writes_heap_records_that_tie_live_bytes_to_the_endpoint_and_line(tmp_path):
    KEPT.clear()
    app = _leaky_app()
    profiler = leakyspanner(app, level="mid", log_path=tmp_path, interval_seconds=0.1, sample_bytes=64 * 1024)
    assert profiler is not None and profiler.heap_engine == "sampler"
    asyncio.run(_drive(app, orders=100, health=100))
    time.sleep(0.3)
    profiler.stop()
    KEPT.clear()
    records = read_jsonl(profiler.jsonl_file)
    header = records["header"][0]
    assert header["heap_engine"] == "sampler" and header["sample_bytes"] == 64 * 1024
    assert "snapshot" not in records  # no tracemalloc
    last = records["heap"][-1]
    endpoints = {(row[0], row[1]): row[2] for row in last["endpoints"]}
    kept = endpoints[("POST", "/orders")]
    assert 0.75 * 100 * 200_000 <= kept <= 1.25 * 100 * 200_000
    assert endpoints.get(("GET", "/health"), 0) < 0.1 * kept
    fields = last["site_fields"]
    rows = [dict(zip(fields, row)) for row in last["sites"]]
    top = max(rows, key=lambda r: r["size_bytes"])
    assert top["file"] == __file__ and top["route"] == "/orders"
    assert top["app_file"] == __file__ and top["app_line"] == top["line"]
    assert records["routes"][0]["routes"]
    assert all(sample["heap_live_bytes"] is not None for sample in records["sample"][1:])


@needs_engine
def test_allocations_outside_requests_count_as_background(tmp_path):
    app = _leaky_app()
    profiler = Profiler(app, level="mid", log_path=tmp_path, interval_seconds=0.1, sample_bytes=16 * 1024)
    assert profiler.start()
    held = [bytes(100_000) for _ in range(20)]
    time.sleep(0.3)
    profiler.stop()
    last = read_jsonl(profiler.jsonl_file)["heap"][-1]
    background = {row[1]: row[2] for row in last["endpoints"]}.get(schema.BACKGROUND_ROUTE, 0)
    assert background >= 0.5 * sum(len(h) for h in held)


def test_without_the_engine_mid_falls_back_to_tracemalloc_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(heap, "AVAILABLE", False)
    monkeypatch.setattr(heap, "UNAVAILABLE_REASON", "the C extension is not built (test)")
    profiler = leakyspanner(_leaky_app(), level="mid", log_path=tmp_path, interval_seconds=0.1)
    assert profiler is not None and profiler.heap_engine == "tracemalloc"
    time.sleep(0.2)
    profiler.stop()
    header = read_jsonl(profiler.jsonl_file)["header"][0]
    assert header["heap_engine"] == "tracemalloc"
    assert header["heap_engine_note"] == "the C extension is not built (test)"


def test_asking_for_the_sampler_where_it_is_missing_fails_at_attach(tmp_path, monkeypatch):
    monkeypatch.setattr(heap, "AVAILABLE", False)
    monkeypatch.setattr(heap, "UNAVAILABLE_REASON", "the C extension is not built (test)")
    with pytest.raises(ValueError, match="allocator='sampler' is not available here: the C extension"):
        leakyspanner(_leaky_app(), level="mid", log_path=tmp_path, allocator="sampler")


@needs_engine
def test_two_profilers_share_one_engine_that_stops_with_the_last(tmp_path):
    first = Profiler(_leaky_app(), level="mid", log_path=tmp_path / "a")
    second = Profiler(_leaky_app(), level="mid", log_path=tmp_path / "b")
    assert first.start() and second.start()
    assert heap.running()
    first.stop()
    assert heap.running()
    second.stop()
    assert not heap.running()


def test_basic_writes_no_heap_records(tmp_path):
    app = _leaky_app()
    profiler = leakyspanner(app, level="basic", log_path=tmp_path, interval_seconds=0.1)
    assert profiler is not None and profiler.heap_engine == "none"
    asyncio.run(_drive(app, orders=3, health=3))
    time.sleep(0.2)
    profiler.stop()
    KEPT.clear()
    records = read_jsonl(profiler.jsonl_file)
    assert "heap" not in records and "snapshot" not in records
