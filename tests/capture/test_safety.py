"""Nothing the profiler does may raise into the app; its state stays bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import tracemalloc

import httpx
import pytest
from capture_files import only_session, read_jsonl
from fastapi import FastAPI

from leakyspanner import leakyspanner


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    async def ok():
        return {"ok": True}

    return app


async def _get(app, path: str = "/ok", n: int = 1) -> list[int]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return [(await client.get(path)).status_code for _ in range(n)]


def test_unwritable_log_path_disables_capture_with_one_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    app = _app()
    with caplog.at_level(logging.WARNING, logger="leakyspanner"):
        profiler = leakyspanner(app, log_path=blocker / "logs")
    assert profiler is not None and not profiler.active
    assert asyncio.run(_get(app, n=3)) == [200, 200, 200]
    warnings = [r for r in caplog.records if r.name == "leakyspanner"]
    assert len(warnings) == 1 and "capture is disabled" in warnings[0].getMessage()
    assert not tracemalloc.is_tracing()


def test_failing_memory_reader_is_counted_logged_once_and_app_keeps_serving(tmp_path, caplog):
    app = _app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic", request_rss_interval_seconds=0)

    def broken() -> int:
        raise OSError("injected")

    profiler._read_rss = broken
    with caplog.at_level(logging.WARNING, logger="leakyspanner"):
        statuses = asyncio.run(_get(app, n=5))
    profiler.stop()
    assert statuses == [200] * 5
    assert profiler.internal_errors >= 5
    logged = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
    assert len(logged) == 1 and "injected" in logged[0]
    summary = read_jsonl(profiler.jsonl_file)["summary"][0]
    assert summary["internal_errors"] >= 5


def test_failing_disk_writes_never_reach_the_app(tmp_path):
    app = _app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic", interval_seconds=0.05)

    class FullDisk:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    profiler._writer._jsonl = FullDisk()
    assert asyncio.run(_get(app, n=20)) == [200] * 20
    profiler.stop()
    assert profiler.internal_errors >= 1


def test_sampler_failure_is_contained_and_sampling_goes_on(tmp_path):
    app = _app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic", interval_seconds=0.05)
    real = profiler.reader.read_threads
    calls = {"n": 0}

    def flaky() -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected once")
        return real()

    profiler.reader.read_threads = flaky
    import time

    time.sleep(0.4)
    profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    assert len(records["sample"]) >= 3
    assert profiler.internal_errors == 1


def test_full_buffer_drops_and_counts_instead_of_blocking(tmp_path):
    app = _app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic", max_buffered_records=5,
                            interval_seconds=60, request_rss_interval_seconds=0)
    profiler._writer.ticker.stop()  # writer stops draining: the buffer fills up
    assert asyncio.run(_get(app, n=30)) == [200] * 30
    assert profiler.requests_dropped >= 25
    profiler.stop()
    summary = read_jsonl(profiler.jsonl_file)["summary"][0]
    assert summary["requests_dropped"] == profiler.requests_dropped
    assert summary["request_records"] + summary["requests_dropped"] == 30
    assert summary["requests_total"] == 30, "the counts are not in the buffer: none is lost"


def test_tracemalloc_started_by_someone_else_is_left_running(tmp_path):
    tracemalloc.start(3)
    try:
        profiler = leakyspanner(_app(), log_path=tmp_path, level="mid")
        profiler.stop()
        assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 3
    finally:
        tracemalloc.stop()


def test_tracemalloc_started_by_profiler_is_stopped_with_it(tmp_path):
    profiler = leakyspanner(_app(), log_path=tmp_path, level="deep", allocator="tracemalloc")
    assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 5
    profiler.stop()
    assert not tracemalloc.is_tracing()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_worker_starts_its_own_session(tmp_path):
    script = f"""
import asyncio, os, httpx
from fastapi import FastAPI
from leakyspanner import leakyspanner
app = FastAPI()
@app.get("/ping")
async def ping():
    return os.getpid()
leakyspanner(app, log_path={str(tmp_path)!r}, level="basic", interval_seconds=30)
async def call():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return (await c.get("/ping")).json()
pid = os.fork()
if pid == 0:
    asyncio.run(call())
    raise SystemExit(0)  # a normal worker exit: atexit writes the child's summary
os.waitpid(pid, 0)
asyncio.run(call())
print(pid)
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, timeout=60, capture_output=True, text=True)
    child = int(out.stdout.strip())
    sessions = sorted(tmp_path.glob("*.jsonl"))
    assert len(sessions) == 2
    headers = [json.loads(p.read_text().splitlines()[0]) for p in sessions]
    assert child in {h["pid"] for h in headers} and len({h["pid"] for h in headers}) == 2
    by_pid = {h["pid"]: read_jsonl(p) for h, p in zip(headers, sessions)}
    assert by_pid[child]["summary"][0]["requests_total"] == 1
    parent = next(pid for pid in by_pid if pid != child)
    assert by_pid[parent]["summary"][0]["requests_total"] == 1


def test_session_survives_torn_write_and_sigkill(tmp_path):
    script = f"""
import asyncio, os, signal, httpx
from fastapi import FastAPI
from leakyspanner import leakyspanner
app = FastAPI()
@app.get("/ping")
async def ping():
    return 1
p = leakyspanner(app, log_path={str(tmp_path)!r}, level="basic", interval_seconds=0.05)
async def call():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for _ in range(10):
            await c.get("/ping")
asyncio.run(call())
import time; time.sleep(0.5)
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", script], timeout=60)
    jsonl, log = only_session(tmp_path)
    records = read_jsonl(jsonl)  # every line complete: nothing torn by a kill between drains
    assert len(records["request"]) == 10 and "summary" not in records
