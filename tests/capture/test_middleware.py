"""The middleware is a pure spectator: same bytes, same errors, one record per request."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import mmap
import time

import httpx
import pytest
from capture_files import only_session, read_jsonl
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from leakyspanner import LeakyspannerMiddleware, Profiler, leakyspanner
from leakyspanner.capture import profiler as profiler_module
from leakyspanner.schema import UNMATCHED_ROUTE


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"id": item_id}

    @app.post("/echo")
    async def echo(request: Request):
        body = await request.body()
        return Response(body, status_code=201, headers={"x-custom": "kept", "set-cookie": "a=1"},
                        media_type="application/octet-stream")

    @app.get("/boom")
    async def boom():
        raise KeyError("the original")

    return app


async def _exchange(app, calls):
    async with _client(app) as client:
        return [await client.request(*call[:2], **(call[2] if len(call) > 2 else {})) for call in calls]


def test_responses_are_byte_for_byte_identical_with_and_without_profiler(tmp_path):
    calls = [("GET", "/items/7"), ("POST", "/echo", {"content": bytes(range(256)) * 40}),
             ("GET", "/missing/path")]
    bare = asyncio.run(_exchange(_make_app(), calls))
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    try:
        watched = asyncio.run(_exchange(app, calls))
    finally:
        profiler.stop()
    for a, b in zip(bare, watched):
        assert (a.status_code, a.content, a.headers.multi_items()) == (b.status_code, b.content, b.headers.multi_items())


def test_one_record_per_request_with_route_template_status_and_rss(tmp_path):
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="mid", allocator="tracemalloc",
                            request_rss_interval_seconds=0)
    try:
        asyncio.run(_exchange(app, [("GET", f"/items/{i}") for i in range(5)] + [("POST", "/echo", {"content": b"x"})]))
    finally:
        profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    requests = records["request"]
    assert [(r["method"], r["route"], r["status"]) for r in requests] == (
        [("GET", "/items/{item_id}", 200)] * 5 + [("POST", "/echo", 201)])
    for r in requests:
        assert r["rss_before_bytes"] > 1_000_000 and r["rss_after_bytes"] > 1_000_000
        assert r["traced_before_bytes"] is not None and r["traced_after_bytes"] is not None
        assert 0 <= r["duration_s"] < 5
        assert r["inflight_start"] == 1 and r["inflight_end"] == 1
    summary = records["summary"][0]
    assert {(e["method"], e["route"], e["calls"]) for e in summary["endpoints"]} == {
        ("GET", "/items/{item_id}", 5), ("POST", "/echo", 1)}


def test_under_load_rss_is_read_for_a_sample_while_counts_stay_exact(tmp_path):
    app = _make_app()
    # a target of one measured request per day: after the first 0.1 s window, none
    profiler = leakyspanner(app, log_path=tmp_path, level="basic", request_rss_interval_seconds=86_400)
    reads = []
    real_read = profiler._read_rss
    profiler._read_rss = lambda: reads.append(1) or real_read()

    async def burst_pause_burst() -> None:
        async with _client(app) as client:
            for i in range(3):
                await client.get(f"/items/{i}")
            await asyncio.sleep(0.15)
            for i in range(30):
                await client.get(f"/items/{i}")

    try:
        asyncio.run(burst_pause_burst())
    finally:
        profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    requests = records["request"]
    assert len(requests) == 3, "a record for each measured request only"
    assert all(r["rss_before_bytes"] > 1_000_000 and r["rss_after_bytes"] > 1_000_000 for r in requests)
    assert len(reads) == 6, "one read at each end of each measured request"
    intervals = records["endpoint_interval"]
    assert sum(i["calls"] for i in intervals) == 33 and sum(i["rss_measured"] for i in intervals) == 3
    assert sum(i["errors"] for i in intervals) == 0 and 0 < sum(i["duration_s_sum"] for i in intervals) < 30
    assert records["sample"][-1]["requests_total"] == 33
    deltas = [r["rss_after_bytes"] - r["rss_before_bytes"] for r in requests]
    assert sum(i["rss_delta_bytes_sum"] for i in intervals) == sum(deltas)
    [endpoint] = records["summary"][0]["endpoints"]
    assert (endpoint["calls"], endpoint["rss_measured"], endpoint["avg_delta_bytes"]) == (33, 3, round(sum(deltas) / 3))
    text = profiler.log_file.read_text()
    assert "calls=  33" in text and "(RSS measured on 3)" in text


def test_measured_requests_are_an_unbiased_sample_not_the_ones_after_slow_requests(tmp_path):
    app = FastAPI()

    @app.get("/slow")
    async def slow():
        time.sleep(0.002)  # blocks the loop: the next request starts after a 2 ms gap
        return {}

    @app.get("/fast")
    async def fast():
        return {}

    profiler = leakyspanner(app, log_path=tmp_path, level="basic", request_rss_interval_seconds=0.005)
    try:
        asyncio.run(_exchange(app, [("GET", "/slow" if i % 10 == 0 else "/fast") for i in range(2000)]))
    finally:
        profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    calls = {route: sum(i["calls"] for i in records["endpoint_interval"] if i["route"] == route)
             for route in ("/slow", "/fast")}
    assert calls == {"/slow": 200, "/fast": 1800}
    measured = {route: sum(r["route"] == route for r in records["request"]) / n for route, n in calls.items()}
    assert 0 < measured["/fast"] < 0.9, "under this load only a sample is measured"
    assert 0.5 < measured["/slow"] / measured["/fast"] < 2, measured


def test_requests_below_the_target_rate_are_all_measured(tmp_path):
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic", request_rss_interval_seconds=0.001)  # requests 5 ms apart

    async def spaced() -> None:
        async with _client(app) as client:
            for i in range(5):
                await client.get(f"/items/{i}")
                await asyncio.sleep(0.005)

    try:
        asyncio.run(spaced())
    finally:
        profiler.stop()
    requests = read_jsonl(profiler.jsonl_file)["request"]
    assert len(requests) == 5
    assert all(r["rss_before_bytes"] > 1_000_000 and r["rss_after_bytes"] > 1_000_000 for r in requests)


def test_app_exception_propagates_untouched_and_is_recorded_as_500(tmp_path):
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    try:
        with pytest.raises(KeyError, match="the original"):
            asyncio.run(_exchange(app, [("GET", "/boom")]))
    finally:
        profiler.stop()
    [record] = read_jsonl(profiler.jsonl_file)["request"]
    assert (record["route"], record["status"]) == ("/boom", 500)


def test_raw_paths_never_become_keys(tmp_path):
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    try:
        asyncio.run(_exchange(app, [("GET", f"/no/such/{i}") for i in range(200)]
                              + [("BREW", "/items/1")]))
    finally:
        profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    expected = {("GET", UNMATCHED_ROUTE), ("OTHER", "/items/{item_id}")}
    assert {(i["method"], i["route"]) for i in records["endpoint_interval"]} == expected
    assert {(r["method"], r["route"]) for r in records["request"]} <= expected
    assert set(profiler._counters) == expected


def test_client_chosen_methods_share_one_counter_and_are_never_cached(tmp_path):
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    try:
        asyncio.run(_exchange(app, [(f"BREW{i}", "/items/1") for i in range(300)] + [("GET", "/items/1")]))
    finally:
        profiler.stop()
    calls: dict[str, int] = {}
    for interval in read_jsonl(profiler.jsonl_file)["endpoint_interval"]:  # a slow host writes several
        calls[interval["method"]] = calls.get(interval["method"], 0) + interval["calls"]
    assert calls == {"OTHER": 300, "GET": 1}
    assert set(profiler._counters) == {("OTHER", "/items/{item_id}"), ("GET", "/items/{item_id}")}
    assert [sorted(by_method) for by_method in profiler._counts.values()] == [["GET"]]


def test_mounted_apps_are_named_by_full_template(tmp_path):
    async def plain(request):
        return PlainTextResponse("plain")

    sub = FastAPI()

    @sub.get("/items/{item_id}")
    async def sub_item(item_id: int):
        return {"id": item_id}

    app = FastAPI()
    app.mount("/api", sub)
    app.mount("/t/{tenant}", Starlette(routes=[Route("/page/{n}", plain)]))
    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    try:
        responses = asyncio.run(_exchange(app, [("GET", "/api/items/3"), ("GET", "/t/acme/page/2"),
                                                ("GET", "/t/other%0Aline/page/2")]))
    finally:
        profiler.stop()
    assert [r.status_code for r in responses] == [200, 200, 200]
    routes = [r["route"] for r in read_jsonl(profiler.jsonl_file)["request"]]
    assert routes == ["/api/items/{item_id}", "/t/{tenant}/page/{n}", "/t/{tenant}/page/{n}"]


def test_plain_starlette_routes_are_named(tmp_path):
    async def hello(request):
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/hello/{name}", hello), Mount("/m", routes=[Route("/x", hello)])])
    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    try:
        asyncio.run(_exchange(app, [("GET", "/hello/bob"), ("GET", "/m/x")]))
    finally:
        profiler.stop()
    assert [r["route"] for r in read_jsonl(profiler.jsonl_file)["request"]] == ["/hello/{name}", "/m/x"]


def test_contextvars_and_background_tasks_keep_working(tmp_path):
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    done: list[str] = []
    app = FastAPI()

    @app.middleware("http")
    async def set_var(request, call_next):
        var.set("from-middleware")
        return await call_next(request)

    @app.get("/ctx")
    async def ctx(background: BackgroundTasks):
        background.add_task(lambda: done.append(var.get()))
        return {"var": var.get()}

    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    try:
        [response] = asyncio.run(_exchange(app, [("GET", "/ctx")]))
    finally:
        profiler.stop()
    assert response.json() == {"var": "from-middleware"}
    assert done == ["from-middleware"]


def test_middleware_on_plain_asgi_app_passes_other_scopes_through(tmp_path):
    seen = []

    async def raw_app(scope, receive, send):
        seen.append(scope["type"])

    profiler = Profiler(raw_app, log_path=tmp_path, level="basic")
    wrapped = LeakyspannerMiddleware(raw_app, profiler)

    async def nothing():
        return {}

    async def sink(message):
        pass

    asyncio.run(wrapped({"type": "custom"}, nothing, sink))
    assert seen == ["custom"]
    assert not profiler.active and not list(tmp_path.iterdir())


def test_request_records_stay_small(tmp_path):
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="mid", request_rss_interval_seconds=0)
    try:
        asyncio.run(_exchange(app, [("GET", f"/items/{i}") for i in range(50)]))
    finally:
        profiler.stop()
    jsonl, _ = only_session(tmp_path)
    lines = [line for line in jsonl.read_text().splitlines() if line.startswith('["r"')]
    assert len(lines) == 50
    assert max(len(line) + 1 for line in lines) <= 140


def test_each_measured_sequential_request_sees_its_own_allocation(tmp_path):
    kept = []
    app = FastAPI()

    @app.post("/keep")
    async def keep():
        # fresh anonymous pages, each one touched: malloc could hand back resident memory
        # freed by an earlier test, mmap cannot
        block = mmap.mmap(-1, 4_000_000)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        kept.append(block)
        return {}

    profiler = leakyspanner(app, log_path=tmp_path, level="basic", request_rss_interval_seconds=0)
    try:
        asyncio.run(_exchange(app, [("POST", "/keep")] * 5))
    finally:
        profiler.stop()
        for block in kept:
            block.close()
    deltas = [r["rss_after_bytes"] - r["rss_before_bytes"] for r in read_jsonl(profiler.jsonl_file)["request"]]
    assert len(deltas) == 5 and all(d >= 3_500_000 for d in deltas), deltas


def test_many_mount_parameter_values_share_one_template_and_cache_entry(tmp_path):
    async def page(request):
        return PlainTextResponse("p")

    app = FastAPI()
    app.mount("/tenants/{tenant}", Starlette(routes=[Route("/page", page)]))
    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    try:
        asyncio.run(_exchange(app, [("GET", f"/tenants/t{i}/page") for i in range(1500)]))
    finally:
        profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    assert {r["route"] for r in records["request"]} == {"/tenants/{tenant}/page"}
    assert sum(i["calls"] for i in records["endpoint_interval"] if i["route"] == "/tenants/{tenant}/page") == 1500
    assert len(profiler._counters) == 1 and len(profiler._counts) == 1


def test_records_waiting_for_the_writer_are_untracked_by_a_young_collection(tmp_path):
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic", request_rss_interval_seconds=0)
    try:
        profiler._writer.ticker.stop()  # the writer thread ends: records stay in the buffer while we look
        # the endpoint's first request creates its (method, route) key; a collection that meets
        # the key and a record together may visit the record first and keep it, once per endpoint
        asyncio.run(_exchange(app, [("GET", "/items/6")]))
        gc.collect()
        asyncio.run(_exchange(app, [("GET", "/items/7")]))
        records = [r for r in profiler._buffer if r[0] == 0]
        assert len(records) == 2, "both requests are still buffered"
        gc.collect(0)
        # untracked: it never reaches the old generations, so buffering adds no full collections
        assert not gc.is_tracked(records[-1]), [gc.is_tracked(v) for v in records[-1]]
    finally:
        profiler.stop()
    assert read_jsonl(profiler.jsonl_file)["request"][1]["route"] == "/items/{item_id}"


def test_routes_past_the_fast_lookup_cap_are_still_counted_under_their_own_names(tmp_path, monkeypatch):
    monkeypatch.setattr(profiler_module, "_MAX_FAST_COUNTERS", 2)
    app = FastAPI()
    for name in ("a", "b", "c"):
        app.add_api_route(f"/{name}", lambda: {}, methods=["GET"])
    profiler = leakyspanner(app, log_path=tmp_path, level="basic", request_rss_interval_seconds=0)
    try:
        asyncio.run(_exchange(app, [("GET", "/a"), ("GET", "/b"), ("GET", "/c"), ("GET", "/c"), ("GET", "/a")]))
    finally:
        profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    assert [r["route"] for r in records["request"]] == ["/a", "/b", "/c", "/c", "/a"]
    assert {i["route"]: i["calls"] for i in records["endpoint_interval"]} == {"/a": 2, "/b": 1, "/c": 2}
    assert profiler._n_fast == 2 and len(profiler._counters) == 3


def test_counts_are_exact_while_the_sampler_copies_counters_mid_traffic(tmp_path):
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic", interval_seconds=0.01)
    try:
        asyncio.run(_exchange(app, [("GET", f"/items/{i}") for i in range(1500)]))
    finally:
        profiler.stop()
    records = read_jsonl(profiler.jsonl_file)
    intervals = records["endpoint_interval"]
    assert len({i["seq"] for i in intervals}) > 3, "the counts were copied many times while requests ran"
    assert sum(i["calls"] for i in intervals) == 1500
    assert records["summary"][0]["requests_total"] == 1500 == records["summary"][0]["endpoints"][0]["calls"]


def test_the_chosen_request_path_is_the_one_running_and_the_header_says_so(tmp_path, request_path):
    app = _make_app()
    profiler = leakyspanner(app, log_path=tmp_path, level="basic")
    try:
        asyncio.run(_exchange(app, [("GET", "/items/1")]))
        assert profiler.stats().request_path == request_path
    finally:
        profiler.stop()
    [header] = read_jsonl(profiler.jsonl_file)["header"]
    assert header["request_path"] == request_path
    assert header["config"]["request_path"] == request_path
    middleware = app.middleware_stack
    assert isinstance(middleware, LeakyspannerMiddleware)
    assert hasattr(middleware, "request_path") == (request_path == "c")
