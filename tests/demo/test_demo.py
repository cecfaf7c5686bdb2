"""The bundled demo: its app leaks for real, its traffic stays local, its runner leaves files and no server."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from leakyspanner.cli import main
from leakyspanner.commands.demo import add_arguments, last_snapshot_sites, summary_block
from leakyspanner.demo.app import FIXED_CACHE_ENTRIES, FIXED_HISTORY, create_app, settings_from_env
from leakyspanner.demo.runner import run_demo
from leakyspanner.demo.traffic import ENDPOINT_WEIGHTS, _phase_weights, check_loopback_url, run_traffic

APP_SOURCE = Path(__file__).resolve().parents[2] / "leakyspanner" / "demo" / "app.py"
DEMO_ROUTES = ("/health", "/ocr/process", "/search", "/report", "/stream", "/items/{item_id}")


@pytest.fixture(autouse=True)
def _no_server_left_running() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left running: {[p.cmdline() for p in left]}"


def _leak_lines() -> list[int]:
    return [n for n, line in enumerate(APP_SOURCE.read_text().splitlines(), 1) if "  # LEAK:" in line]


def _drive(app: object, ocr: int, searches: int) -> None:
    async def go() -> None:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            for i in range(ocr):
                response = await client.post("/ocr/process", json={"document_id": f"doc-{i}", "text_hint": "total"})
                assert response.status_code == 200
                assert response.json()["image_bytes"] >= 200 * 1024 - 64
            for i in range(searches):
                response = await client.get("/search", params={"q": f"invoice {i}"})
                assert response.status_code == 200

    asyncio.run(go())


# -- the app, in process ------------------------------------------------------
def test_leaking_app_retains_every_image_and_query_while_fixed_app_bounds_them() -> None:
    leaking = create_app(profile=False)
    fixed = create_app(fixed=True, profile=False)
    for app in (leaking, fixed):
        _drive(app, ocr=FIXED_HISTORY + 15, searches=FIXED_CACHE_ENTRIES + 20)
    assert len(leaking.state.demo.history) == FIXED_HISTORY + 15
    assert len(leaking.state.demo.search_cache) == FIXED_CACHE_ENTRIES + 20
    assert len(fixed.state.demo.history) == FIXED_HISTORY
    assert len(fixed.state.demo.search_cache) == FIXED_CACHE_ENTRIES


def test_every_demo_endpoint_answers_in_process() -> None:
    app = create_app(profile=False)

    async def go() -> dict[str, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo") as client:
            return {
                "health": (await client.get("/health")).status_code,
                "item": (await client.get("/items/7")).status_code,
                "missing item": (await client.get("/items/100000")).status_code,
                "report": (await client.get("/report", params={"days": 3})).status_code,
                "stream": len((await client.get("/stream")).content),
                "empty query": (await client.get("/search", params={"q": ""})).status_code,
            }

    got = asyncio.run(go())
    assert got == {"health": 200, "item": 200, "missing item": 404, "report": 200,
                   "stream": 16 * 4096, "empty query": 422}


def test_leak_lines_are_the_allocation_sites_tracemalloc_reports() -> None:
    app = create_app(profile=False)
    tracemalloc.start(1)
    try:
        _drive(app, ocr=20, searches=40)
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    by_line = [s for s in snapshot.statistics("lineno") if Path(s.traceback[0].filename).resolve() == APP_SOURCE]
    top_two = sorted(s.traceback[0].lineno for s in by_line[:2])
    assert top_two == _leak_lines()
    assert by_line[0].size >= 20 * 200 * 1024


def test_importing_the_app_module_starts_no_profiler() -> None:
    import leakyspanner.demo.app as module

    assert module._app is None
    assert not [t for t in threading.enumerate() if t.name.startswith("leakyspanner-")]


def test_settings_from_env_reads_the_demo_variables() -> None:
    env = {"LEAKYSPANNER_DEMO_FIXED": "1", "LEAKYSPANNER_DEMO_LEVEL": "deep",
           "LEAKYSPANNER_DEMO_LOG_DIR": "/tmp/x", "LEAKYSPANNER_DEMO_INTERVAL": "0.5"}
    assert settings_from_env(env) == {"fixed": True, "level": "deep", "log_path": "/tmp/x", "interval_seconds": 0.5}
    assert settings_from_env({})["fixed"] is False
    with pytest.raises(ValueError, match="LEAKYSPANNER_DEMO_INTERVAL"):
        settings_from_env({"LEAKYSPANNER_DEMO_INTERVAL": "soon"})


# -- traffic ----------------------------------------------------------------------
@pytest.mark.parametrize("url", ["http://example.com", "http://10.0.0.8:8000", "https://8.8.8.8",
                                 "http://localhost.example.com", "ftp://127.0.0.1", "127.0.0.1:8000"])
def test_traffic_refuses_a_non_loopback_url(url: str) -> None:
    with pytest.raises(ValueError, match="127.0.0.1"):
        run_traffic(url, seconds=0.1)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/", "http://localhost:1", "http://[::1]:9", "http://127.3.2.1"])
def test_traffic_accepts_loopback_urls(url: str) -> None:
    assert check_loopback_url(url) == url.rstrip("/")


def test_traffic_mix_keeps_health_busiest_and_the_leaker_quiet() -> None:
    weights = ENDPOINT_WEIGHTS
    assert (weights["GET /health"] > weights["GET /items/{item_id}"] > weights["GET /search"]
            > weights["GET /report"] > weights["POST /ocr/process"])
    health = list(weights).index("GET /health")
    for phase in _phase_weights(random.Random(0), 50):  # the drift never lets another endpoint lead
        assert max(range(len(phase)), key=phase.__getitem__) == health


# -- the real server ------------------------------------------------------------
def test_run_demo_writes_a_session_whose_summary_names_routes_by_template(tmp_path: Path) -> None:
    result = run_demo(seconds=4, log_dir=tmp_path, quiet=True)

    assert len(result.jsonl_files) == 1 and len(result.log_files) == 1
    assert result.log_dir == tmp_path.resolve()
    records = [json.loads(line) for line in result.jsonl_files[0].read_text().splitlines() if line.startswith("{")]
    assert records[0]["kind"] == "header" and records[0]["level"] == "mid"
    assert records[-1]["kind"] == "summary"
    routes = {ep["route"] for ep in records[-1]["endpoints"]}
    assert set(DEMO_ROUTES) <= routes
    log = result.log_files[0].read_text()
    assert "LeakySpanner v" in log
    block = summary_block(log)
    assert block[1].strip() == "LEAKYSPANNER SESSION SUMMARY"
    assert "/items/{item_id}" in "\n".join(block) and "/ocr/process" in "\n".join(block)
    counts = result.traffic["by_endpoint"]
    assert result.traffic["errors"] == 0
    assert max(counts, key=counts.__getitem__) == "GET /health"
    assert counts["POST /ocr/process"] < counts["GET /search"]
    assert last_snapshot_sites(result.jsonl_files[0])  # level mid took snapshots


def test_run_demo_refuses_bad_arguments_before_starting_a_server(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="level"):
        run_demo(seconds=1, level="verbose", log_dir=tmp_path)
    with pytest.raises(ValueError, match="workers"):
        run_demo(seconds=1, workers=0, log_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_demo_command_prints_the_summary_and_top_sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_dir = tmp_path / "logs"
    assert main(["demo", "--seconds", "3", "--log-dir", str(log_dir)]) == 0

    out = capsys.readouterr().out
    assert str(log_dir) in out
    assert "LEAKYSPANNER SESSION SUMMARY" in out
    assert "/ocr/process" in out and "/items/{item_id}" in out
    assert "Top allocation sites" in out
    assert len(list(log_dir.glob("*.jsonl"))) == 1


@pytest.mark.parametrize("flags", [["--seconds", "0"], ["--seconds", "soon"], ["--workers", "0"], ["--level", "loud"]])
def test_demo_command_rejects_bad_flags_as_usage_errors(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="leakyspanner demo")
    add_arguments(parser)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(flags)
    assert exc.value.code == 2
    assert flags[0] in capsys.readouterr().err
