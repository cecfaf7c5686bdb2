"""Prometheus: the collector's names and labels, a real Prometheus scraping a real
uvicorn app, and gunicorn workers merged without double counting."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from netutil import ROOT, free_port
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import leakyspanner
from leakyspanner.capture import heap
from leakyspanner.metrics import prometheus as lsprom


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _app() -> FastAPI:
    app = FastAPI()
    kept: list[bytes] = []

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.post("/keep")
    async def keep() -> dict[str, int]:
        kept.append(bytearray(400_000))
        return {"kept": len(kept)}

    return app


def test_collector_counts_requests_per_route_template_with_errors_and_durations(tmp_path):
    app = _app()
    profiler = leakyspanner.leakyspanner(app, log_path=tmp_path, level="mid", interval_seconds=60)
    registry = CollectorRegistry()
    lsprom.register(profiler, registry)

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for i in range(7):
                assert (await client.get(f"/items/{i}")).status_code == 200
            for _ in range(3):
                assert (await client.get("/boom")).status_code == 500
            for _ in range(20):
                await client.post("/keep")
            await client.get("/no/such/path/../../etc")

    try:
        asyncio.run(drive())
        got = _samples(registry)
    finally:
        profiler.stop()
    item = (("method", "GET"), ("route", "/items/{item_id}"))
    assert got[("leakyspanner_requests_total", item)] == 7
    assert got[("leakyspanner_request_errors_total", item)] == 0
    assert got[("leakyspanner_request_duration_seconds_count", item)] == 7
    assert got[("leakyspanner_request_duration_seconds_sum", item)] > 0
    assert got[("leakyspanner_request_errors_total", (("method", "GET"), ("route", "/boom")))] == 3
    routes = {dict(labels).get("route") for (name, labels) in got if name == "leakyspanner_requests_total"}
    assert routes == {"/items/{item_id}", "/boom", "/keep", "<unmatched>"}  # templates, never raw paths
    assert got[("leakyspanner_process_resident_memory_bytes", ())] > 0
    assert got[("leakyspanner_memory_growth_alert", ())] in (0.0, 1.0)
    assert got[("leakyspanner_memory_growth_threshold_bytes", ())] == 50 * 2**20
    if heap.AVAILABLE:
        keep = (("method", "POST"), ("route", "/keep"))
        # 20 x 400 KB kept: the sampled estimate is within a factor of two of 8 MB
        assert 4e6 < got[("leakyspanner_route_heap_live_bytes", keep)] < 16e6
        assert got[("leakyspanner_heap_live_bytes", ())] >= got[("leakyspanner_route_heap_live_bytes", keep)]


def test_scrape_of_a_stopped_profiler_gives_no_error_and_no_rss(tmp_path):
    profiler = leakyspanner.leakyspanner(_app(), log_path=tmp_path, level="basic")
    profiler.stop()
    registry = CollectorRegistry()
    lsprom.register(profiler, registry)
    got = _samples(registry)
    assert ("leakyspanner_process_resident_memory_bytes", ()) not in got
    assert got[("leakyspanner_memory_growth_alert", ())] == 0


def test_register_without_a_profiler_names_the_remedy():
    with pytest.raises(ValueError, match=r"enabled=False\) returns None"):
        lsprom.register(None, CollectorRegistry())


def test_missing_extra_names_the_pip_install_line():
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "try:\n import leakyspanner.metrics.prometheus\n"
            "except ImportError as e: print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'leakyspanner[prometheus]'" in out


# ----------------------------------------------------------------- real Prometheus

LEAKY_APP = """
from fastapi import FastAPI
from leakyspanner import leakyspanner
from leakyspanner.metrics.prometheus import asgi_app, register

app = FastAPI()
KEPT = []

@app.post("/orders/{order_id}")
async def order(order_id: int):
    KEPT.append(bytearray(200_000))
    return {"id": order_id}

@app.get("/health")
async def health():
    return {"ok": True}

profiler = leakyspanner(app, log_path="logs", level="mid", interval_seconds=1)
register(profiler)
app.mount("/metrics", asgi_app())
"""


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus package is not installed (scripts/test.sh installs it: "
                    "apt-get install prometheus)")
    return binary


class _Prometheus:
    def __init__(self, tmp_path: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: app\n    metrics_path: /metrics/\n    static_configs: [{{targets: ['{target}']}}]\n")
        self._log = open(tmp_path / "prometheus.out", "w")
        self.proc = subprocess.Popen(
            [_prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._until(lambda: self._get("/-/ready") is not None, "Prometheus did not become ready")
        except BaseException:
            self.stop()
            raise

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return bytes(response.read())
        except OSError:
            return None

    def query(self, promql: str) -> dict[str, float]:
        """route label -> value of an instant query."""
        raw = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if raw is None:
            return {}
        result = json.loads(raw)["data"]["result"]
        return {r["metric"].get("route", ""): float(r["value"][1]) for r in result}

    def _until(self, check, message: str, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.proc.returncode}")
            if check():
                return
            time.sleep(0.25)
        raise AssertionError(message)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def test_real_prometheus_sees_the_leaking_routes_series_rise(serve, tmp_path):
    binary_check = _prometheus_binary()
    assert binary_check
    server = serve(LEAKY_APP)
    prom = _Prometheus(tmp_path, f"127.0.0.1:{server.port}")
    try:
        metric = ("leakyspanner_route_heap_live_bytes" if heap.AVAILABLE
                  else "leakyspanner_process_resident_memory_bytes")
        selector = '{route="/orders/{order_id}"}' if heap.AVAILABLE else ""
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(40):
                client.post(f"/orders/{i}").raise_for_status()
                client.get("/health").raise_for_status()
            prom._until(lambda: prom.query('leakyspanner_requests_total{route="/orders/{order_id}"}')
                        .get("/orders/{order_id}") == 40, "Prometheus never scraped the 40 orders")
            first = max(prom.query(metric + selector).values())
            for i in range(40, 160):
                client.post(f"/orders/{i}").raise_for_status()
            prom._until(lambda: prom.query('leakyspanner_requests_total{route="/orders/{order_id}"}')
                        .get("/orders/{order_id}") == 160, "Prometheus never scraped the 160 orders")
        # 120 more orders kept 24 MB more: the series rose by well over half of that
        last = max(prom.query(metric + selector).values())
        assert last - first > 12e6, (first, last)
        assert prom.query('leakyspanner_requests_total{route="/health"}')["/health"] == 40
        rising = prom.query(f"deriv({metric}{selector}[1m]) > 0")
        assert rising, "Prometheus's own deriv() does not see the series rising"
    finally:
        prom.stop()


# ----------------------------------------------------------------- gunicorn, multiprocess

GUNICORN_APP = """
from fastapi import FastAPI
from leakyspanner import leakyspanner
from leakyspanner.metrics.prometheus import asgi_app, register

app = FastAPI()

@app.get("/work/{n}")
async def work(n: int):
    return {"n": n}

profiler = leakyspanner(app, log_path="logs", level="basic", interval_seconds=1)
exporter = register(profiler, interval_s=0.2)
app.mount("/metrics", asgi_app())
"""


def test_gunicorn_workers_are_summed_once_each_and_gauges_are_per_worker(tmp_path):
    pytest.importorskip("gunicorn")
    (tmp_path / "gapp.py").write_text(GUNICORN_APP)
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    log = open(tmp_path / "gunicorn.out", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "gapp:app", "-w", "2", "-k",
                             "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{port}"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        totals: dict[str, float] = {}
        pids: set[str] = set()
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < deadline:
                try:
                    client.get("/metrics/")
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "gunicorn.out").read_text()
                    time.sleep(0.2)
            for i in range(300):  # a fresh connection each, so both workers get some
                with urllib.request.urlopen(f"{url}/work/{i}", timeout=30) as response:
                    assert response.status == 200
            while time.monotonic() < deadline:
                text = client.get("/metrics/").text
                totals, pids = {}, set()
                for family in text_string_to_metric_families(text):
                    for s in family.samples:
                        if s.name == "leakyspanner_requests_total" and s.labels.get("route") == "/work/{n}":
                            totals[s.labels.get("pid", "")] = totals.get(s.labels.get("pid", ""), 0) + s.value
                        if s.name == "leakyspanner_process_resident_memory_bytes":
                            pids.add(s.labels["pid"])
                if sum(totals.values()) >= 300 and len(pids) == 2:
                    break
                time.sleep(0.2)
        assert sum(totals.values()) == 300  # each request counted by the one worker that served it
        assert len(pids) == 2  # one RSS series per worker, never a sum of RSS
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
