"""Every session ends complete and owned by one process: SIGTERM without a lifespan,
processes the app forks, fast restarts, bounded waits on snapshot children."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from unittest import mock

import httpx
import pytest
from capture_files import ping_app, read_jsonl

from leakyspanner import Profiler, leakyspanner
from leakyspanner.capture import allocations
from leakyspanner.capture import profiler as profiler_module

_app = ping_app


def test_sigterm_without_a_lifespan_still_writes_the_summary(serve, tmp_path):
    server = serve("""
        from fastapi import FastAPI
        from leakyspanner import leakyspanner
        app = FastAPI()
        leakyspanner(app, level="basic", log_path="logs", interval_seconds=0.2)

        @app.get("/ping")
        def ping():
            return {"ok": True}
        """, extra_args=("--lifespan", "off"))
    for _ in range(20):
        assert httpx.get(server.url + "/ping").status_code == 200
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=20)
    (jsonl,) = (tmp_path / "logs").glob("*.jsonl")
    records = read_jsonl(jsonl)
    assert len(records["summary"]) == 1
    assert records["summary"][0]["requests_total"] == 20


def test_a_process_the_app_forks_never_writes_into_the_parents_session(tmp_path):
    profiler = leakyspanner(_app(), level="basic", log_path=tmp_path, interval_seconds=0.1)
    assert profiler is not None
    pid = os.fork()
    if pid == 0:  # a helper the app forked, exiting as sys.exit would: atexit hooks run
        try:
            profiler_module._stop_all()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    assert len(records["summary"]) == 1


def test_stop_and_start_three_times_in_a_second_opens_three_sessions(tmp_path):
    profiler = leakyspanner(_app(), level="basic", log_path=tmp_path)
    assert profiler is not None
    files = [profiler.jsonl_file]
    for _ in range(2):
        profiler.stop()
        assert profiler.start() is True
        files.append(profiler.jsonl_file)
    profiler.stop()
    assert len(set(files)) == 3
    assert all(len(read_jsonl(f)["summary"]) == 1 for f in files)


@pytest.mark.parametrize(("name", "value"), [("interval_seconds", float("inf")), ("interval_seconds", 1e10),
                                             ("leak_threshold_mb", float("inf")), ("leak_threshold_mb", float("nan"))])
def test_infinite_or_huge_settings_fail_at_attach(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        leakyspanner(_app(), log_path=tmp_path, **{name: value})


def test_a_snapshot_child_is_killed_when_the_wait_is_interrupted():
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child that never answers
        os.close(read_fd)
        time.sleep(60)
        os._exit(0)
    os.close(write_fd)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            allocations._read_child(read_fd, pid, 30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped


def test_a_mock_of_json_dumps_never_sees_the_profilers_own_writes(tmp_path):
    app = _app()
    spy = mock.Mock(side_effect=json.dumps)
    with mock.patch("json.dumps", spy):
        profiler = leakyspanner(app, level="basic", log_path=tmp_path, interval_seconds=0.05)
        assert profiler is not None

        async def drive() -> None:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                for _ in range(5):
                    assert (await client.get("/ping")).status_code == 200

        asyncio.run(drive())
        time.sleep(0.2)
        profiler.stop()
    assert spy.call_count == 0
    assert read_jsonl(profiler.jsonl_file)["summary"]


def test_stop_returns_within_seconds_even_with_the_sampler_busy(tmp_path):
    profiler = Profiler(_app(), level="basic", log_path=tmp_path, interval_seconds=0.05)
    assert profiler.start()
    sampler = profiler._sampler
    assert sampler is not None
    real_tick = sampler.tick

    def slow_tick() -> None:
        time.sleep(5)
        real_tick()

    sampler.tick = slow_tick  # type: ignore[method-assign]
    time.sleep(0.2)  # the thread is now inside a slow tick
    sampler.tick = real_tick  # type: ignore[method-assign]
    started = time.monotonic()
    profiler.stop()
    assert time.monotonic() - started < 4
    assert sys.getrefcount(profiler) > 0
