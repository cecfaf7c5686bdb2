"""The dashboard is fair to every session, bounded in memory, and serves only what is under PATH."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from session_files import write_session

from leakyspanner.commands import inspect
from leakyspanner.ui import server
from leakyspanner.ui.server import Dashboard, create_app

BIG, SMALL = "leakyspanner_20260601_100000", "leakyspanner_20260601_110000"


def _two_sessions(root: Path) -> Path:
    write_session(root / "big", BIG, samples=30, start_ts=1_780_000_000.0)
    write_session(root / "small", SMALL, samples=12, leak_bytes=0, start_ts=1_780_003_600.0)
    return root


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


# ------------------------------------------------------------------ fairness

def test_a_slow_first_view_of_one_session_does_not_block_another(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = server.verdict_or_error
    entered, release = threading.Event(), threading.Event()

    def slow_for_big(sessions: Any, session_id: str) -> Any:
        if session_id == BIG:  # the 24-hour session: its verdict takes a while
            entered.set()
            release.wait(20)
        return real(sessions, session_id)

    monkeypatch.setattr(server, "verdict_or_error", slow_for_big)
    dash = Dashboard(_two_sessions(tmp_path))  # its warm-up thread starts on BIG first (oldest)
    try:
        big, _ = _in_thread(lambda: dash.detail(BIG))
        assert entered.wait(10)
        for call in (lambda: dash.detail(SMALL), lambda: dash.endpoint(SMALL, "GET", "/items/{item_id}"),
                     lambda: dash.endpoint(SMALL, "GET", "/never-seen"), lambda: dash.diff(SMALL, 0, 999),
                     lambda: dash.version(BIG), lambda: dash.session_ids):
            small, result = _in_thread(call)
            small.join(10)
            assert not small.is_alive(), "a request about another session waited for the slow one"
        assert result[0] == [BIG, SMALL]
        assert big.is_alive()
    finally:
        release.set()
    big.join(20)
    assert dash.detail(BIG) is not None


def test_unknown_endpoints_and_snapshots_are_not_cached_and_lookups_are_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_session(tmp_path, SMALL, samples=30)
    dash = Dashboard(tmp_path, follow=False)
    for i in range(300):
        assert dash.endpoint(SMALL, "GET", f"/random/{i}") is None
        assert dash.diff(SMALL, i, i + 1000) is None
    entry = dash._entry(SMALL)
    assert entry is not None and len(entry.lookups) == 0
    assert not any(key[0] in ("endpoint", "diff") for key in entry.derived)
    assert dash.endpoint(SMALL, "POST", "/upload") is not None
    assert len(entry.lookups) == 1
    monkeypatch.setattr(server, "MAX_LOOKUPS", 3)
    seqs = [s["seq"] for s in dash.detail(SMALL)["snapshots"]]  # type: ignore[index]
    for a, b in zip(seqs, seqs[1:]):
        assert dash.diff(SMALL, a, b) is not None
    assert len(entry.lookups) == 3
    assert list(entry.lookups)[-1] == ("diff", SMALL, seqs[-2], seqs[-1])  # most recent kept


def test_problems_stay_one_line_per_file_and_bad_files_are_read_again_only_when_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_session(tmp_path, SMALL, samples=10)
    bad = tmp_path / "leakyspanner_20260601_090000.jsonl"
    bad.write_text("this is not json\n")
    reads: list[Path] = []
    real_load = server.load
    monkeypatch.setattr(server, "load", lambda path, **kw: reads.append(Path(path)) or real_load(path, **kw))
    now = [1000.0]
    dash = Dashboard(tmp_path, clock=lambda: now[0])
    for _ in range(5):
        now[0] += 2
        listing = dash.sessions()
        assert len(listing["problems"]) == 1 and "is not a leakyspanner log" in listing["problems"][0]
    assert reads.count(bad) == 1
    bad.write_text("still not json, but longer\n")
    now[0] += 2
    assert len(dash.sessions()["problems"]) == 1 and reads.count(bad) == 2
    write_session(tmp_path, bad.stem, samples=5, start_ts=1_770_000_000.0)  # repaired
    now[0] += 2
    listing = dash.sessions()
    assert listing["problems"] == [] and {r["session_id"] for r in listing["sessions"]} == {SMALL, bad.stem}


def test_a_file_that_breaks_on_reload_is_not_read_on_every_request(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    writer = write_session(tmp_path, SMALL, samples=10, complete=False)
    now = [1000.0]
    dash = Dashboard(tmp_path, clock=lambda: now[0])
    reads: list[Path] = []
    real_load = server.load
    monkeypatch.setattr(server, "load", lambda path, **kw: reads.append(Path(path)) or real_load(path, **kw))
    writer.path.write_text("garbage now\n")
    for _ in range(4):
        now[0] += 5
        assert dash.detail(SMALL) is not None  # the last good load is still served
    assert len(reads) == 1


# ------------------------------------------------------------------ only PATH

def test_a_symlink_to_a_session_outside_path_is_not_served(tmp_path: Path) -> None:
    outside, root = tmp_path / "outside", tmp_path / "root"
    write_session(outside, "leakyspanner_20260601_080000", samples=8)
    write_session(outside / "dir", "leakyspanner_20260601_070000", samples=8)
    write_session(root, SMALL, samples=8)
    (root / "leakyspanner_20260601_080000.jsonl").symlink_to(outside / "leakyspanner_20260601_080000.jsonl")
    (root / "linked").symlink_to(outside / "dir", target_is_directory=True)
    (root / "alias.jsonl").symlink_to(root / f"{SMALL}.jsonl")  # inside PATH: fine
    dash = Dashboard(root)
    assert set(dash.session_ids) == {SMALL, SMALL + "'"}
    problems = dash.sessions()["problems"]
    assert len(problems) == 2 and all("links outside" in p for p in problems)
    assert dash.detail("leakyspanner_20260601_080000") is None


def test_a_session_id_with_a_slash_is_served_under_one_path_segment(tmp_path: Path) -> None:
    writer = write_session(tmp_path, SMALL, samples=10)
    lines = writer.path.read_text().split("\n", 1)
    header = json.loads(lines[0])
    header["session_id"] = "team/a/../b"
    writer.path.write_text(json.dumps(header) + "\n" + lines[1])
    app = create_app(tmp_path)
    listed = [row["session_id"] for row in _get_json(app, "/api/sessions")["sessions"]]
    assert listed == ["team_a_.._b"]
    for sid in listed:  # as a browser asks for it (encodeURIComponent) and uvicorn hands it over (decoded)
        status, body = _asgi(app, unquote("/api/sessions/" + quote(sid, safe="")))
        assert status == 200 and json.loads(body)["session"]["session_id"] == sid


# ------------------------------------------------------------------ hosts and websockets

def _asgi(app: Any, path: str, scope_type: str = "http",
          host: bytes = b"127.0.0.1:8765") -> tuple[int | str, bytes]:
    scope = {"type": scope_type, "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http" if scope_type == "http" else "ws", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": [(b"host", host)], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8765), "subprotocols": []}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""} if scope_type == "http" else {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    if scope_type == "websocket":
        return sent[0]["type"], b""
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _get_json(app: Any, path: str) -> Any:
    status, body = _asgi(app, path)
    assert status == 200, body
    return json.loads(body)


def test_a_websocket_with_a_bad_host_is_closed_not_an_error(tmp_path: Path) -> None:
    write_session(tmp_path, SMALL, samples=5)
    app = create_app(tmp_path)
    assert _asgi(app, "/", "websocket", host=b"evil.example")[0] == "websocket.close"


@pytest.fixture
def uvicorn_on(tmp_path: Path) -> Iterator[Callable[[str], int]]:
    import uvicorn

    servers: list[tuple[Any, threading.Thread, socket.socket]] = []
    write_session(tmp_path / "logs", SMALL, samples=5)

    def start(host: str) -> int:
        sock = socket.socket()
        sock.bind((host, 0))
        app = create_app(tmp_path / "logs", allowed_hosts=inspect.allowed_hosts(host))
        uv = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
        thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not uv.started and time.monotonic() < deadline:
            time.sleep(0.02)
        servers.append((uv, thread, sock))
        return int(sock.getsockname()[1])

    yield start
    for uv, thread, sock in servers:
        uv.should_exit = True
        thread.join(10)
        sock.close()


def _raw(host: str, port: int, request: str) -> str:
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(request.encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b"Upgrade" in request.encode():
                break
    return data.decode("latin-1").split("\r\n", 1)[0]


def test_a_real_websocket_upgrade_with_a_bad_host_is_refused_with_403(uvicorn_on: Callable[[str], int]) -> None:
    port = uvicorn_on("127.0.0.1")
    upgrade = ("GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert _raw("127.0.0.1", port, upgrade.format(host="evil.example")).split()[1] == "403"


def test_a_dashboard_bound_to_another_loopback_address_answers_its_url(uvicorn_on: Callable[[str], int]) -> None:
    port = uvicorn_on("127.0.0.2")
    url = inspect.dashboard_url("127.0.0.2", port)
    assert httpx.get(url + "api/sessions", timeout=30).status_code == 200
    assert httpx.get(url, headers={"Host": f"127.0.0.3:{port}"}, timeout=30).status_code == 400


def test_inspect_host_127_0_0_2_prints_a_url_that_answers(tmp_path: Path) -> None:
    write_session(tmp_path, SMALL, samples=5)
    proc = subprocess.Popen([sys.executable, "-m", "leakyspanner", "inspect", str(tmp_path), "--host", "127.0.0.2",
                             "--port", "0", "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        url = re.search(r"http://127\.0\.0\.2:\d+/", first)
        assert url, first
        assert httpx.get(url.group(0), timeout=30).status_code == 200
        assert "Warning" not in proc.stdout.readline()  # type: ignore[union-attr]  # loopback: no warning
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def test_allowed_hosts_name_the_bound_address() -> None:
    assert inspect.allowed_hosts("127.0.0.1") is None and inspect.allowed_hosts("::1") is None
    assert inspect.allowed_hosts("127.0.0.2") == ["127.0.0.2"]
    assert inspect.allowed_hosts("::ffff:127.0.0.2") == ["[::ffff:127.0.0.2]"]
    assert inspect.allowed_hosts("0.0.0.0") == ["*"] and inspect.allowed_hosts("10.1.2.3") == ["10.1.2.3"]


def test_header_fields_of_the_wrong_type_neither_break_the_list_nor_the_html_report(tmp_path: Path) -> None:
    from leakyspanner.analysis import load
    from leakyspanner.ui import render_report

    writer = write_session(tmp_path, SMALL, samples=10)
    head, rest = writer.path.read_text().split("\n", 1)
    header = json.loads(head)
    header.update(host={"name": "x"}, pid=[1], level=5, start_ts="soon", python=3.11, platform=None,
                  config=[1], baseline_rss_bytes="100MB", cgroup_memory_limit_bytes=-1)
    writer.path.write_text(json.dumps(header) + "\n" + rest)
    app = create_app(tmp_path)
    rows = _get_json(app, "/api/sessions")["sessions"]
    assert [(r["host"], r["pid"], r["level"]) for r in rows] == [(None, None, None)]
    assert _get_json(app, f"/api/sessions/{SMALL}")["session"]["session_id"] == SMALL
    with pytest.warns(Warning):
        sessions = load(tmp_path)
    assert "<!doctype html>" in render_report(sessions).lower()
