"""Run the demo for real: a uvicorn subprocess, generated traffic, the session files it wrote."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .. import discovery
from ..errors import LeakyspannerError
from ..progress import ticking
from ..schema import JSONL_SUFFIX, LEVELS, LOG_SUFFIX, STEM_PREFIX

__all__ = ["DemoError", "DemoResult", "run_demo"]

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 20.0


class DemoError(LeakyspannerError):
    """The demo server could not be started or produced no session."""


@dataclass
class DemoResult:
    """Where one demo run left its files, and the traffic it sent."""

    log_dir: Path
    jsonl_files: list[Path] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    traffic: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _session_files(log_dir: Path) -> dict[Path, float]:
    """The sessions in ``log_dir`` itself (see :mod:`leakyspanner.discovery`) with their mtimes."""
    files: dict[Path, float] = {}
    for path in discovery.session_files(log_dir, depth=1):
        if path.name.startswith(STEM_PREFIX):
            with contextlib.suppress(OSError):
                files[path] = path.stat().st_mtime
    return files


def _tail(output: IO[bytes], limit: int = 3000) -> str:
    output.flush()
    output.seek(0)
    return output.read().decode("utf-8", "replace")[-limit:]


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, workers: int, output: IO[bytes]) -> None:
    """Poll ``/health`` until it answers (and, briefly, until every worker has answered)."""
    import httpx

    deadline = time.monotonic() + _START_TIMEOUT_S
    pids: set[int] = set()
    first_ok: float | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the demo server exited with code {proc.returncode} before answering:\n{_tail(output)}")
        try:  # a fresh connection each time, so the workers take turns answering
            response = httpx.get(url, timeout=1.0, trust_env=False, headers={"Connection": "close"})
            if response.status_code == 200:
                pids.add(int(response.json().get("pid", 0)))
                first_ok = first_ok or time.monotonic()
        except (httpx.HTTPError, ValueError):
            pass
        if first_ok is not None and (len(pids) >= workers or time.monotonic() - first_ok > 3.0):
            return
        time.sleep(0.1)
    raise DemoError(f"the demo server did not answer {url} within {_START_TIMEOUT_S:.0f} s:\n{_tail(output)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (uvicorn's graceful shutdown writes the summaries), then kill after a timeout."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # the server runs in its own process group: this reaches its workers too
        with contextlib.suppress(ProcessLookupError):
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signal.SIGKILL)
            else:  # pragma: no cover - Windows
                proc.kill()
        proc.wait()


def run_demo(
    seconds: float = 30,
    fixed: bool = False,
    level: str = "mid",
    log_dir: str | os.PathLike[str] = "./leakyspanner_logs/demo",
    workers: int = 1,
    port: int | None = None,
    quiet: bool = False,
    *,
    interval_seconds: float = 1.0,
) -> DemoResult:
    """Serve the demo app with uvicorn, drive traffic for ``seconds``, stop it, return its files.

    The server is a real subprocess (``python -m uvicorn leakyspanner.demo.app:app``
    on 127.0.0.1) with ``workers`` processes, each writing its own session into
    ``log_dir``. It is always stopped, even when traffic fails or on Ctrl-C.
    Progress goes to stderr unless ``quiet``.
    """
    from .traffic import run_traffic

    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"seconds must be a number > 0, got {seconds!r}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError(f"port must be an integer in 1..65535 or None for a free one, got {port!r}")

    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    directory = Path(log_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LEAKYSPANNER_DEMO_FIXED": "1" if fixed else "0",
        "LEAKYSPANNER_DEMO_LEVEL": level,
        "LEAKYSPANNER_DEMO_LOG_DIR": str(directory),
        "LEAKYSPANNER_DEMO_INTERVAL": str(interval_seconds),
        # the package must be importable in the server even when it is not installed
        "PYTHONPATH": os.pathsep.join(p for p in (str(_PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    command = [
        sys.executable, "-m", "uvicorn", "leakyspanner.demo.app:app", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log",
    ]
    before = _session_files(directory)
    variant = "fixed" if fixed else "leaking"
    say(f"leakyspanner demo: serving the {variant} app at {url} ({workers} worker(s), level={level})")
    traffic: dict[str, Any] = {}
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_healthy(proc, f"{url}/health", workers, output)
            say(f"leakyspanner demo: sending traffic for {seconds:g} s ...")
            with ticking(seconds, "traffic", enabled=False if quiet else None):
                traffic = run_traffic(url, seconds)
            say(f"leakyspanner demo: {traffic['requests']} requests, {traffic['errors']} errors; stopping the server")
        finally:
            _stop(proc)
        if proc.returncode not in (0, -signal.SIGINT):
            say(f"leakyspanner demo: server exited with code {proc.returncode}:\n{_tail(output)}")

    after = _session_files(directory)
    new = sorted(p for p, mtime in after.items() if p not in before or mtime > before[p])
    result = DemoResult(
        log_dir=directory,
        jsonl_files=[p for p in new if p.suffix == JSONL_SUFFIX],
        log_files=[p for p in new if p.suffix == LOG_SUFFIX],
        traffic=traffic,
    )
    if not result.jsonl_files:
        raise DemoError(f"the demo server wrote no session into {directory}; is the directory writable?")
    return result
