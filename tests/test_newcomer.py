"""A newcomer's first hour, scripted: their own small app, defaults only, a minute of traffic, Ctrl-C, report.

The test writes a FastAPI app of the kind a user would (one endpoint keeps
about 10 KB per call in a module-level list, two keep nothing), attaches
``leakyspanner(app)`` with no argument but ``log_path``, serves it with real
uvicorn on 127.0.0.1 and sends 60 s of steady mixed traffic from several
concurrent clients, the leaker not the busiest endpoint. Then SIGINT, as
Ctrl-C would, and ``leakyspanner report`` in a subprocess, as typed in a shell.

The truth for the per-call figure is what the app keeps per call, measured
by the app itself: ``sys.getsizeof`` of the kept string plus its list slot
(8 bytes). The same app with the leak removed runs at the same time, in a
second server, and must exit 0: two one-minute runs in one minute of wall time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

SECONDS = 60.0
CLIENTS = 4  # per server
#: Share of each client's requests per endpoint: the leaker is not the busiest.
MIX = (("GET", "/products", 0.55), ("GET", "/health", 0.25), ("POST", "/orders", 0.20))

APP = '''\
import sys

from fastapi import FastAPI

from leakyspanner import leakyspanner

app = FastAPI()
leakyspanner(app, log_path={logs!r})

_audit_trail = []
_catalogue = [{{"id": i, "name": f"product {{i}}", "price": i * 1.5}} for i in range(50)]


@app.get("/products")
def products():
    return _catalogue[:20]


@app.get("/health")
async def health():
    return {{"ok": True}}


@app.post("/orders")
async def orders():
    receipt = "r" * 10_000 + str(len(_audit_trail))  # LEAK: allocated here, kept in _audit_trail
    kept_bytes = sys.getsizeof(receipt) + 8  # the string and its slot in the list
    {keep}
    return {{"kept_bytes": kept_bytes}}
'''
LEAK = "_audit_trail.append(receipt)"
NO_LEAK = "kept_bytes = 0  # fixed: the receipt is no longer kept"


def _leak_line(source: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if "# LEAK" in line)


class _Clients:
    """``CLIENTS`` threads per server, each cycling through ``MIX`` with keep-alive, for ``SECONDS``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls: dict[str, int] = {}
        self.kept_bytes: list[int] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._plan = [(m, p) for m, p, share in MIX for _ in range(round(share * 20))]
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self, deadline: float) -> None:
        self._deadline = deadline
        for t in self._threads:
            t.start()

    def join(self) -> None:
        for t in self._threads:
            t.join(timeout=60)

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = index * 7
            while time.monotonic() < self._deadline:
                method, path = self._plan[i % len(self._plan)]
                i += 1
                try:
                    r = client.request(method, path)
                    r.raise_for_status()
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{method} {path}: {exc!r}")
                    continue
                with self._lock:
                    key = f"{method} {path}"
                    self.calls[key] = self.calls.get(key, 0) + 1
                    if path == "/orders":
                        self.kept_bytes.append(r.json()["kept_bytes"])
                time.sleep(0.004)  # a steady pace, not a flood: the host has two cores


def _report(logs: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    exe = Path(sys.executable).with_name("leakyspanner")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "leakyspanner"]
    return subprocess.run([*cmd, "report", str(logs)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)


def _retained_per_call(report: str, endpoint: str) -> float:
    """The retained/call figure of ``endpoint``'s row in the report's endpoint table, in bytes."""
    units = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}
    row = re.search(rf"^\s+{re.escape(endpoint)}\s+\d+\s+([\d.]+) (B|KB|MB|GB)\s", report, re.MULTILINE)
    assert row, f"no table row for {endpoint} in the report:\n{report}"
    return float(row.group(1)) * units[row.group(2)]


def test_newcomer_app_with_defaults_names_the_leak_and_its_fix_passes(tmp_path: Path, serve) -> None:
    servers, clients = {}, {}
    for name, keep in (("leaky", LEAK), ("fixed", NO_LEAK)):
        servers[name] = serve(APP.format(logs=str(tmp_path / f"{name}_logs"), keep=keep), module=f"shop_{name}")
    try:
        deadline = time.monotonic() + SECONDS
        for name, server in servers.items():
            clients[name] = _Clients(server.url)
            clients[name].start(deadline)
        for c in clients.values():
            c.join()
    finally:
        outputs = {name: server.stop(timeout=60) for name, server in servers.items()}
    for name, server in servers.items():
        assert server.proc.returncode == 0 or server.proc.returncode == -signal.SIGINT, outputs[name]
        assert not clients[name].failures, clients[name].failures[:5]
    calls = clients["leaky"].calls
    assert calls["POST /orders"] < calls["GET /products"], calls

    leaky = _report(tmp_path / "leaky_logs", tmp_path)
    fixed = _report(tmp_path / "fixed_logs", tmp_path)
    text = leaky.stdout
    assert leaky.returncode == 1, f"exit {leaky.returncode}\n{text}\n{leaky.stderr}"
    headline = text.split("\n\n")[1]
    assert "POST /orders" in headline, text
    line = _leak_line((tmp_path / "shop_leaky.py").read_text())
    assert f"shop_leaky.py:{line}" in text, f"leak line shop_leaky.py:{line} not named:\n{text}"
    kept = clients["leaky"].kept_bytes
    truth = sum(kept) / len(kept)
    figure = _retained_per_call(text, "POST /orders")
    assert 0.75 * truth <= figure <= 1.25 * truth, f"{figure:.0f} B per call against {truth} kept:\n{text}"

    assert fixed.returncode == 0, f"exit {fixed.returncode} with the leak removed:\n{fixed.stdout}\n{fixed.stderr}"
