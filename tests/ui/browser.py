"""Helpers for the browser tests: a real ``leakyspanner inspect`` server, and page waits and screenshots."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Screenshots go to a scratch folder; LEAKYSPANNER_UPDATE_DOCS=1 writes the ones in docs/images
# on purpose (tests never modify tracked files otherwise).
SCRATCH = Path(tempfile.gettempdir()) / "leakyspanner-ui-shots"
SHOTS = ROOT / "docs" / "images" if os.environ.get("LEAKYSPANNER_UPDATE_DOCS") else SCRATCH


class Served:
    """``python -m leakyspanner inspect PATH --port 0`` in a subprocess (from ``cwd``), and a client for its API."""

    def __init__(self, path: Path, cwd: Path | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "leakyspanner", "inspect", str(path), "--port", "0",
                                      "--no-browser"], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = self.proc.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"http://127\.0\.0\.1:\d+/", first)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"inspect did not print its URL: {first}{self.proc.stdout.read()}")  # type: ignore[union-attr]
        self.url = found.group(0)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.client.get("/api/sessions").raise_for_status()  # server up, verdicts computed

    def api(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]


def ready(page: Any, name: str) -> None:
    page.wait_for_selector(f"body[data-page={name}][data-ready=true]", timeout=30_000)


def shot(page: Any, name: str, *, docs: bool = True) -> Path:
    """A full-page screenshot ``ui_<name>.png``: in docs/images when refreshing them and ``docs``, else scratch."""
    folder = SHOTS if docs else SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ui_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
