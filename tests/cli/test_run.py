"""``leakyspanner run -- <server>``: real servers on 127.0.0.1 serving apps that never import
leakyspanner; every worker writes its own session with the requests it served counted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from leakyspanner.cli import main

FASTAPI_APP = '''
from fastapi import FastAPI

app = FastAPI()

@app.get("/items/{i}")
async def item(i: int):
    return {"i": i}

@app.get("/health")
async def health():
    return {"ok": True}
'''

PLAIN_APP = '''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"plain"})
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_and_stop(tmp_path: Path, app_source: str, server: list[str], *, requests: int, stop_signal: int,
                    options: tuple[str, ...] = (), health_requests: int = 0) -> tuple[list[dict], str]:
    """Start ``leakyspanner run [options] -- server``, send requests on fresh connections, stop it;
    returns each session's header and summary, and what the server printed."""
    (tmp_path / "app.py").write_text(app_source)
    port = _free_port()
    command = [arg.replace("{port}", str(port)) for arg in server]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAKYSPANNER_")}
    out = tmp_path / "server.out"
    with open(out, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "leakyspanner", "run", "--log-path", "logs", "--interval-seconds", "0.5",
             *options, "--", *command],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"server exited early:\n{out.read_text()}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/items/0", timeout=5).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"server did not answer in 60 s:\n{out.read_text()}"
                time.sleep(0.1)
            for i in range(1, requests):  # a new connection each: workers share the listening socket
                assert httpx.get(f"http://127.0.0.1:{port}/items/{i}", timeout=30).status_code == 200
            for _ in range(health_requests):
                assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, stop_signal)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    sessions = []
    for path in sorted((tmp_path / "logs").glob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        kinds = {r["kind"]: r for r in records}
        sessions.append({"header": kinds["header"], "summary": kinds.get("summary")})
    return sessions, out.read_text()


def _check_sessions(sessions: list[dict], output: str, *, workers: int, requests: int) -> None:
    assert len(sessions) == workers, output
    assert len({s["header"]["pid"] for s in sessions}) == workers, "one session per worker process"
    assert all(s["summary"] is not None for s in sessions), f"every worker wrote its summary:\n{output}"
    assert sum(s["summary"]["requests_total"] for s in sessions) == requests, output
    assert output.count("leakyspanner run: attached to") == workers, output


UVICORN = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "{port}", "--no-access-log"]


def test_uvicorn_app_is_profiled_without_code_changes_and_options_reach_capture(tmp_path):
    sessions, output = _serve_and_stop(tmp_path, FASTAPI_APP, UVICORN, requests=12, stop_signal=signal.SIGINT,
                                       options=("--level", "basic", "--exclude-paths", "/health"),
                                       health_requests=5)
    _check_sessions(sessions, output, workers=1, requests=12)  # /health excluded
    config = sessions[0]["header"]["config"]
    assert config["level"] == "basic" and config["exclude_paths"] == ["/health"]


def test_uvicorn_with_two_workers_writes_a_session_per_worker(tmp_path):
    sessions, output = _serve_and_stop(tmp_path, FASTAPI_APP, [*UVICORN, "--workers", "2"], requests=30,
                                       stop_signal=signal.SIGINT)
    _check_sessions(sessions, output, workers=2, requests=30)


def test_gunicorn_with_uvicorn_workers_writes_a_session_per_worker(tmp_path):
    pytest.importorskip("gunicorn")
    server = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
              "-b", "127.0.0.1:{port}", "app:app"]
    sessions, output = _serve_and_stop(tmp_path, FASTAPI_APP, server, requests=30, stop_signal=signal.SIGTERM)
    _check_sessions(sessions, output, workers=2, requests=30)


def test_hypercorn_serving_a_plain_asgi_callable_is_profiled(tmp_path):
    pytest.importorskip("hypercorn")
    server = [sys.executable, "-m", "hypercorn", "-b", "127.0.0.1:{port}", "app:app"]
    sessions, output = _serve_and_stop(tmp_path, PLAIN_APP, server, requests=10, stop_signal=signal.SIGINT)
    _check_sessions(sessions, output, workers=1, requests=10)


def test_bad_option_values_and_a_missing_command_exit_2_naming_them(capsys):
    assert main(["run", "--interval-seconds", "soon", "--", sys.executable, "-c", "pass"]) == 2
    assert "interval_seconds must be a number, got 'soon'" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "give the server command after --" in capsys.readouterr().err
    assert main(["run", "--", "no-such-server-xyz"]) == 2
    assert "command not found: 'no-such-server-xyz'" in capsys.readouterr().err


def test_the_bootstrap_runs_the_sitecustomize_it_shadows(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import builtins\nbuiltins.SHADOWED_RAN = True\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "leakyspanner", "run", "--", sys.executable, "-c",
         "import builtins, sys; print(getattr(builtins, 'SHADOWED_RAN', False), "
         "any(type(f).__name__ == '_AfterImport' for f in sys.meta_path))"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "True"], result.stderr
