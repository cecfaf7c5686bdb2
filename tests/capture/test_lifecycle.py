"""Sessions over an app's life: app factories sharing one engine, restarts, a deleted log
directory, the process baseline of growth alerts, trio."""

from __future__ import annotations

import gc
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest
from capture_files import read_jsonl
from fastapi import FastAPI

from leakyspanner import leakyspanner
from leakyspanner.capture import profiler as profiler_module

MB = 1024 * 1024


def _app(name: str = "ping") -> FastAPI:
    app = FastAPI()

    @app.get(f"/{name}")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


def _ours() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("leakyspanner-")]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _poll(condition: Callable[[], object], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


async def _requests(app: FastAPI, path: str, times: int) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for _ in range(times):
            assert (await client.get(path)).status_code == 200


def _get(app: FastAPI, path: str, times: int) -> None:
    anyio.run(_requests, app, path, times)


async def _served(app: FastAPI, during: Callable[[], Awaitable[None]]) -> None:
    """Startup, ``during()``, shutdown: the lifespan a server (or a TestClient) runs."""
    started, done = anyio.Event(), anyio.Event()
    sent_startup = False

    async def receive() -> dict[str, str]:
        nonlocal sent_startup
        if not sent_startup:
            sent_startup = True
            return {"type": "lifespan.startup"}
        await done.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: dict[str, str]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        await started.wait()
        await during()
        done.set()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_fifty_app_factories_share_one_sampler_one_writer_and_one_pair_of_files(tmp_path):
    fds_before = _open_fds()
    apps, profilers = [], []
    for i in range(50):
        app = _app(f"route{i % 5}")
        profiler = leakyspanner(app, level="basic", log_path=tmp_path, interval_seconds=0.1)
        assert profiler is not None
        apps.append(app)
        profilers.append(profiler)
    try:
        assert sorted(_ours()) == ["leakyspanner-sampler", "leakyspanner-writer"]
        assert _open_fds() - fds_before <= 4  # .jsonl, .log, the statm descriptor (+1 spare)
        assert len(list(tmp_path.glob("*.jsonl"))) == 1
        assert profilers[-1].stats()["apps"] == 50
        _get(apps[0], "/route0", 3)
        _get(apps[7], "/route2", 4)
        assert profilers[0].stats().requests_total == 7  # the session's count, every app's requests
    finally:
        for profiler in profilers:
            profiler.stop()
    records = read_jsonl(profilers[0].jsonl_file)
    (summary,) = records["summary"]
    assert summary["requests_total"] == 7
    assert {(e["route"], e["calls"]) for e in summary["endpoints"]} == {("/route0", 3), ("/route2", 4)}


def test_apps_that_are_dropped_without_shutdown_leave_the_session_to_end(tmp_path):
    first = leakyspanner(_app(), level="basic", log_path=tmp_path)
    assert first is not None
    for _ in range(5):  # a test suite's apps that are never shut down, then garbage
        assert leakyspanner(_app(), level="basic", log_path=tmp_path) is not None
    gc.collect()
    assert first.stats().apps == 1
    first.stop()  # the only app left: the session ends here
    assert not _ours()
    assert len(read_jsonl(first.jsonl_file)["summary"]) == 1


def test_different_settings_get_their_own_session(tmp_path):
    a = leakyspanner(_app(), level="basic", log_path=tmp_path / "a")
    b = leakyspanner(_app(), level="basic", log_path=tmp_path / "b")
    assert a is not None and b is not None
    try:
        assert a.jsonl_file != b.jsonl_file and a.stats().apps == b.stats().apps == 1
    finally:
        a.stop()
        b.stop()


def test_growth_alert_measures_from_the_process_baseline_not_each_sessions_start(tmp_path, monkeypatch):
    monkeypatch.setattr(profiler_module._ProcessBaseline, "pid", -1)  # as in a fresh process
    monkeypatch.setattr(profiler_module._ProcessBaseline, "rss_bytes", 0)  # both restored after the test
    first = leakyspanner(_app(), level="basic", log_path=tmp_path / "a", leak_threshold_mb=1000)
    assert first is not None
    ballast = b"x" * (40 * MB)  # grows RSS before the second app attaches
    second = leakyspanner(_app(), level="basic", log_path=tmp_path / "b", leak_threshold_mb=20,
                          interval_seconds=0.05)
    assert second is not None
    try:
        _poll(lambda: any(r[0] == 2 and r[1].get("kind") == "alert" for r in list(second._buffer))
              or "alert" in read_jsonl(second.jsonl_file), "the second session's growth alert")
    finally:
        second.stop()
        first.stop()
    del ballast
    (alert,) = read_jsonl(second.jsonl_file)["alert"]
    assert alert["baseline_rss_bytes"] == first.baseline_rss_bytes < second.baseline_rss_bytes


def test_a_deleted_log_directory_is_recreated_and_the_session_says_so(tmp_path):
    logs = tmp_path / "logs"
    app = _app()
    profiler = leakyspanner(app, level="basic", log_path=logs, interval_seconds=0.05)
    assert profiler is not None
    try:
        _get(app, "/ping", 2)
        shutil.rmtree(logs)
        _poll(lambda: logs.is_dir() and list(logs.glob("*.jsonl")), "a new session file")
        _get(app, "/ping", 3)
    finally:
        profiler.stop()
    (jsonl,) = logs.glob("*.jsonl")
    records = read_jsonl(jsonl)
    assert records["header"][0]["session_id"] == jsonl.stem
    (event,) = [e for e in records["event"] if e["event"] == "log_files_recreated"]
    assert "deleted" in event["detail"]
    assert records["summary"][0]["requests_total"] == 5  # counts carry over: nothing lost after it
    (log,) = logs.glob("*.log")
    assert "log_files_recreated" in log.read_text()


def test_an_app_served_again_after_its_shutdown_is_captured_again(tmp_path):
    app = _app()
    profiler = leakyspanner(app, level="basic", log_path=tmp_path)
    assert profiler is not None
    anyio.run(_served, app, lambda: _requests(app, "/ping", 1))  # a first `with TestClient(app)`
    assert not profiler.active
    first = profiler.jsonl_file

    async def twice() -> None:
        assert profiler.active
        await _requests(app, "/ping", 2)

    anyio.run(_served, app, twice)  # and a second one
    assert not profiler.active
    assert profiler.jsonl_file != first
    assert read_jsonl(first)["summary"][0]["requests_total"] == 1
    assert read_jsonl(profiler.jsonl_file)["summary"][0]["requests_total"] == 2


def test_requests_are_counted_under_the_trio_backend(tmp_path):
    pytest.importorskip("trio")
    app = _app()
    profiler = leakyspanner(app, level="basic", log_path=tmp_path, request_rss_interval_seconds=0)
    assert profiler is not None

    async def drive() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            for _ in range(5):
                assert (await client.get("/ping")).status_code == 200

    try:
        anyio.run(drive, backend="trio")
        stats = profiler.stats()
        assert stats.requests_total == 5 and stats.internal_errors == 0
    finally:
        profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    assert records["summary"][0]["requests_total"] == 5 and len(records["request"]) == 5
    assert not records.get("event") or not [e for e in records["event"] if e["event"] == "internal_error"]


def test_stop_of_one_app_keeps_the_session_for_the_others(tmp_path):
    a_app, b_app = _app("a"), _app("b")
    a = leakyspanner(a_app, level="basic", log_path=tmp_path)
    b = leakyspanner(b_app, level="basic", log_path=tmp_path)
    assert a is not None and b is not None
    a.stop()
    assert not a.active and b.active and sorted(_ours()) == ["leakyspanner-sampler", "leakyspanner-writer"]
    _get(b_app, "/b", 2)
    b.stop()
    assert not _ours()
    assert read_jsonl(Path(b.jsonl_file))["summary"][0]["requests_total"] == 2


def test_the_first_app_rejoins_the_session_it_still_hosts(tmp_path):
    a_app, b_app = _app("a"), _app("b")
    a = leakyspanner(a_app, level="basic", log_path=tmp_path)
    b = leakyspanner(b_app, level="basic", log_path=tmp_path)
    assert a is not None and b is not None
    session = a.jsonl_file
    a.stop()  # b keeps the session going
    anyio.run(_served, a_app, lambda: _requests(a_app, "/a", 2))  # a served again, then shut down
    assert a.jsonl_file == session and b.active
    b.stop()
    assert not _ours() and len(list(tmp_path.glob("*.jsonl"))) == 1
    (summary,) = read_jsonl(session)["summary"]
    assert summary["requests_total"] == 2
