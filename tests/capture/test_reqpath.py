"""The request path's bookkeeping, on both implementations: exact, leak-free, never in the app's way.

A plain ASGI app driven by hand, so every object the middleware touches (scope,
messages, send, the exception) is the test's own and can be checked by identity
and reference count. Runs once with the C extension and once in pure Python
(tests/capture/conftest.py).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from capture_files import read_jsonl

from leakyspanner import LeakyspannerMiddleware, Profiler
from leakyspanner.capture.middleware import REQUEST_PATH_C_REASON

ROOT = Path(__file__).resolve().parents[2]


class _Route:
    """Stands in for a router's route object: the middleware keys counters by its identity."""

    path = "/thing"


_ROUTE = _Route()


def _scope(method: str = "GET", kind: str = "http") -> dict[str, object]:
    return {"type": kind, "method": method, "path": "/thing", "root_path": "", "route": _ROUTE}


def _profiler(tmp_path: Path, app: object, **kw: object) -> tuple[Profiler, LeakyspannerMiddleware]:
    profiler = Profiler(app, log_path=tmp_path, level="basic", interval_seconds=3600, **kw)
    middleware = LeakyspannerMiddleware(app, profiler)
    assert profiler.start()
    return profiler, middleware


async def _nothing() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _calls(profiler: Profiler) -> int:
    return sum(c[0] for c in list(profiler._counters.values()))


def test_counts_are_exact_with_event_loops_in_several_threads(tmp_path, request_path):
    if request_path == "python":
        pytest.skip("the Python path's counter updates are not atomic across threads; it runs on one loop")

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)  # other requests of this loop interleave here
        await send({"type": "http.response.body", "body": b"ok"})

    profiler, middleware = _profiler(tmp_path, app, request_rss_interval_seconds=0.001)

    async def sink(message):
        pass

    async def serve(n: int) -> None:
        await asyncio.gather(*(middleware(_scope(), _nothing, sink) for _ in range(n)))

    threads = [threading.Thread(target=asyncio.run, args=(serve(400),)) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert _calls(profiler) == 1600
        assert profiler._inflight == 0
    finally:
        profiler.stop()
    summary = read_jsonl(profiler.jsonl_file)["summary"][0]
    assert summary["requests_total"] == 1600 and summary["internal_errors"] == 0


def test_no_reference_is_kept_or_lost_per_request(tmp_path, request_path):
    body = {"type": "http.response.body", "body": b"ok"}
    start = {"type": "http.response.start", "status": 200, "headers": []}

    async def app(scope, receive, send):
        await send(start)
        await send(body)

    profiler, middleware = _profiler(tmp_path, app, request_rss_interval_seconds=0)  # every request measured

    async def sink(message):
        pass

    scope = _scope()

    async def run(n: int) -> None:
        for _ in range(n):
            await middleware(scope, _nothing, sink)
            profiler._writer.drain()

    try:
        asyncio.run(run(50))  # caches, counters and interned strings made once
        gc.collect()
        watched = [scope, start, body, sink, _ROUTE, scope["method"], middleware]
        counts = [sys.getrefcount(o) for o in watched]
        blocks = sys.getallocatedblocks()
        asyncio.run(run(2000))
        gc.collect()
        grown = sys.getallocatedblocks() - blocks
        assert [sys.getrefcount(o) for o in watched] == counts
        assert grown < 500, f"{grown} memory blocks more after 2000 requests"
        assert _calls(profiler) == 2050
    finally:
        profiler.stop()


def test_the_apps_exception_passes_untouched_and_counts_as_500(tmp_path, request_path):
    error = KeyError("the app's own")

    async def app(scope, receive, send):
        raise error

    profiler, middleware = _profiler(tmp_path, app)

    async def sink(message):
        raise AssertionError("nothing was sent")

    try:
        with pytest.raises(KeyError) as caught:
            asyncio.run(middleware(_scope(), _nothing, sink))
        assert caught.value is error
        assert profiler._inflight == 0
        [counter] = profiler._counters.values()
        assert counter[:2] == [1, 1]
    finally:
        profiler.stop()


def test_a_cancelled_request_is_counted_once_and_the_cancellation_passes(tmp_path, request_path):
    started = asyncio.Event

    async def scenario(middleware) -> None:
        gate = started()

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 201, "headers": []})
            gate.set()
            await asyncio.sleep(3600)

        middleware.app = app

        async def sink(message):
            pass

        task = asyncio.ensure_future(middleware(_scope(), _nothing, sink))
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    profiler, middleware = _profiler(tmp_path, None)
    try:
        asyncio.run(scenario(middleware))
        [counter] = profiler._counters.values()
        assert counter[:2] == [1, 0], "the status sent before the cancellation stands"
        assert profiler._inflight == 0
    finally:
        profiler.stop()


def test_our_failures_are_counted_and_the_request_goes_on(tmp_path, request_path):
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"no type": True})  # malformed: reaches the server untouched
        await send({"type": "http.response.body", "body": b"ok"})

    profiler, middleware = _profiler(tmp_path, app, request_rss_interval_seconds=0)
    real_reader = profiler._read_rss

    def broken_reader() -> int:
        raise OSError("statm is gone")

    async def sink(message):
        sent.append(message)

    try:
        asyncio.run(middleware(_scope(), _nothing, sink))  # a malformed message: noted, the request counted
        assert [m.get("type") for m in sent] == ["http.response.start", None, "http.response.body"]
        assert profiler.internal_errors == 1 and _calls(profiler) == 1
        profiler._read_rss = broken_reader  # the request cannot start being watched: it passes unwatched
        asyncio.run(middleware(_scope(), _nothing, sink))
        assert len(sent) == 6 and profiler.internal_errors == 2 and _calls(profiler) == 1
        profiler._read_rss = real_reader
        asyncio.run(middleware(_scope(), _nothing, sink))
        assert _calls(profiler) == 2 and profiler._inflight == 0
    finally:
        profiler.stop()


def test_websocket_sessions_count_with_their_close_code(tmp_path, request_path):
    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001})

    async def quiet(scope, receive, send):
        await send({"type": "websocket.accept"})

    profiler, middleware = _profiler(tmp_path, app)

    async def sink(message):
        pass

    try:
        asyncio.run(middleware(_scope(kind="websocket"), _nothing, sink))
        middleware.app = quiet
        asyncio.run(middleware(_scope(kind="websocket"), _nothing, sink))
        [counter] = profiler._counters.values()
        assert counter[4][0] == "WS" and counter[0] == 2
    finally:
        profiler.stop()
    intervals = read_jsonl(profiler.jsonl_file)["endpoint_interval"]
    assert sum(i["calls"] for i in intervals) == 2


@pytest.mark.skipif(REQUEST_PATH_C_REASON is not None, reason="the C request path is not built")
def test_c_path_under_python_dev_mode_and_debug_allocators(tmp_path, request_path):
    if request_path == "python":
        pytest.skip("checks the C extension")
    script = textwrap.dedent("""
        import asyncio, sys
        from leakyspanner import LeakyspannerMiddleware, Profiler

        async def app(scope, receive, send):
            if scope["path"] == "/boom":
                raise ValueError("boom")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
            await send({"type": "http.response.body", "body": b"b"})

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        profiler = Profiler(app, log_path=sys.argv[1], level="basic", request_rss_interval_seconds=0.0005)
        middleware = LeakyspannerMiddleware(app, profiler)
        assert profiler.start() and profiler.request_path == "c"

        async def main():
            for i in range(3000):
                path = "/boom" if i % 7 == 0 else "/ok"
                scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "endpoint": path}
                try:
                    await middleware(scope, receive, send)
                except ValueError:
                    pass

        asyncio.run(main())
        profiler.stop()
        assert profiler.internal_errors == 0
        print("ok", sum(c[0] for c in profiler._counters.values()))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEAKYSPANNER_REQUEST_PATH": "c"}
    proc = subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", "3000"], proc.stdout + proc.stderr


def test_a_burst_after_an_idle_gap_measures_at_most_one_window_of_64(tmp_path, request_path):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    # a target of one measured request a day: after the first window, practically none
    profiler, middleware = _profiler(tmp_path, app, request_rss_interval_seconds=86_400)
    reads = []
    real_reader = profiler._read_rss
    profiler._read_rss = lambda: reads.append(1) or real_reader()

    async def sink(message):
        pass

    async def burst() -> None:
        for _ in range(500):  # well inside the 0.1 s the first window would otherwise last
            await middleware(_scope(), _nothing, sink)

    try:
        asyncio.run(burst())
        assert _calls(profiler) == 500
        assert 2 <= len(reads) <= 2 * 64, f"{len(reads) // 2} of 500 requests measured"
    finally:
        profiler.stop()
