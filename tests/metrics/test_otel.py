"""OpenTelemetry: observable instruments read by the SDK's in-memory reader, and the
OTLP/HTTP provider configured by the standard OTEL_* variables against a local receiver."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import threading

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import leakyspanner
from leakyspanner.capture import heap
from leakyspanner.metrics import otel


def _app() -> FastAPI:
    app = FastAPI()
    kept: list[bytes] = []

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @app.post("/cache")
    async def cache() -> dict[str, int]:
        kept.append(bytearray(300_000))
        return {"kept": len(kept)}

    return app


def _drive(app: FastAPI, users: int, caches: int) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            for i in range(users):
                (await client.get(f"/users/{i}")).raise_for_status()
            for _ in range(caches):
                (await client.post("/cache")).raise_for_status()
    asyncio.run(run())


def _points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = [(dict(p.attributes), p.value) for p in metric.data.data_points]
    return out


def test_sdk_reader_sees_per_route_counters_and_process_gauges(tmp_path):
    app = _app()
    profiler = leakyspanner.leakyspanner(app, log_path=tmp_path, level="mid", interval_seconds=60)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        otel.instrument(profiler, provider)
        _drive(app, users=5, caches=25)
        points = _points(reader)
    finally:
        provider.shutdown()
        profiler.stop()
    calls = {a["http.route"]: v for a, v in points["leakyspanner.requests"]}
    assert calls == {"/users/{user_id}": 5, "/cache": 25}  # route templates only
    assert all(a["http.request.method"] in ("GET", "POST") for a, _ in points["leakyspanner.requests"])
    assert points["leakyspanner.process.memory.usage"][0][1] > 0
    assert points["leakyspanner.memory.growth.alert"][0][1] == 0
    assert sum(v for _, v in points["leakyspanner.request.duration"]) > 0
    if heap.AVAILABLE:
        live = {a["http.route"]: v for a, v in points["leakyspanner.route.heap.live"]}
        assert 3.75e6 < live["/cache"] < 15e6  # 25 x 300 KB kept, sampled estimate within 2x


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_otlp_provider_exports_to_the_endpoint_named_by_otel_variables(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    _Receiver.bodies = []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders-api")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # only the explicit flush exports
    app = _app()
    profiler = leakyspanner.leakyspanner(app, log_path=tmp_path, level="basic", interval_seconds=60)
    provider = otel.otlp_meter_provider()
    try:
        otel.instrument(profiler, provider)
        _drive(app, users=3, caches=0)
        assert provider.force_flush(timeout_millis=30_000)
    finally:
        provider.shutdown()
        profiler.stop()
        server.shutdown()
        server.server_close()
    assert _Receiver.bodies and _Receiver.bodies[0][0] == "/v1/metrics"
    request = ExportMetricsServiceRequest.FromString(_Receiver.bodies[0][1])
    resource = request.resource_metrics[0].resource
    attributes = {a.key: a.value.string_value or a.value.int_value for a in resource.attributes}
    assert attributes["service.name"] == "orders-api"
    assert attributes["process.pid"] > 0
    names = {m.name for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"leakyspanner.requests", "leakyspanner.process.memory.usage"} <= names
    sums = {m.name: m.sum for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.HasField("sum")}
    users = [p for p in sums["leakyspanner.requests"].data_points
             if any(a.value.string_value == "/users/{user_id}" for a in p.attributes)]
    assert [p.as_int for p in users] == [3]


def test_missing_extra_names_the_pip_install_line():
    code = ("import sys; sys.modules['opentelemetry'] = None\n"
            "try:\n import leakyspanner.metrics.otel\n"
            "except ImportError as e: print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'leakyspanner[otel]'" in out


def test_instrument_without_a_profiler_names_the_remedy():
    with pytest.raises(ValueError, match=r"enabled=False\) returns None"):
        otel.instrument(None, MeterProvider())
