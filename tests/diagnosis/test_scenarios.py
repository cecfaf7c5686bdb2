"""Accuracy of the verdict on real apps under a real uvicorn with concurrent mixed traffic.

The leaker is never the busiest endpoint, and /heavy allocates far more per
call than the leaker (transiently), which is what fooled per-request deltas.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from pathlib import Path

import httpx
import pytest

from leakyspanner.analysis import load
from leakyspanner.analysis.diagnose import diagnose, format_verdict

HERE = Path(__file__).resolve().parent
BYTES = 40_000
# Native leaks are seen through RSS alone, which moves in allocator-sized lumps;
# the scenario leaks a decoded-image-sized buffer so the signal clears them.
NATIVE_BYTES = 120_000
SECONDS = 14.0


# Real traffic is not a steady mix: uploads come in bursts, batch jobs hit one
# endpoint for a while. Phases of a few seconds with re-drawn weights give the
# per-interval regression the variation it needs; /health stays the busiest.
_PHASE_S = 1.5
_ENDPOINTS = ("health", "work", "heavy", "item")


def _weights(rng: random.Random) -> list[float]:
    w = {"health": 1.0, "work": rng.uniform(0.05, 0.6), "heavy": rng.uniform(0.05, 0.5),
         "item": rng.choice([0.02, 0.1, 0.3, 0.6])}
    return [w[name] for name in _ENDPOINTS]


async def _traffic(url: str, seconds: float, concurrency: int = 6) -> dict[str, int]:
    counts: dict[str, int] = {}
    started = time.monotonic()
    deadline = started + seconds
    rng = random.Random(1)
    phases = [_weights(rng) for _ in range(int(seconds / _PHASE_S) + 2)]
    ids = iter(range(10**9))

    async def worker(client: httpx.AsyncClient, seed: int) -> None:
        pick = random.Random(seed)
        while (now := time.monotonic()) < deadline:
            name = pick.choices(_ENDPOINTS, phases[int((now - started) / _PHASE_S)])[0]
            if name == "health":
                call = client.get("/health")
            elif name == "work":
                call = client.post("/work", json={"a": list(range(20))})
            elif name == "heavy":
                call = client.get("/heavy")
            else:
                call = client.post(f"/items/{next(ids)}")
            response = await call
            assert response.status_code == 200
            counts[name] = counts.get(name, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
    return counts


def _leak_line(scenario: str) -> int:
    for number, line in enumerate((HERE / "scenario_app.py").read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# LEAK {scenario}") or f"# LEAK {scenario} " in line:
            return number
    raise AssertionError(f"no LEAK marker for {scenario}")


@pytest.fixture
def run_scenario(serve, tmp_path):
    def run(scenario: str, level: str = "mid", per_call: int = BYTES):
        shutil.copy(HERE / "scenario_app.py", tmp_path / "scenario_app.py")
        server = serve((HERE / "scenario_app.py").read_text(), module="scenario_app", env={
            "LEAK_SCENARIO": scenario, "LEAK_BYTES": str(per_call), "LEAK_LEVEL": level,
            "LEAK_LOG_DIR": str(tmp_path / "logs")})
        counts = asyncio.run(_traffic(server.url, SECONDS))
        server.stop()
        assert counts["health"] > counts["item"], "the leaker must not be the busiest endpoint"
        sessions = load(tmp_path / "logs")
        verdict = diagnose(sessions)
        print(format_verdict(verdict))
        return verdict, counts

    return run


def _assert_names_leaker(verdict, scenario: str, kind: str, per_call: int = BYTES, tolerance: float = 0.30):
    assert verdict.leaking and verdict.status == "leaking", verdict.headline
    first = verdict.endpoints[0]
    assert (first.method, first.route) == ("POST", "/items/{item_id}"), format_verdict_short(verdict)
    assert first.significant
    assert abs(first.retained_bytes_per_call - per_call) <= tolerance * per_call, first
    assert all(not e.significant for e in verdict.endpoints[1:]), format_verdict_short(verdict)
    assert verdict.kinds and verdict.kinds[0].kind == kind, [k.kind for k in verdict.kinds]


def format_verdict_short(verdict) -> str:
    return "; ".join(f"{e.method} {e.route}={e.retained_bytes_per_call:.0f}{'*' if e.significant else ''}"
                     for e in verdict.endpoints)


@pytest.mark.parametrize("scenario", ["global_list", "cache"])
def test_python_heap_leak_is_named_measured_and_located(run_scenario, scenario):
    verdict, _ = run_scenario(scenario)
    _assert_names_leaker(verdict, scenario, "python_heap")
    line = _leak_line(scenario)
    assert verdict.sites and verdict.sites[0].site.endswith(f"scenario_app.py:{line}"), verdict.sites[:3]


def test_tasks_never_finished_are_named_with_their_coroutine(run_scenario):
    verdict, _ = run_scenario("tasks")
    _assert_names_leaker(verdict, "tasks", "asyncio_tasks")
    assert "_wait_forever" in verdict.kinds[0].summary


def test_connections_never_closed_show_as_growing_descriptors(run_scenario):
    verdict, _ = run_scenario("connections")
    _assert_names_leaker(verdict, "connections", "file_descriptors")
    line = _leak_line("connections")
    assert any(s.site.endswith(f"scenario_app.py:{line}") for s in verdict.sites[:3]), verdict.sites[:3]


def test_native_leak_outside_tracemalloc_is_called_native(run_scenario):
    verdict, _ = run_scenario("native", per_call=NATIVE_BYTES)
    _assert_names_leaker(verdict, "native", "native", per_call=NATIVE_BYTES)
    assert any("MALLOC_ARENA_MAX" in r for r in verdict.kinds[0].remedies)


def test_control_that_warms_up_and_plateaus_is_not_called_leaking(run_scenario):
    verdict, _ = run_scenario("control")
    assert not verdict.leaking, format_verdict(verdict)
    assert verdict.status in ("plateau", "no leak", "sawtooth")
    assert all(not e.significant for e in verdict.endpoints)
