"""The dashboard's verdict across hosts (``/api/fleet``): none for one host, the fleet code's answer
for several, worked out again when a followed directory gains a host, at most every max(1 s, 2 x its cost)."""

from __future__ import annotations

from pathlib import Path

import pytest
from session_files import fleet_files

from leakyspanner.analysis import load
from leakyspanner.ui.server import Dashboard

pytest.importorskip("duckdb", reason="the fleet verdict needs pip install 'leakyspanner[fleet]'")
from leakyspanner.fleet import fleet_verdict  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fleet_appears_with_a_second_host_and_matches_the_fleet_verdict(tmp_path: Path) -> None:
    files, clock = fleet_files(), Clock()
    leak = {"/orders/{order_id}": 65536}
    files.write_session(tmp_path, "leakyspanner_20260101_000000", "web-0", 1_780_000_000.0, leak, requests=600, samples=30)
    dashboard = Dashboard(tmp_path, clock=clock)
    assert dashboard.fleet() is None  # one host: nothing to compare

    files.write_session(tmp_path, "leakyspanner_20260101_000001", "web-1", 1_780_003_600.0, leak, requests=600,
                        samples=30, seed=1)
    clock.now += 0.5
    assert dashboard.fleet() is None  # new files are looked for at most once a second
    clock.now += 5
    fleet = dashboard.fleet()
    assert fleet is not None and fleet["status"] == "ok" and fleet["hosts"] == 2
    expected = fleet_verdict(load(tmp_path, warn=False)).leaking_routes
    assert [(r["method"], r["route"], r["hosts_leaking"], r["hosts_serving"]) for r in fleet["routes"]["rows"]] == \
        [(m, r, h, s) for m, r, h, s in expected[["method", "route", "hosts_leaking", "hosts_serving"]].itertuples(
            index=False)]
    assert fleet["headline"] == fleet_verdict(load(tmp_path, warn=False)).lines()[0]
    assert dashboard.fleet() is fleet  # unchanged files: the cached answer

    files.write_session(tmp_path, "leakyspanner_20260101_000002", "web-2", 1_780_007_200.0, {}, requests=600,
                        samples=30, seed=2)
    clock.now += 1.5  # a scan is due, and the verdict is older than max(1 s, 2 x its cost)
    assert dashboard.fleet()["hosts"] == 3  # type: ignore[index]
