"""Shared plumbing: result files, tables, the in-process ASGI driver, servers, wrk, the seed venv."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SEED_VENV = BENCH_DIR / ".seed-venv"
SEED_WHEEL = Path("/tmp/seed/leakyspanner-0.1.2-py3-none-any.whl")
SEED_REQUIREMENT = "leakyspanner==0.1.2"


# -- results ---------------------------------------------------------------
def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    versions = {}
    for name in ("fastapi", "starlette", "pydantic", "uvicorn", "httptools", "leakyspanner"):
        with contextlib.suppress(Exception):
            from importlib import metadata

            versions[name] = metadata.version(name)
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "ts": round(time.time(), 3), "argv": sys.argv, "versions": versions,
        # other work on the machine skews wall-clock numbers; ratios within one run are still fair
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` (with the environment) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(), **data}, indent=1) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile)."""
    return percentile(values, 25), median(values), percentile(values, 75)


def ratio(value: float, base: float) -> float | None:
    return round(value / base, 3) if base else None


# -- in-process ASGI -------------------------------------------------------
def http_scope(method: str, path: str, body: bytes = b"", root_path: str = "") -> dict[str, Any]:
    """A scope as uvicorn builds it (ASGI spec 2.3, so streaming listens for disconnect)."""
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 54321), "scheme": "http",
        "method": method, "root_path": root_path, "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": headers, "state": {},
    }


async def call_asgi(app: Any, scope: dict[str, Any], body: bytes = b"") -> tuple[int, int]:
    """Run one request through ``app``; returns (status, body bytes), draining streamed bodies.

    ``receive`` hands over the body once and then blocks like a live
    connection, so a streaming response is not cut short by a disconnect.
    """
    sent = False
    status = 0
    size = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # blocks until cancelled
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    await app(dict(scope), receive, send)
    return status, size


async def paired_windows(apps_by_name: dict[str, Any], requests: dict[str, tuple[dict[str, Any], bytes]],
                         counts: dict[str, int], rounds: int, rng: Any) -> dict[str, dict[str, list[float]]]:
    """CPU µs per request of each app, kind and round, the apps' windows in a shuffled order.

    Each window runs ``counts[kind]`` requests and then drains the app's
    profiler (if any) on this thread, so it pays for its own records: the
    profilers' writer threads must be stopped by the caller.
    """
    cpu: dict[str, dict[str, list[float]]] = {name: {kind: [] for kind in requests} for name in apps_by_name}
    for _ in range(rounds):
        for kind, (scope, body) in requests.items():
            order = list(apps_by_name)
            rng.shuffle(order)
            for name in order:
                app = apps_by_name[name]
                profiler = getattr(app.state, "profiler", None)
                c0 = time.process_time()
                for _ in range(counts[kind]):
                    await call_asgi(app, scope, body)
                if profiler is not None:
                    profiler._writer.drain()
                cpu[name][kind].append((time.process_time() - c0) / counts[kind] * 1e6)
    return cpu


# -- servers and wrk ---------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    """A uvicorn process serving ``module:factory`` on 127.0.0.1."""

    proc: subprocess.Popen[bytes]
    port: int
    log_dir: str
    stderr_path: str
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (graceful: lifespan shutdown runs), wait, kill only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def pin_prefix(cpu: int) -> list[str]:
    """``taskset -c cpu`` when there are two CPUs or more to split between server and wrk."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def start_server(
    python: str, factory: str, env: dict[str, str], *, http_impl: str = "httptools",
    ready_path: str = "/tiny", ready_timeout: float = 60.0, graceful_s: int = 3,
) -> Server:
    """Start ``python -m uvicorn factory --factory`` in ``benchmarks/`` and wait until it answers.

    The working directory is ``benchmarks/`` so that the seed venv imports its
    own leakyspanner rather than this checkout's.
    """
    port = free_port()
    log_dir = env.get("BENCH_LOG_DIR") or tempfile.mkdtemp(prefix="leakyspanner-bench-")
    fd, stderr_path = tempfile.mkstemp(prefix="bench-server-", suffix=".log")
    # the server (and its writer/sampler threads) on CPU 0, wrk on CPU 1: on a 2-core box
    # an extra server thread otherwise preempts the load generator and req/s drops more
    # than the server's CPU cost explains
    cmd = pin_prefix(0) + [python, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--no-access-log", "--loop", "asyncio", "--http", http_impl,
           "--log-level", "warning", "--timeout-graceful-shutdown", str(graceful_s)]
    full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "BENCH_LOG_DIR": log_dir, **env}
    full_env.pop("PYTHONPATH", None)
    with os.fdopen(fd, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=BENCH_DIR, env=full_env, stdout=err, stderr=err)
    server = Server(proc, port, log_dir, stderr_path)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server {factory} {env.get('BENCH_CONFIG')} exited {proc.returncode}:\n"
                               + Path(stderr_path).read_text()[-3000:])
        try:
            if http_get(port, ready_path, timeout=2)[0] == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server {env.get('BENCH_CONFIG')} not ready after {ready_timeout}s")
        time.sleep(0.05)


def process_cpu_s(pid: int) -> float:
    """CPU seconds used so far by every thread of ``pid`` (schedstat: ns resolution)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def wait_idle(pid: int, timeout_s: float = 15.0, busy: float = 0.15) -> float:
    """Wait until ``pid`` uses under ``busy`` of a core (requests left over by wrk are done).

    Returns the seconds waited.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        cpu0 = process_cpu_s(pid)
        time.sleep(0.1)
        if process_cpu_s(pid) - cpu0 < busy * 0.1:
            break
    return round(time.monotonic() - t0, 2)


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot parse wrk time {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(url: str, duration_s: int, *, connections: int = 32, threads: int = 1,
            script: str | None = None) -> dict[str, Any]:
    """One bounded wrk run; returns requests/s, p50/p99 latency (s), errors."""
    cmd = pin_prefix(1) + [wrk_path() or "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
           "--timeout", "10s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration_s + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rps or "50" not in lat:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {
        "rps": float(rps.group(1)), "requests": int(total.group(1)) if total else None,
        "p50_s": _seconds(lat["50"]), "p99_s": _seconds(lat["99"]),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
    }


@contextlib.contextmanager
def post_script(body: bytes) -> Iterator[str]:
    """A temporary wrk lua script that POSTs ``body`` as JSON."""
    fd, path = tempfile.mkstemp(prefix="bench-post-", suffix=".lua")
    with os.fdopen(fd, "w") as f:
        f.write('wrk.method = "POST"\n'
                f"wrk.body = '{body.decode()}'\n"
                'wrk.headers["Content-Type"] = "application/json"\n')
    try:
        yield path
    finally:
        os.unlink(path)


# -- the seed venv ---------------------------------------------------------
def _pins() -> list[str]:
    """The web stack pinned to this venv's versions, so only leakyspanner differs."""
    from importlib import metadata

    pins = []
    for name in ("fastapi", "starlette", "pydantic", "uvicorn", "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{name}=={metadata.version(name)}")
    return pins


def seed_python(create: bool = True) -> str | None:
    """Python of ``benchmarks/.seed-venv`` (leakyspanner 0.1.2), created when missing and allowed."""
    python = SEED_VENV / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m; assert m.version('leakyspanner') == '0.1.2'"]
    if python.exists() and subprocess.run(check, cwd=BENCH_DIR, capture_output=True).returncode == 0:
        return str(python)
    if not create:
        return None
    print(f"creating the seed venv in {SEED_VENV} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(SEED_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    attempts = [[SEED_REQUIREMENT, *_pins()], [SEED_REQUIREMENT, "fastapi", "uvicorn", "httptools"]]
    if SEED_WHEEL.exists():
        attempts.append([str(SEED_WHEEL), "fastapi", "uvicorn", "httptools"])
    for packages in attempts:
        if subprocess.run(pip + packages, cwd=BENCH_DIR).returncode == 0:
            break
    if subprocess.run(check, cwd=BENCH_DIR, capture_output=True).returncode != 0:
        print("could not install leakyspanner 0.1.2 in the seed venv; seed configs skipped", flush=True)
        return None
    return str(python)


def http_impls() -> list[str]:
    """uvicorn HTTP implementations importable here, httptools first."""
    impls = []
    with contextlib.suppress(ImportError):
        import httptools  # noqa: F401

        impls.append("httptools")
    return impls + ["h11"]
