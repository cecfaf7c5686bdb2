"""The self-contained HTML report: no external URL, data embedded and inert, renders offline in Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, SHOTS
from playwright.sync_api import expect
from session_files import XSS_ROUTE, three_sessions, write_session

from leakyspanner.analysis import load
from leakyspanner.analysis.diagnose import diagnose
from leakyspanner.analysis.stats import endpoint_table
from leakyspanner.ui import render_report
from leakyspanner.ui.html import DATA_ID, script_json

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                                    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
BREAKOUT = "</script><script>alert(1)</script><!--"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = three_sessions(tmp_path_factory.mktemp("report"))
    write_session(root / "breakout", "leakyspanner_20260601_170000", routes=(("GET", "/ok"), ("GET", BREAKOUT)),
                  leak_route=("GET", BREAKOUT), start_ts=1_780_010_000.0)
    return root


@pytest.fixture(scope="module")
def leaking_report(logs: Path) -> str:
    return render_report(load(logs / "leaking"))


@pytest.fixture(scope="module")
def all_report(logs: Path) -> str:
    return render_report(load(logs))


def _embedded(page: str) -> dict[str, Any]:
    found = re.search(rf'<script id="{DATA_ID}" type="application/json">(.*?)</script>', page, re.S)
    assert found, "no data block"
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def test_report_has_no_external_urls(leaking_report: str) -> None:
    page = leaking_report
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "/static/" not in page and "<link rel=\"stylesheet\"" not in page
    assert re.findall(r"<script\b", page) == ['<script', '<script']  # the data block and the inlined app
    assert "@import" not in page and "url(" not in page


def test_report_embeds_the_sessions_data(logs: Path, leaking_report: str) -> None:
    sessions = load(logs / "leaking")
    sid = sessions.session_ids[0]
    data = _embedded(leaking_report)
    verdict = diagnose(sessions, sid)
    for site in data["details"][sid]["verdict"]["sites"]:  # what the page shows beside the numbers
        del site["labels"]
    assert data["details"][sid]["verdict"] == json.loads(json.dumps(verdict.to_dict()))
    assert data["sessions"][0]["headline"] == verdict.headline
    rows = data["details"][sid]["endpoints"]["rows"]
    assert [r["calls"] for r in rows] == endpoint_table(sessions, sid)["calls"].tolist()
    assert set(data["endpoints"][sid]) == {f"{r['method']} {r['route']}" for r in rows}
    snapshots = data["details"][sid]["snapshots"]
    assert list(data["diffs"][sid]) == [f"{snapshots[0]['seq']}:{snapshots[-1]['seq']}"]


def test_one_session_of_several_and_unknown_ids(logs: Path, all_report: str) -> None:
    sessions = load(logs)
    sid = sessions.session_ids[1]
    data = _embedded(render_report(sessions, sid))
    assert [row["session_id"] for row in data["sessions"]] == [sid]
    assert [row["session_id"] for row in _embedded(all_report)["sessions"]] == sessions.session_ids
    with pytest.raises(ValueError, match="session_id must be one of"):
        render_report(sessions, "nope")


def test_a_route_cannot_break_out_of_the_data_block(logs: Path) -> None:
    page = render_report(load(logs / "breakout"))
    assert BREAKOUT not in page and "</script><script>alert" not in page
    assert page.count("</script>") == 2
    assert BREAKOUT in data_routes(_embedded(page))
    assert script_json({"r": "<&>\u2028"}) == '{"r":"\\u003c\\u0026\\u003e\\u2028"}'


def data_routes(data: dict[str, Any]) -> list[str]:
    return [row["route"] for detail in data["details"].values() for row in detail["endpoints"]["rows"]]


def test_report_policy_allows_only_the_inlined_code(leaking_report: str) -> None:
    page = leaking_report
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert policy and "default-src 'none'" in policy.group(1)
    assert "script-src 'sha256-" in policy.group(1) and "unsafe" not in policy.group(1)


@pytest.fixture(scope="module")
def chromium(browser_context: Any) -> Any:
    """The shared Chromium of conftest (its tabs here record problems themselves)."""
    return browser_context


def _open(chromium: Any, path: Path) -> tuple[Any, list[str], list[str], list[str]]:
    page = chromium.new_page()
    problems: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and problems.append(msg.text))
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return page, problems, requests, dialogs


@needs_chromium
def test_report_renders_offline_in_chromium(chromium: Any, logs: Path, leaking_report: str, tmp_path: Path) -> None:
    sessions = load(logs / "leaking")
    out = tmp_path / "report.html"
    out.write_text(leaking_report, encoding="utf-8")
    page, problems, requests, _ = _open(chromium, out)
    verdict = diagnose(sessions)
    assert page.get_by_test_id("verdict-headline").inner_text() == verdict.headline
    assert page.get_by_test_id("endpoint-row").count() == len(endpoint_table(sessions))
    assert int(page.get_by_test_id("rss-chart").get_attribute("data-points")) > 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "ui_report.png"))
    page.locator("[data-testid=endpoint-row][data-route='/items/{item_id}']").click()
    expect(page.get_by_test_id("endpoint-name")).to_have_text("GET /items/{item_id}")
    assert page.get_by_test_id("endpoint-histogram").get_by_test_id("histogram-bar").count() > 0
    page.wait_for_selector("[data-testid=site-diff]")
    assert page.get_by_test_id("site-diff").locator("td[data-key=site]").first.inner_text() == "/app/main.py:42"
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert problems == []  # a CSP violation would be a console error
    page.close()


@needs_chromium
def test_report_shows_a_breakout_route_as_text(chromium: Any, logs: Path, tmp_path: Path) -> None:
    out = tmp_path / "breakout.html"
    out.write_text(render_report(load(logs / "breakout")), encoding="utf-8")
    page, problems, _, dialogs = _open(chromium, out)
    row = page.locator("[data-testid=endpoint-row]").filter(has_text="alert(1)")
    assert row.get_attribute("data-route") == BREAKOUT
    row.click()
    expect(page.get_by_test_id("endpoint-name")).to_have_text(f"GET {BREAKOUT}")
    page.wait_for_timeout(200)
    assert dialogs == [] and problems == [] and page.locator("script").count() == 2
    page.close()


@needs_chromium
def test_report_of_several_sessions_lists_them(chromium: Any, logs: Path, all_report: str, tmp_path: Path) -> None:
    out = tmp_path / "all.html"
    sessions = load(logs)
    out.write_text(all_report, encoding="utf-8")
    page, problems, _, dialogs = _open(chromium, out)
    assert page.get_by_test_id("session-row").count() == len(sessions.session_ids)
    assert page.get_by_test_id("compare-button").count() == 0  # no comparison offline
    xss = next(r for r in _embedded(out.read_text())["sessions"] if r["host"] == "<b>evil-host</b>")
    page.locator(f"[data-testid=session-row][data-session-id='{xss['session_id']}']").click()
    page.wait_for_selector("body[data-page=session][data-ready=true]")
    assert page.locator(f"[data-testid=endpoint-row][data-route='{XSS_ROUTE}']").count() == 1
    assert dialogs == [] and problems == []
    page.close()


@needs_chromium
def test_report_compare_html_opens_on_the_comparison_offline(chromium: Any, logs: Path, tmp_path: Path) -> None:
    from leakyspanner.cli import main

    out = tmp_path / "fixcheck.html"
    assert main(["-q", "report", str(logs / "leaking"), "--compare", str(logs / "fixed"), "--html", str(out)]) == 0
    page, problems, requests, _ = _open(chromium, out)
    page.wait_for_selector("body[data-page=compare][data-ready=true]")
    expect(page.get_by_test_id("fixcheck-status")).to_have_text("FIXED")
    assert int(page.get_by_test_id("compare-chart").get_attribute("data-points")) > 0
    assert page.get_by_test_id("compare-button").count() == 0  # no other pairs offline
    page.get_by_test_id("back").click()
    page.wait_for_selector("body[data-page=sessions][data-ready=true]")
    assert page.get_by_test_id("session-row").count() == 2
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert problems == []
    page.close()
