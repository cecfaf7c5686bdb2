"""Shared fixtures: a real uvicorn server, and checks that nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netutil import ROOT, free_port  # noqa: F401  (re-exported for the tests that import them from here)


@pytest.fixture(autouse=True)
def _no_profiler_left_running() -> Iterator[None]:
    """Every test must stop the profilers it started and leave tracemalloc as it found it."""
    was_tracing = tracemalloc.is_tracing()
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("leakyspanner-")]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, f"profiler threads left running: {alive}"
    if not was_tracing and tracemalloc.is_tracing():
        tracemalloc.stop()
        pytest.fail("tracemalloc was left tracing")
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    plt.close("all")


class Server:
    """A uvicorn subprocess serving ``module:app`` from a directory."""

    def __init__(self, directory: Path, module: str, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        full_env = {**os.environ, "PYTHONPATH": f"{directory}{os.pathsep}{ROOT}", **(env or {})}
        # Output goes to a file: a pipe nobody drains fills up and blocks the server.
        self._log_path = directory / f".{module}-{self.port}.out"
        self._log = open(self._log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", f"{module}:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log", *extra_args],
            cwd=directory, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, text=True,
        )
        self.output = ""
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self._log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("server did not start in 30 s")

    def stop(self, timeout: float = 20) -> str:
        """SIGINT, as Ctrl-C would; returns everything the server printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        self.output = self._log_path.read_text()
        return self.output


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``serve(source)`` writes ``source`` as app module in tmp_path and serves it."""
    servers: list[Server] = []

    def start(source: str, module: str = "appmod", extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Server:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        server = Server(tmp_path, module, extra_args, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
