"""README's "Use it in your tests" and "Run without code changes" examples, run as written."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from leakyspanner.capture import heap

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _block(section: str, language: str) -> str:
    match = re.search(rf"^```{language}\n(.*?)^```", section, re.M | re.S)
    assert match, f"no {language} block"
    return match.group(1)


@pytest.mark.skipif(not heap.AVAILABLE, reason=f"sampled heap engine: {heap.UNAVAILABLE_REASON}")
def test_use_it_in_your_tests_example_fails_as_the_readme_says(tmp_path):
    section = _section("Use it in your tests")
    (tmp_path / "test_orders.py").write_text(_block(section, "python"))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_orders.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    promised = re.search(r"`(POST /orders .*?)`", section).group(1)
    for piece in promised.split(" ... "):  # sizes are estimates: any size where the README shows one
        piece = re.sub(r"\d+(\.\d+)? KB", "<size>", piece)
        pattern = re.escape(piece).replace(re.escape("<size>"), r"\d+(\.\d+)? (B|KB)")
        assert re.search(pattern, result.stdout), f"{piece!r} not in:\n{result.stdout}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


APP = '''
from fastapi import FastAPI

app = FastAPI()

@app.get("/items/{i}")
async def item(i: int):
    return {"i": i}
'''


def test_run_without_code_changes_example_profiles_an_app_that_never_imports_leakyspanner(tmp_path):
    line = next(ln for ln in _block(_section("Run without code changes"), "bash").splitlines()
                if ln.startswith("leakyspanner run"))
    port = _free_port()
    argv = [sys.executable, "-m", *[str(port) if a == "8000" else a for a in shlex.split(line, comments=True)]]
    assert "--" in argv and "app:app" in argv
    (tmp_path / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAKYSPANNER_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # the venv's uvicorn
    with open(tmp_path / "server.out", "w") as out:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (tmp_path / "server.out").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/items/0", timeout=5).status_code == 200:
                        break
                assert time.monotonic() < deadline, (tmp_path / "server.out").read_text()
                time.sleep(0.1)
            for i in range(1, 7):
                assert httpx.get(f"http://127.0.0.1:{port}/items/{i}", timeout=30).json() == {"i": i}
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    sessions = list((tmp_path / "leakyspanner_logs").glob("*.jsonl"))
    assert len(sessions) == 1, (tmp_path / "server.out").read_text()
    records = [json.loads(x) for x in sessions[0].read_text().splitlines() if x.startswith("{")]
    summary = next(r for r in records if r["kind"] == "summary")
    header = next(r for r in records if r["kind"] == "header")
    assert summary["requests_total"] == 7 and header["config"]["level"] == "mid"
