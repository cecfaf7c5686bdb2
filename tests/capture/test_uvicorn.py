"""End to end: a real uvicorn on 127.0.0.1, real HTTP, SIGINT, then the files."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from capture_files import only_session, read_jsonl

from leakyspanner import schema
from leakyspanner.capture import heap

APP = """
import asyncio
from contextlib import asynccontextmanager
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse
from leakyspanner import leakyspanner

@asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello from lifespan"}

app = FastAPI(lifespan=lifespan)
KEPT = []

@app.get("/items/{item_id}")
async def item(item_id: int, request: Request):
    return {"id": item_id, "state": request.state.greeting}

@app.post("/keep")
async def keep():
    KEPT.append(b"k" * 3_000_000)
    return {"kept": len(KEPT)}

@app.get("/stream")
async def stream():
    async def chunks():
        for i in range(3):
            yield f"chunk {i}\\n".encode()
            await asyncio.sleep(0.3)
    return StreamingResponse(chunks(), media_type="text/plain")

@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(text.upper())
    await websocket.close()

profiler = leakyspanner(app, log_path="logs", level="{level}", interval_seconds={interval},
                        leak_threshold_mb=5, allocator="{allocator}")
"""


def _app(level: str = "mid", interval: float = 0.25, allocator: str = "auto") -> str:
    return APP.replace("{level}", level).replace("{interval}", str(interval)).replace("{allocator}", allocator)


@pytest.mark.parametrize("allocator", ["tracemalloc", "sampler"])
def test_real_server_session_has_header_samples_requests_intervals_and_summary(serve, tmp_path, allocator):
    if allocator == "sampler" and not heap.AVAILABLE:
        pytest.skip(str(heap.UNAVAILABLE_REASON))
    server = serve(_app(allocator=allocator))
    with httpx.Client(base_url=server.url) as client:
        for i in range(20):
            assert client.get(f"/items/{i}").json() == {"id": i, "state": "hello from lifespan"}
        time.sleep(0.3)  # a pause, then requests slower than the sampling target: each is measured
        for _ in range(4):
            time.sleep(0.01)
            client.post("/keep")
        time.sleep(0.8)
        assert client.get("/items/99").status_code == 200, "still serving after forked snapshots"
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    output = server.stop()
    assert "Application shutdown complete" in output
    jsonl, log = only_session(tmp_path / "logs")
    records = read_jsonl(jsonl)
    header = records["header"][0]
    assert header["schema_version"] == schema.SCHEMA_VERSION and header["level"] == "mid"
    assert len(records["sample"]) >= 2
    assert {r["route"] for r in records["request"]} == {"/items/{item_id}", "/keep"}
    kept = [r for r in records["request"] if r["route"] == "/keep"]
    assert len(kept) == 4 and all(r["rss_after_bytes"] is not None for r in kept)
    intervals = records["endpoint_interval"]
    assert sum(i["calls"] for i in intervals) == 25
    if allocator == "tracemalloc":
        assert records["snapshot"], "mid level takes allocation snapshots"
        # auto picks fork or inline from measured costs (timing-dependent: either is right here)
        assert {s["mode"] for s in records["snapshot"]} <= {"fork", "inline"}
        assert children == [], "every snapshot child was reaped"
        sites = json.dumps(records["snapshot"])
    else:
        assert "snapshot" not in records and records["heap"], "mid takes heap records from the sampler"
        kept_bytes = {(row[0], row[1]): row[2] for row in records["heap"][-1]["endpoints"]}[("POST", "/keep")]
        assert 0.75 * 4 * 3_000_000 <= kept_bytes <= 1.25 * 4 * 3_000_000
        sites = json.dumps(records["heap"][-1]["sites"])
    summary = records["summary"][0]
    assert summary["requests_total"] == 25 and summary["net_growth_bytes"] > 8_000_000
    assert summary["endpoints"][0]["route"] == "/keep"
    text = log.read_text()
    assert "ENDPOINT POST /keep  mem_delta=+" in text
    assert "MEMORY GROWTH ALERT" in text
    assert "LEAKYSPANNER SESSION SUMMARY" in text
    assert "appmod.py" in sites, "the leaking line is among the sites"


def test_shutdown_does_not_wait_for_the_sampling_interval(serve, tmp_path):
    server = serve(_app(level="basic", interval=60))
    httpx.get(server.url + "/items/1")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    records = read_jsonl(only_session(tmp_path / "logs")[0])
    assert records["summary"][0]["requests_total"] == 1
    assert records["sample"], "a final sample is taken at stop"


def test_streaming_is_not_buffered_and_measured_to_the_last_chunk(serve, tmp_path):
    server = serve(_app(level="basic"))
    arrivals = []
    started = time.monotonic()
    with httpx.stream("GET", server.url + "/stream") as response:
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    server.stop()
    assert b"".join(c for _, c in arrivals) == b"chunk 0\nchunk 1\nchunk 2\n"
    assert arrivals[0][0] < 0.5, "first chunk arrived before the generator finished"
    [record] = read_jsonl(only_session(tmp_path / "logs")[0])["request"]
    assert record["route"] == "/stream" and record["duration_s"] >= 0.85


def test_websocket_session_is_recorded_and_unchanged(serve, tmp_path):
    websockets = pytest.importorskip("websockets")
    server = serve(_app(level="basic"))

    async def talk() -> str:
        async with websockets.connect(server.url.replace("http", "ws") + "/ws") as ws:
            await ws.send("ping")
            return await ws.recv()

    assert asyncio.run(talk()) == "PING"
    server.stop()
    [record] = read_jsonl(only_session(tmp_path / "logs")[0])["request"]
    assert (record["method"], record["route"]) == ("WS", "/ws")


def test_hostile_paths_and_headers_cannot_forge_log_lines(serve, tmp_path):
    server = serve(_app(level="basic"))
    forged = "/items/1%0A%5B12:00:00%5D%20ENDPOINT%20GET%20/forged%20mem_delta=+99.00MB%20status=200"
    with httpx.Client(base_url=server.url) as client:
        client.get(forged)
        client.get("/items/2", headers={"x-big": "A" * 60_000, "x-nl": "a\tb"})
        client.request("GET", "/no%0d%0aSUMMARY/where")
        client.post("/keep")
    server.stop()
    jsonl, log = only_session(tmp_path / "logs")
    assert "forged" not in log.read_text() and "forged" not in jsonl.read_text()
    for line in jsonl.read_text().splitlines():
        json.loads(line)


def test_atexit_writes_summary_when_no_lifespan_runs(tmp_path):
    import subprocess
    import sys

    script = f"""
import asyncio, httpx
from fastapi import FastAPI
from leakyspanner import leakyspanner
app = FastAPI()
@app.get("/ping")
async def ping():
    return "pong"
leakyspanner(app, log_path={str(tmp_path)!r}, level="basic", interval_seconds=30)
async def main():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await c.get("/ping")
asyncio.run(main())
"""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert time.monotonic() - started < 20
    records = read_jsonl(only_session(tmp_path)[0])
    assert records["summary"][0]["requests_total"] == 1
