"""The engine side of the pytest plugin: sizes, the check's refusals, lifespan, the tracemalloc fallback."""

from __future__ import annotations

import asyncio
import tracemalloc
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI, Request, Response

from leakyspanner.capture import heap
from leakyspanner.leakcheck import LeakCheckError, LeakFound, leak_check, parse_size

KEPT: list[bytes] = []
lifespan_calls: list[str] = []


@asynccontextmanager
async def lifespan(app):
    lifespan_calls.append("startup")
    yield {"greeting": "hello"}
    lifespan_calls.append("shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/hello")
async def hello(request: Request):
    return {"greeting": request.state.greeting}


@app.get("/unavailable")
async def unavailable():
    return Response("down", status_code=503)


@app.get("/broken")
async def broken():
    return 1 / 0


@app.post("/keep")
async def keep():
    KEPT.append(bytes(10_000))
    return {}


@pytest.mark.parametrize(("text", "expected"), [
    ("512", 512), (512, 512), ("512 B", 512), ("1 KB", 1024), ("1KB", 1024), ("1kb", 1024),
    ("1 KiB", 1024), ("1KiB", 1024), ("2.5 MB", 2_621_440), ("1 MiB", 1 << 20), (" 3 GiB ", 3 << 30), (0, 0),
])
def test_sizes_parse_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "1 KBB", "-1", "", "1 K B", None, True, -5, float("inf"), [1]])
def test_bad_sizes_fail_naming_the_accepted_forms(bad):
    with pytest.raises(ValueError, match=r'max_retained_per_call must be .*"1 KB", "1KB" or "1 KiB" '
                                         r'\(each 1024 bytes\).*got'):
        parse_size(bad)


def test_bad_options_fail_at_construction_naming_valid_values():
    with pytest.raises(ValueError, match="times must be an integer >= 1, got 0"):
        leak_check(app, times=0)
    with pytest.raises(ValueError, match="allocator must be one of 'auto', 'sampler', 'tracemalloc'"):
        leak_check(app, allocator="valgrind")
    with pytest.raises(ValueError, match="unknown leak check option"):
        leak_check(app, time=3)


def test_lifespan_runs_around_the_calls_and_its_state_reaches_requests():
    lifespan_calls.clear()
    report = leak_check(app, times=20, warmup=5).call("GET", "/hello")
    assert lifespan_calls == ["startup", "shutdown"]
    assert report.calls == 20 and not report.leaking
    if heap.AVAILABLE:
        assert not heap.running(), "the engine stops with the check"


def test_an_endpoint_that_errors_stops_the_check_with_its_status_or_its_exception():
    with pytest.raises(LeakCheckError, match=r"GET /unavailable answered 503 on call 1: 'down'"):
        leak_check(app, times=10).call("GET", "/unavailable")
    with pytest.raises(ZeroDivisionError):
        leak_check(app, times=10).call("GET", "/broken")


def test_call_inside_a_running_loop_points_to_acall():
    async def inside() -> None:
        with pytest.raises(LeakCheckError, match=r"await leak_check\(app\).acall"):
            leak_check(app, times=5).call("GET", "/hello")
        with pytest.raises(LeakFound, match=r"POST /keep \(keep at .*test_leakcheck.py:\d+\) retains"):
            await leak_check(app, times=60, warmup=5).acall("POST", "/keep")

    asyncio.run(inside())


def test_tracemalloc_fallback_finds_the_leak_and_its_line_and_stops_tracing():
    assert not tracemalloc.is_tracing()
    with pytest.raises(LeakFound) as failure:
        leak_check(app, times=60, warmup=5, allocator="tracemalloc").call("POST", "/keep")
    report = failure.value.report
    assert report.engine == "tracemalloc" and report.per_call_bytes > 9_000
    assert any(line.file.endswith("test_leakcheck.py") for line in report.lines), report.describe()
    assert not tracemalloc.is_tracing()
