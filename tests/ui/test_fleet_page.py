"""The sessions page's verdict across hosts, in headless Chromium against a real ``leakyspanner inspect``
server on 127.0.0.1, at 800 and 1400 px: which routes leak on how many hosts, the outlier host, every
log-supplied string shown as text. Screenshots go to the scratch folder of :mod:`browser`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, Served, ready, shot
from session_files import XSS_ROUTE, fleet_files
from session_files import write_session as write_ui_session

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                                reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
pytest.importorskip("duckdb", reason="the fleet verdict needs pip install 'leakyspanner[fleet]'")

WIDTHS = (800, 1400)
HOSTILE_HOST = "<img src=x onerror=alert(3)>web-2"
ROUTES = (("POST", "/orders/{order_id}"), ("GET", "/items/{item_id}"), ("GET", "/health"), ("GET", XSS_ROUTE))



@pytest.fixture(scope="module")
def fleet_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five hosts, one session each: /orders leaks 8 KB a call on four; on the hostile-named host
    the script-named route leaks 200 KB a call."""
    files = fleet_files()
    root = tmp_path_factory.mktemp("fleet-ui")
    for h in range(5):
        host = HOSTILE_HOST if h == 2 else f"web-{h}"
        leaks = {"/orders/{order_id}": 8192} if h < 4 else {}
        if h == 2:
            leaks[XSS_ROUTE] = 200_000
        (root / f"pod-{h}").mkdir()
        files.write_session(root / f"pod-{h}", f"leakyspanner_20260101_0000{h:02d}", host,
                            1_780_000_000.0 + h * 3600, leaks, seed=h, routes=ROUTES, requests=800, samples=40)
    return root


@pytest.fixture(scope="module")
def served(fleet_logs: Path) -> Iterator[Served]:
    server = Served(fleet_logs)
    yield server
    server.stop()


def _box(locator: Any) -> dict[str, float]:
    box = locator.bounding_box()
    assert box is not None, locator
    return box


@pytest.mark.parametrize("width", WIDTHS)
def test_sessions_page_shows_which_routes_leak_on_how_many_hosts_and_the_outlier(
        page: Any, served: Served, width: int) -> None:
    fleet = served.api("/api/fleet")["fleet"]
    assert fleet["status"] == "ok" and fleet["hosts"] == 5
    routes = fleet["routes"]["rows"]
    assert [(r["route"], r["hosts_leaking"]) for r in routes] == [("/orders/{order_id}", 3), (XSS_ROUTE, 1)]
    assert [r["host"] for r in fleet["outliers"]["rows"]] == [HOSTILE_HOST]

    page.set_viewport_size({"width": width, "height": 900})
    page.goto(served.url)
    ready(page, "sessions")
    page.wait_for_selector("[data-testid=fleet-slot][data-ready=true]", timeout=30_000)
    card = page.get_by_test_id("fleet-card")
    assert card.locator("h2").inner_text() == "Across 5 hosts"
    assert page.get_by_test_id("fleet-headline").inner_text() == fleet["headline"]
    shown = page.get_by_test_id("fleet-route")
    assert shown.count() == 2
    for i, row in enumerate(routes):
        tr = shown.nth(i)
        assert tr.get_attribute("data-route") == row["route"]
        assert tr.locator("td[data-key=endpoint]").inner_text() == f"{row['method']} {row['route']}"
        assert tr.locator("td[data-key=hosts_leaking]").inner_text() == str(row["hosts_leaking"])
        assert tr.locator("td[data-key=hosts_serving]").inner_text() == "5"
        assert tr.locator("td[data-key=retained_bytes_per_call]").inner_text() == row["labels"]["retained_bytes_per_call"]
    outlier = page.get_by_test_id("fleet-outlier")
    assert outlier.count() == 1 and outlier.locator("td[data-key=host]").inner_text() == HOSTILE_HOST

    # Attacker-chosen hosts and routes arrive as text: nothing parsed, nothing run.
    assert page.locator("img").count() == 0 and page.locator("#page script").count() == 0
    assert page.dialogs == []
    # The card and its tables fit the window; the sessions table is still there below it.
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page is {widths[0]} px wide in a {widths[1]} px window"
    outer = _box(card)
    for wrap in card.locator(".table-wrap").all():
        box = _box(wrap)
        assert outer["x"] <= box["x"] and box["x"] + box["width"] <= outer["x"] + outer["width"], (box, outer)
    assert _box(page.get_by_test_id("sessions-table"))["y"] > outer["y"] + outer["height"]
    # A long host name wraps: the verdict stays in view without scrolling the sessions table.
    wrap = _box(page.locator(".table-wrap").filter(has=page.get_by_test_id("sessions-table")))
    for verdict in page.locator("td[data-key=headline]").all():
        assert _box(verdict)["x"] + _box(verdict)["width"] <= wrap["x"] + wrap["width"] + 1
    assert page.get_by_test_id("session-row").count() == 5
    shot(page, f"fleet_{width}", docs=False)


def test_one_host_shows_no_fleet_card(page: Any, tmp_path: Path) -> None:
    write_ui_session(tmp_path / "a", "leakyspanner_20260601_100000", samples=12, host="web-1")
    write_ui_session(tmp_path / "b", "leakyspanner_20260601_110000", samples=12, host="web-1", start_ts=1_780_003_600.0)
    server = Served(tmp_path)
    try:
        assert server.api("/api/fleet") == {"fleet": None}
        page.goto(server.url)
        ready(page, "sessions")
        page.wait_for_selector("[data-testid=fleet-slot][data-ready=true]", state="attached", timeout=30_000)
        assert page.get_by_test_id("fleet-card").count() == 0
        assert page.get_by_test_id("session-row").count() == 2
    finally:
        server.stop()
