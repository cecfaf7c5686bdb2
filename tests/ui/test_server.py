"""The dashboard API: numbers equal the analysis functions', data stays under PATH, the page is locked down."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from session_files import XSS_ROUTE, three_sessions, write_session

from leakyspanner import errors
from leakyspanner.analysis import load
from leakyspanner.analysis.diagnose import compare, diagnose
from leakyspanner.analysis.jsonvalue import json_value
from leakyspanner.analysis.paths import short_site
from leakyspanner.analysis.stats import downsample, endpoint_table, site_diff
from leakyspanner.commands import inspect
from leakyspanner.formatting import format_bytes
from leakyspanner.ui import server
from leakyspanner.ui.server import MAX_POINTS, Dashboard, create_app

BASE = "http://127.0.0.1:8765"


def _json_ready(value: Any) -> Any:
    """What a value looks like after a trip through JSON (NaN already None in the payloads)."""
    return json.loads(json.dumps(value))


def _get(app: Any, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
            return await client.get(url, **kwargs)
    return asyncio.run(go())


def _raw_asgi(app: Any, path: str, headers: list[tuple[bytes, bytes]] | None = None,
              method: str = "GET", server_addr: tuple[str, int] = ("127.0.0.1", 8765)) -> tuple[int, dict[bytes, bytes], bytes]:
    """Drive the app with a hand-made scope: the path exactly as a server would pass it, no URL clean-up."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers if headers is not None else [(b"host", b"127.0.0.1:8765")],
             "client": ("127.0.0.1", 5000), "server": server_addr}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start.get("headers", [])), body


def _records(frame: Any) -> list[dict[str, Any]]:
    return [{k: json_value(v) for k, v in row.items()} for row in frame.to_dict("records")]


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only sessions shared by the module; tests that write files use their own tmp_path."""
    return three_sessions(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def app(logs: Path) -> Any:
    return create_app(logs)


def _ids(logs: Path) -> dict[str, str]:
    sessions = load(logs)
    by_host = dict(zip(sessions.sessions["path"].map(lambda p: Path(p).parent.name), sessions.session_ids))
    return by_host


# ------------------------------------------------------------- numbers

def test_sessions_list_has_every_session_with_its_verdict(app: Any, logs: Path) -> None:
    data = _get(app, "/api/sessions").json()
    loaded = load(logs)
    assert {row["session_id"] for row in data["sessions"]} == set(loaded.session_ids)
    for row in data["sessions"]:
        verdict = diagnose(loaded, row["session_id"])
        assert (row["status"], row["headline"], row["leaking"]) == (verdict.status, verdict.headline, verdict.leaking)
        info = loaded.sessions[loaded.sessions["session_id"] == row["session_id"]].iloc[0]
        assert row["peak_rss_bytes"] == int(info["peak_rss_bytes"])
        assert row["duration_s"] == float(info["duration_s"])
        assert (row["host"], row["pid"], row["level"]) == (info["host"], int(info["pid"]), info["level"])
    starts = [row["start_ts"] for row in data["sessions"]]
    assert starts == sorted(starts, reverse=True)


def test_session_detail_numbers_are_the_analysis_functions_output(app: Any, logs: Path) -> None:
    sid = _ids(logs)["leaking"]
    detail = _get(app, f"/api/sessions/{sid}").json()
    sessions = load(logs / "leaking")
    verdict = diagnose(sessions, sid)
    shown_sites = detail["verdict"]["sites"]
    labels = [s.pop("labels") for s in shown_sites]
    assert [label["site"] for label in labels] == [short_site(g.site) for g in verdict.sites]
    assert [label["growth_bytes"] for label in labels] == [format_bytes(g.growth_bytes, signed=True)
                                                          for g in verdict.sites]
    assert detail["verdict"] == _json_ready(verdict.to_dict())
    table = endpoint_table(sessions, session_id=sid)
    rows = detail["endpoints"]["rows"]
    assert [(r["method"], r["route"]) for r in rows] == list(zip(table["method"], table["route"]))
    for row, expected in zip(rows, _records(table)):
        assert {k: row[k] for k in expected} == expected
        assert row["labels"]["avg_delta_bytes"] == format_bytes(row["avg_delta_bytes"], signed=True, missing="–")
        attributed = next(e for e in verdict.endpoints if (e.method, e.route) == (row["method"], row["route"]))
        assert row["retained_bytes_per_call"] == attributed.retained_bytes_per_call
        assert row["significant"] == attributed.significant
    shown = {c["key"] for c in detail["endpoints"]["columns"]}
    assert {"calls", "avg_delta_bytes", "p95_delta_bytes", "max_delta_bytes", "retained_bytes_per_call"} <= shown
    samples = sessions.samples
    trend = downsample(samples[["elapsed_s", "rss_bytes", "traced_bytes"]], MAX_POINTS)
    assert detail["trend"]["x"] == trend["elapsed_s"].tolist()
    assert detail["trend"]["rss_bytes"] == [int(v) for v in trend["rss_bytes"]]
    assert [a["rss_bytes"] for a in detail["alerts"]] == [int(v) for v in sessions.alerts["rss_bytes"]]
    assert detail["baseline_rss_bytes"] == int(sessions.sessions["baseline_rss_bytes"].iloc[0])
    assert detail["threshold_bytes"] == int(sessions.alerts["threshold_bytes"].iloc[0])
    assert detail["resources"]["open_fds"] == [int(v) for v in samples["open_fds"]]
    assert [s["seq"] for s in detail["snapshots"]] == [int(v) for v in sessions.snapshots["seq"]]
    assert detail["tasks_by_coro"][0] == {"coro": "RequestResponseCycle.run_asgi", "tasks": 2}


def test_long_session_trend_is_downsampled_to_at_most_2000_points(tmp_path: Path) -> None:
    write_session(tmp_path, "leakyspanner_20260601_130000", samples=2600, routes=(("GET", "/a"),),
                  leak_route=("GET", "/a"), leak_bytes=4096)
    app = create_app(tmp_path)
    sid = "leakyspanner_20260601_130000"
    detail = _get(app, f"/api/sessions/{sid}").json()
    assert 2 < len(detail["trend"]["x"]) <= MAX_POINTS
    assert len(detail["resources"]["x"]) <= MAX_POINTS
    expected = downsample(load(tmp_path).samples[["elapsed_s", "rss_bytes", "traced_bytes"]], MAX_POINTS)
    assert detail["trend"]["x"] == expected["elapsed_s"].tolist()


def test_endpoint_distribution_counts_every_request(app: Any, logs: Path) -> None:
    sid = _ids(logs)["leaking"]
    data = _get(app, f"/api/sessions/{sid}/endpoint", params={"method": "POST", "route": "/upload"}).json()
    sessions = load(logs / "leaking")
    row = endpoint_table(sessions, session_id=sid).query("route == '/upload'")
    assert data["row"] == {k: v for k, v in _records(row)[0].items() if k != "session_id"}
    hist = data["metrics"]["rss_delta_bytes"]
    assert hist["count"] == data["row"]["calls"]
    assert sum(b["count"] for b in hist["bins"]) + hist["below"] + hist["above"] == hist["count"]
    requests = sessions.requests[sessions.requests["route"] == "/upload"]
    assert hist["min"] == int(requests["rss_delta_bytes"].min())
    assert hist["max"] == int(requests["rss_delta_bytes"].max())
    assert all(b["hi"] > b["lo"] for b in hist["bins"])
    verdict = diagnose(sessions, sid)
    expected = next(e for e in verdict.endpoints if e.route == "/upload")
    assert data["attribution"] == _json_ready(expected.to_dict())


def test_endpoint_errors(app: Any, logs: Path) -> None:
    sid = _ids(logs)["leaking"]
    assert _get(app, f"/api/sessions/{sid}/endpoint", params={"method": "GET", "route": "/nope"}).status_code == 404
    assert _get(app, f"/api/sessions/{sid}/endpoint", params={"method": "GET"}).status_code == 400


def test_snapshot_diff_is_site_diff(app: Any, logs: Path) -> None:
    sid = _ids(logs)["leaking"]
    detail = _get(app, f"/api/sessions/{sid}").json()
    a, b = detail["snapshots"][0]["seq"], detail["snapshots"][-1]["seq"]
    data = _get(app, f"/api/sessions/{sid}/diff", params={"a": a, "b": b}).json()
    expected = site_diff(load(logs / "leaking"), a, b, session_id=sid, top=20)
    labels = [row.pop("labels") for row in data["rows"]]
    assert data["rows"] == _records(expected)
    assert labels[0]["size_diff_bytes"] == format_bytes(data["rows"][0]["size_diff_bytes"], signed=True)
    assert data["rows"][0]["site"] == "/app/main.py:42"
    assert _get(app, f"/api/sessions/{sid}/diff", params={"a": a, "b": 999}).status_code == 404
    assert _get(app, f"/api/sessions/{sid}/diff", params={"a": "x", "b": b}).status_code == 400


def test_compare_is_the_fix_check(app: Any, logs: Path) -> None:
    ids = _ids(logs)
    data = _get(app, "/api/compare", params={"before": ids["leaking"], "after": ids["fixed"]}).json()
    expected = compare(load(logs / "leaking"), load(logs / "fixed"), before_id=ids["leaking"], after_id=ids["fixed"])
    assert data["fixcheck"] == _json_ready(expected.to_dict())
    assert data["before"]["session"]["session_id"] == ids["leaking"]
    assert len(data["after"]["trend"]["x"]) == 40
    assert _get(app, "/api/compare", params={"before": ids["leaking"], "after": "nope"}).status_code == 404
    assert _get(app, "/api/compare", params={"before": ids["leaking"]}).status_code == 400


def test_script_route_is_returned_as_json_data(app: Any, logs: Path) -> None:
    sid = _ids(logs)["xss"]
    response = _get(app, f"/api/sessions/{sid}")
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert XSS_ROUTE in [row["route"] for row in response.json()["endpoints"]["rows"]]
    data = _get(app, f"/api/sessions/{sid}/endpoint", params={"method": "GET", "route": XSS_ROUTE})
    assert data.status_code == 200 and data.json()["route"] == XSS_ROUTE
    index = _get(app, "/").text
    assert "evil-host" not in index and "alert(" not in index  # the page carries no data, only code


# -------------------------------------------------------------- security

def test_unknown_session_ids_are_never_paths(app: Any) -> None:
    for sid in ("nope", "..%2f..%2fetc%2fpasswd", "%2e%2e", "leaking"):
        response = _get(app, f"/api/sessions/{sid}")
        assert response.status_code == 404, sid
    status, _, _ = _raw_asgi(app, "/api/sessions/../../../etc/passwd")
    assert status == 404


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/../../errors.py", "/static/..%2fserver.py", "/static/%2e%2e/server.py",
    "/static/..%2f..%2ferrors.py", "/static//etc/passwd", "/static/%2Fetc%2Fpasswd", "/static/..\\server.py",
    "/static/../static/../server.py", "/static/nope.js", "/static/", "/static/app.js%00.css",
])
def test_static_path_traversal_is_refused(app: Any, path: str) -> None:
    from urllib.parse import unquote

    for as_sent in (path, unquote(path)):  # percent-decoded, as uvicorn hands it over, and raw
        status, headers, body = _raw_asgi(app, as_sent)
        assert status == 404, as_sent
        assert b"import" not in body and b"root:" not in body
        assert headers[b"x-content-type-options"] == b"nosniff"


def test_static_files_and_page_are_served_with_a_strict_policy(app: Any) -> None:
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/app.css", "text/css"),
                       ("/api/sessions", "application/json")):
        response = _get(app, path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), path
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    page = _get(app, "/").text
    assert "<script>" not in page and "http://" not in page.replace('xmlns="http://www.w3.org', "")


def test_no_cors_headers_even_for_cross_origin_requests(app: Any) -> None:
    evil = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    for method, path in (("GET", "/api/sessions"), ("OPTIONS", "/api/sessions"), ("GET", "/"),
                         ("OPTIONS", "/static/app.js")):
        async def go(method: str = method, path: str = path) -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
                return await client.request(method, path, headers=evil)
        response = asyncio.run(go())
        assert not [h for h in response.headers if h.lower().startswith("access-control-")], (method, path)


@pytest.mark.parametrize(("host", "ok"), [
    ("127.0.0.1:8765", True), ("localhost:8765", True), ("[::1]:8765", True), ("LOCALHOST:8765", True),
    ("evil.example:8765", False), ("127.0.0.1:9999", False), ("127.0.0.1", False), ("", False),
    ("127.0.0.1.evil.example:8765", False), ("localhost.:8765", False),
])
def test_host_header_must_name_loopback_and_our_port(app: Any, host: str, ok: bool) -> None:
    headers = [(b"host", host.encode())] if host else []
    status, response_headers, _ = _raw_asgi(app, "/static/app.css", headers=headers)
    assert (status == 200) is ok, host
    assert b"access-control-allow-origin" not in response_headers


def test_other_hosts_only_when_allowed_explicitly(logs: Path) -> None:
    app = create_app(logs, allowed_hosts=["10.1.2.3"])
    assert _raw_asgi(app, "/", [(b"host", b"10.1.2.3:8765")])[0] == 200
    assert _raw_asgi(app, "/", [(b"host", b"evil.example:8765")])[0] == 400
    anything = create_app(logs, allowed_hosts=["*"])
    assert _raw_asgi(anything, "/", [(b"host", b"evil.example")])[0] == 200


@pytest.fixture
def real_server(logs: Path) -> Iterator[int]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(create_app(logs), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield sock.getsockname()[1]
    uv.should_exit = True
    thread.join(10)
    sock.close()


def _raw_http(port: int, target: str, host: str) -> tuple[int, str]:
    # generous: the first answer diagnoses every session, and a loaded shared machine is slow
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")


def test_real_server_refuses_traversal_and_foreign_hosts(real_server: int) -> None:
    port = real_server
    assert _raw_http(port, "/api/sessions", f"127.0.0.1:{port}")[0] == 200
    assert _raw_http(port, "/api/sessions", f"localhost:{port}")[0] == 200
    assert _raw_http(port, "/api/sessions", "attacker.example")[0] == 400  # DNS rebinding
    for target in ("/static/../server.py", "/static/..%2fserver.py", "/static/%2e%2e%2fhtml.py",
                   "/static/../../../../etc/passwd", "/static/%2fetc%2fpasswd", "/api/sessions/..%2f..%2fetc"):
        status, body = _raw_http(port, target, f"127.0.0.1:{port}")
        assert status == 404 and "import" not in body and "root:" not in body, target


# ----------------------------------------------------------------- cache

def test_files_load_once_and_reload_only_when_they_grow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = write_session(tmp_path, "leakyspanner_20260601_140000", samples=10, complete=False)
    calls: list[Path] = []
    real_load = server.load
    monkeypatch.setattr(server, "load", lambda path, **kw: calls.append(Path(path)) or real_load(path, **kw))
    now = [1000.0]
    dash = Dashboard(tmp_path, clock=lambda: now[0])
    sid = "leakyspanner_20260601_140000"
    first = dash.detail(sid)
    assert first is not None and first["session"]["samples"] == 10 and len(calls) == 1
    now[0] += 5
    dash.detail(sid)
    dash.sessions()
    assert len(calls) == 1  # unchanged file: served from the cache
    writer.samples(5)
    now[0] += 5
    grown = dash.detail(sid)
    assert grown is not None and grown["session"]["samples"] == 15 and len(calls) == 2
    assert grown["version"] != first["version"]
    write_session(tmp_path / "later", "leakyspanner_20260601_150000", samples=8)
    now[0] += 5
    assert {r["session_id"] for r in dash.sessions()["sessions"]} == {sid, "leakyspanner_20260601_150000"}


def test_reloads_are_throttled_and_off_without_follow(tmp_path: Path) -> None:
    writer = write_session(tmp_path, "leakyspanner_20260601_140000", samples=10, complete=False)
    now = [1000.0]
    follow = Dashboard(tmp_path, clock=lambda: now[0])
    still = Dashboard(tmp_path, follow=False, clock=lambda: now[0])
    sid = "leakyspanner_20260601_140000"
    writer.samples(3)
    assert follow.detail(sid)["session"]["samples"] == 10  # type: ignore[index]  # loaded < 1 s ago
    now[0] += 30
    assert follow.detail(sid)["session"]["samples"] == 13  # type: ignore[index]
    assert still.detail(sid)["session"]["samples"] == 10  # type: ignore[index]


def test_poll_with_current_version_gets_204(tmp_path: Path) -> None:
    write_session(tmp_path, "leakyspanner_20260601_140000", samples=10, complete=False)
    app = create_app(tmp_path)
    sid = "leakyspanner_20260601_140000"
    version = _get(app, f"/api/sessions/{sid}").json()["version"]
    assert _get(app, f"/api/sessions/{sid}", params={"since": version}).status_code == 204
    assert _get(app, f"/api/sessions/{sid}", params={"since": "old"}).status_code == 200


def test_torn_last_line_of_a_live_file_is_not_an_error(tmp_path: Path) -> None:
    writer = write_session(tmp_path, "leakyspanner_20260601_140000", samples=10, complete=False)
    with writer.path.open("a") as f:
        f.write('{"kind":"sample","ts":17')  # the writer is mid-line
    app = create_app(tmp_path)
    assert _get(app, "/api/sessions/leakyspanner_20260601_140000").json()["session"]["samples"] == 10


def test_a_path_without_sessions_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(errors.NotALogError, match="holds no leakyspanner session"):
        create_app(tmp_path)
    with pytest.raises(errors.NotALogError, match="does not exist"):
        create_app(tmp_path / "missing")


# --------------------------------------------------------------- inspect

def _inspect_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    inspect.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_inspect_without_sessions_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from leakyspanner.cli import main

    with pytest.raises(errors.NotALogError):
        inspect.run(_inspect_args(str(tmp_path), "--no-browser"))
    assert main(["inspect", str(tmp_path), "--no-browser"]) == 2
    assert "holds no leakyspanner session" in capsys.readouterr().err


def test_inspect_prints_url_opens_browser_and_warns_off_loopback(
        logs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import webbrowser

    import uvicorn

    def fake_run(self: Any, sockets: Any = None) -> None:
        self.started = True
        time.sleep(0.3)  # the browser opens once the server has started

    opened: list[str] = []
    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(webbrowser, "open", opened.append)
    assert inspect.run(_inspect_args(str(logs), "--port", "0")) == 0
    out = capsys.readouterr().out
    url = opened[0]
    assert url.startswith("http://127.0.0.1:") and url in out and "3 sessions" in out
    assert "Warning" not in out
    assert inspect.run(_inspect_args(str(logs), "--port", "0", "--host", "0.0.0.0", "--no-browser")) == 0
    out = capsys.readouterr().out
    assert "Warning: bound to 0.0.0.0" in out and "file paths and allocation sites" in out
    assert len(opened) == 1


def test_loopback_detection_and_urls() -> None:
    assert all(inspect.is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(inspect.is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.com"))
    assert inspect.dashboard_url("::1", 80) == "http://[::1]:80/"
    assert inspect.dashboard_url("0.0.0.0", 8787) == "http://127.0.0.1:8787/"


def test_public_names_are_exported() -> None:
    import leakyspanner.ui as ui
    from leakyspanner.ui import html

    for module in (ui, server, html, inspect):
        assert sorted(module.__all__) == module.__all__ or module is ui
        assert all(hasattr(module, name) for name in module.__all__)
