"""The dashboard in headless Chromium against a real ``leakyspanner inspect`` server on 127.0.0.1."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, Served
from browser import ready as _ready
from browser import shot as _shot
from playwright.sync_api import expect
from session_files import XSS_FILE, XSS_ROUTE, SessionWriter, copy_samples, three_sessions, write_session

LIVE_ID = "leakyspanner_20260601_160000"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                                reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SessionWriter, dict[str, Path]]:
    """sample_logs' leaking and fixed runs (synthetic ones when absent), the XSS session, and a live one."""
    root = tmp_path_factory.mktemp("served")
    copied = {p.name: p for p in copy_samples(root, "leaking", "fixed")}
    if len(copied) < 2:
        three_sessions(root)
    else:
        write_session(root / "xss", "leakyspanner_20260601_120000", routes=(("GET", "/health"), ("GET", XSS_ROUTE)),
                      leak_route=("GET", XSS_ROUTE), host="<b>evil-host</b>")
    live = write_session(root / "live", LIVE_ID, samples=12, complete=False, start_ts=1_790_000_000.0)
    return root, live, {name: root / name for name in ("leaking", "fixed", "xss")}


@pytest.fixture(scope="module")
def served(logs: tuple[Path, SessionWriter, dict[str, Path]]) -> Iterator[Served]:
    server = Served(logs[0])
    yield server
    server.stop()


def _session_of(served: Served, folder: Path) -> dict[str, Any]:
    rows = served.api("/api/sessions")["sessions"]
    return next(r for r in rows if Path(r["path"]).parent.name == folder.name)


def test_sessions_to_session_to_endpoint_to_diff_to_compare(page: Any, served: Served, logs: Any) -> None:
    folders = logs[2]
    listing = served.api("/api/sessions")["sessions"]
    page.goto(served.url)
    _ready(page, "sessions")
    assert page.get_by_test_id("session-row").count() == len(listing)
    leaking, fixed = _session_of(served, folders["leaking"]), _session_of(served, folders["fixed"])
    row = page.locator(f"[data-testid=session-row][data-session-id='{leaking['session_id']}']")
    assert row.get_by_test_id("status-badge").inner_text() == leaking["status"]
    _shot(page, "sessions")

    # The session page: verdict, trend with alerts, exact values on hover.
    row.click()
    _ready(page, "session")
    detail = served.api(f"/api/sessions/{leaking['session_id']}")
    assert page.get_by_test_id("session-title").inner_text() == leaking["session_id"]
    assert page.get_by_test_id("verdict-headline").inner_text() == detail["session"]["headline"]
    chart = page.get_by_test_id("rss-chart")
    assert int(chart.get_attribute("data-points")) >= len(detail["trend"]["x"])
    assert chart.get_by_test_id("alert-marker").count() == len(detail["alerts"])
    chart.get_by_test_id("rss-chart-overlay").hover(position={"x": 200, "y": 50})
    tip = page.get_by_test_id("tooltip")
    shown = re.search(r"RSS: ([\d,]+) bytes", tip.inner_text())
    assert shown and int(shown.group(1).replace(",", "")) in detail["trend"]["rss_bytes"]

    # The endpoint table sorts by clicking headers; its cells hold the API's exact numbers.
    table = page.get_by_test_id("endpoint-table")
    calls = [r["calls"] for r in detail["endpoints"]["rows"]]
    table.get_by_test_id("col-calls").click()
    assert table.locator("tbody tr").first.locator("td[data-key=calls]").get_attribute("data-value") == str(max(calls))
    table.get_by_test_id("col-calls").click()
    assert table.locator("tbody tr").first.locator("td[data-key=calls]").get_attribute("data-value") == str(min(calls))
    table.get_by_test_id("col-retained_bytes_per_call").click()
    top = max(detail["endpoints"]["rows"], key=lambda r: r["retained_bytes_per_call"] or 0)
    first = table.locator("tbody tr").first
    assert first.get_attribute("data-route") == top["route"]
    assert float(first.locator("td[data-key=retained_bytes_per_call]").get_attribute("data-value")) == \
        top["retained_bytes_per_call"]

    # Pick an endpoint: its distribution is drawn from the server's bins.
    first.click()
    box = page.get_by_test_id("endpoint-detail")
    expect(box.get_by_test_id("endpoint-name")).to_have_text(f"{top['method']} {top['route']}")
    assert box.get_attribute("data-ready") == "true"
    hist = served.api(f"/api/sessions/{leaking['session_id']}/endpoint", method=top["method"], route=top["route"])
    bars = box.get_by_test_id("endpoint-histogram").get_by_test_id("histogram-bar")
    counts = [int(bars.nth(i).get_attribute("data-count")) for i in range(bars.count())]
    assert sum(counts) == hist["row"]["calls"] == top["calls"]

    # Snapshot A/B diff.
    snapshots = detail["snapshots"]
    assert len(snapshots) >= 2
    a, b = snapshots[0]["seq"], snapshots[len(snapshots) // 2]["seq"]
    page.get_by_test_id("snapshot-a").select_option(str(a))
    page.get_by_test_id("snapshot-b").select_option(str(b))
    page.get_by_test_id("diff-button").click()
    expect(page.get_by_test_id("site-diff-caption")).to_contain_text(f"#{a} → #{b}")
    diff = served.api(f"/api/sessions/{leaking['session_id']}/diff", a=a, b=b)
    cells = page.get_by_test_id("site-diff").locator("td[data-key=site]")
    assert cells.count() == len(diff["rows"])
    assert cells.first.inner_text() == diff["rows"][0]["labels"]["site"]  # the short path; the full one in data-value
    assert cells.first.get_attribute("data-value") == diff["rows"][0]["site"]
    _shot(page, "session")

    # Back to the list, then before/after.
    page.get_by_test_id("back").click()
    _ready(page, "sessions")
    page.get_by_test_id("compare-before").select_option(leaking["session_id"])
    page.get_by_test_id("compare-after").select_option(fixed["session_id"])
    page.get_by_test_id("compare-button").click()
    _ready(page, "compare")
    check = served.api("/api/compare", before=leaking["session_id"], after=fixed["session_id"])["fixcheck"]
    assert page.get_by_test_id("fixcheck-headline").inner_text() == check["headline"]
    assert int(page.get_by_test_id("compare-chart").get_attribute("data-points")) > 0
    _shot(page, "compare")


def test_script_route_is_shown_as_text_and_runs_nothing(page: Any, served: Served, logs: Any) -> None:
    xss = _session_of(served, logs[2]["xss"])
    page.goto(served.url + "#/session/" + xss["session_id"])
    _ready(page, "session")
    row = page.locator("[data-testid=endpoint-row]").filter(has_text=XSS_ROUTE)
    assert row.count() == 1 and row.get_attribute("data-route") == XSS_ROUTE
    assert row.locator("td[data-key=endpoint]").inner_text() == f"GET {XSS_ROUTE}"
    row.click()
    expect(page.get_by_test_id("endpoint-name")).to_have_text(f"GET {XSS_ROUTE}")
    assert "<b>evil-host</b>" in page.get_by_test_id("session-meta").inner_text()
    page.wait_for_selector("[data-testid=site-diff]")
    assert XSS_FILE in page.get_by_test_id("site-diff").inner_text()
    assert page.locator("img").count() == 0 and page.locator("b").count() == 0
    assert page.locator("script").count() == 1  # app.js, nothing injected
    page.wait_for_timeout(300)
    assert page.dialogs == []


def test_live_session_page_follows_the_file(page: Any, served: Served, logs: Any) -> None:
    writer: SessionWriter = logs[1]
    page.goto(served.url + "#/session/" + LIVE_ID)
    _ready(page, "session")
    assert page.get_by_test_id("live-indicator").is_visible()
    samples = page.get_by_test_id("stat-samples")
    before = int(samples.locator(".stat-value").inner_text())
    writer.samples(6)
    expect(samples.locator(".stat-value")).to_have_text(str(before + 6), timeout=20_000)
    assert int(page.get_by_test_id("rss-chart").get_attribute("data-points")) >= before + 6
    _shot(page, "live")
    writer.finish()
    expect(page.get_by_test_id("live-indicator")).to_be_hidden(timeout=20_000)
    assert "complete" in page.get_by_test_id("session-meta").inner_text()


def test_a_malformed_url_hash_shows_the_list_instead_of_throwing(page: Any, served: Served) -> None:
    for bad in ("#/session/%E0%A4%A", "#/compare/%/%zz", "#/%"):
        page.goto(served.url + bad)
        _ready(page, "sessions")  # the page fixture fails the test on any uncaught error
    page.goto(served.url + "#/session/" + "%E0%A4%A")
    page.evaluate("location.hash = '#/session/%'")
    _ready(page, "sessions")
