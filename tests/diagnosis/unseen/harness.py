"""Serve one scenario under a real uvicorn, drive it, measure RSS from outside, score the verdict.

    from unseen.harness import run
    result = run("global_list", level="mid", shape="steady", duration_s=30)

The app is a separate OS process (``python -m uvicorn``) that attaches
leakyspanner itself from environment variables (see ``apps/_profiling.py``).
Eight closed-loop ``httpx.AsyncClient``s on 127.0.0.1 send requests whose
endpoints are drawn from the scenario's weights: fixed for the whole run
(``steady``) or drifting, the leaker's share ramping up and down twice
(``varying``). Meanwhile a thread reads the server's ``/proc/PID/statm`` every
0.2 s with the leaker's completed calls at that moment: the outside truth.
Then SIGINT, ``load()``, ``diagnose()``, and a plain-dict result with a
pass/fail per criterion.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from .apps._profiling import ENV_ALLOCATOR, ENV_INTERVAL_S, ENV_LEVEL, ENV_LOG_PATH
from .scenarios import Scenario, scenario

__all__ = ["CRITERIA", "SHAPES", "TOLERANCE", "leak_lines", "outside_bytes_per_call", "run", "score", "weights"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SHAPES = ("steady", "varying")
TOLERANCE = 0.25            # bytes per call within +-25% of the outside figure
CRITERIA = ("endpoint", "bytes", "line", "kind", "not_leaking")
_POLL_S = 0.2
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SITE_RE = re.compile(r"(\S+?\.py):(\d+)")


# -- the leaking lines ----------------------------------------------------------------------
def _module_files(module: str) -> list[Path]:
    path = HERE.joinpath(*module.split(".")).with_suffix(".py")
    if path.parent == HERE / "apps":
        return [path]
    return sorted(path.parent.glob("*.py"))  # an app package: its service modules too


def leak_lines(s: Scenario) -> list[tuple[str, int]]:
    """(file, line) of every ``# LEAK`` comment in the scenario's app."""
    out = []
    for path in _module_files(s.module):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "# LEAK" in line:
                out.append((str(path), number))
    return out


# -- the server ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """``python -m uvicorn module:app`` on a free port; stopped with SIGINT as Ctrl-C would."""

    def __init__(self, module: str, workdir: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.out"
        path = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        full_env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **env}
        with open(self.log_path, "w") as log:  # a file, not a pipe: nobody drains a pipe
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", f"{module}:app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--no-access-log", "--log-level", "warning"],
                cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return  # uvicorn binds only after the app's startup has run
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout_s:.0f} s:\n{self.log_path.read_text()}")

    def rss_bytes(self) -> int | None:
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout_s: float = 30) -> float:
        """SIGINT and wait; returns the seconds shutdown took (killed after ``timeout_s``)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - started


# -- traffic ---------------------------------------------------------------------------------------
def weights(s: Scenario, shape: str, elapsed: float, duration_s: float) -> list[float]:
    """Endpoint weights at ``elapsed``: fixed (steady) or the leaker's share ramping up and down twice."""
    base = [e.weight for e in s.endpoints]
    if shape == "steady":
        return base
    # f goes 0.25 -> 1.75 -> 0.25 twice; the transient allocator moves the other way, the
    # second-busiest endpoint drifts slowly, the busiest stays put and stays the busiest
    phase = 0.5 - 0.5 * math.cos(4 * math.pi * elapsed / duration_s)
    f = 0.25 + 1.5 * phase
    names = [e.name for e in s.endpoints]
    out = list(base)
    ranked = sorted(range(len(names)), key=lambda i: base[i], reverse=True)
    ceiling = 0.9 * base[ranked[0]]
    if s.measured in names:
        i = names.index(s.measured)
        out[i] = min(out[i] * f, ceiling)
    if s.transient in names:
        out[names.index(s.transient)] *= 2.0 - f
    if len(ranked) > 1 and names[ranked[1]] not in (s.measured, s.transient):
        out[ranked[1]] = min(out[ranked[1]] * (0.6 + 0.8 * elapsed / duration_s), ceiling)
    return out


class _Traffic:
    """Closed-loop clients; counts completed calls by endpoint (the leaker's read by the RSS thread)."""

    def __init__(self, s: Scenario, url: str, shape: str, duration_s: float, clients: int,
                 max_requests: int, seed: int) -> None:
        self.s, self.url, self.shape = s, url, shape
        self.duration_s, self.clients, self.max_requests, self.seed = duration_s, clients, max_requests, seed
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.measured_done = 0          # read from the RSS thread: an int swap is atomic under the GIL
        self.sent = 0
        self.started = 0.0

    async def _worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        names = [e.name for e in self.s.endpoints]
        deadline = self.started + self.duration_s
        async with httpx.AsyncClient(base_url=self.url, timeout=60, trust_env=False) as client:
            while (now := time.monotonic()) < deadline and self.sent < self.max_requests:
                mix = weights(self.s, self.shape, now - self.started, self.duration_s)
                endpoint = self.s.endpoints[rng.choices(range(len(names)), mix)[0]]
                self.sent += 1
                call = endpoint.build(rng, self.sent)
                try:
                    response = await client.request(call.method, call.url, params=call.params, json=call.json,
                                                    content=call.content, headers=call.headers)
                    ok = response.status_code < 400
                except httpx.HTTPError as exc:
                    ok = False
                    self.errors[f"{endpoint.name}: {type(exc).__name__}"] += 1
                if not ok:
                    self.errors[endpoint.name] += 1
                    continue
                self.counts[endpoint.name] += 1
                if endpoint.name == self.s.measured:
                    self.measured_done += 1

    async def run(self) -> None:
        self.started = time.monotonic()
        await asyncio.gather(*(self._worker(i) for i in range(self.clients)))


class _RssPoller(threading.Thread):
    """Reads the server's RSS every 0.2 s with the measured endpoint's completed calls at that moment."""

    def __init__(self, server: _Server, traffic: _Traffic) -> None:
        super().__init__(name="unseen-rss-poller", daemon=True)
        self.server, self.traffic = server, traffic
        self.readings: list[tuple[float, int, int]] = []
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(_POLL_S):
            rss = self.server.rss_bytes()
            if rss is not None and self.traffic.started:
                self.readings.append((time.monotonic() - self.traffic.started, rss, self.traffic.measured_done))

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


# -- outside truth ------------------------------------------------------------------------------
def _theil_sen(x: np.ndarray, y: np.ndarray) -> float:
    """Median pairwise slope (scipy's when it is installed)."""
    if len(x) < 3 or np.ptp(x) <= 0:
        return math.nan
    try:
        from scipy.stats import theilslopes
    except ImportError:
        i, j = np.triu_indices(len(x), k=1)
        dx = x[j] - x[i]
        ok = dx > 0
        return float(np.median((y[j] - y[i])[ok] / dx[ok])) if ok.any() else math.nan
    return float(theilslopes(y, x).slope)


def outside_bytes_per_call(readings: list[tuple[float, int, int]], duration_s: float,
                           window_s: float | None = None) -> dict[str, float]:
    """The RSS growth per call of the measured endpoint over the last 2/3 of the traffic.

    RSS floors (the lowest reading per ``window_s`` window, so transient
    allocations in flight do not count) against the endpoint's completed calls,
    Theil-Sen: ``bytes_per_call``. Also the brief's form, the floors' slope over
    time divided by the mean call rate (``bytes_per_call_by_time``): the same
    under a steady mix, biased when the leaker's rate drifts.
    """
    nan = {"bytes_per_call": math.nan, "bytes_per_call_by_time": math.nan, "rss_growth_bytes": math.nan,
           "calls": 0.0, "windows": 0.0, "rss_start_bytes": math.nan, "rss_end_bytes": math.nan}
    if not readings:
        return nan
    t, rss, calls = (np.array(c, dtype=float) for c in zip(*readings))
    keep = (t >= duration_s / 3) & (t <= duration_s)
    t, rss, calls = t[keep], rss[keep], calls[keep]
    if len(t) < 6:
        return nan
    window_s = window_s or max(0.6, duration_s / 30)
    bins = ((t - t[0]) // window_s).astype(int)
    ft, frss, fcalls = [], [], []
    for b in np.unique(bins):
        idx = np.flatnonzero(bins == b)
        k = idx[np.argmin(rss[idx])]
        ft.append(t[k])
        frss.append(rss[k])
        fcalls.append(calls[k])
    ft_a, frss_a, fcalls_a = np.array(ft), np.array(frss), np.array(fcalls)
    made = float(calls[-1] - calls[0])
    span = float(t[-1] - t[0])
    per_call = _theil_sen(fcalls_a, frss_a) if made > 0 else math.nan
    by_time = _theil_sen(ft_a, frss_a) / (made / span) if made > 0 and span > 0 else math.nan
    fifth = max(1, len(frss_a) // 5)
    return {"bytes_per_call": per_call, "bytes_per_call_by_time": by_time,
            "rss_growth_bytes": float(np.median(frss_a[-fifth:]) - np.median(frss_a[:fifth])),
            "calls": made, "windows": float(len(ft_a)),
            "rss_start_bytes": float(frss_a[0]), "rss_end_bytes": float(frss_a[-1])}


# -- scoring ------------------------------------------------------------------------------------
def _endpoint_name(e: Any) -> str:
    return f"{getattr(e, 'method', '')} {getattr(e, 'route', '')}".strip()


def _first_named(verdict: Any) -> Any:
    """The endpoint the verdict names first: its suspect (the new attributions when there are any)."""
    suspect = getattr(verdict, "suspect", None)
    if suspect is not None:
        return suspect
    for field_name in ("attributions", "endpoints"):
        rows = getattr(verdict, field_name, None) or []
        named = next((e for e in rows if getattr(e, "significant", False)), None)
        if named is not None:
            return named
    return None


def _strings(value: Any) -> list[str]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _site_lines(site: Any) -> set[tuple[str, int]]:
    """Every (file, line) a growing site names: the allocating line and any app frame / caused-by field."""
    out: set[tuple[str, int]] = set()
    file, line = getattr(site, "file", None), getattr(site, "line", None)
    if isinstance(file, str) and isinstance(line, int):
        out.add((file, line))
    for text in _strings(site):
        for path, number in _SITE_RE.findall(text):
            out.add((path, int(number)))
    return out


def _same_file(a: str, b: str) -> bool:
    with contextlib.suppress(OSError):
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def _line_rank(verdict: Any, lines: list[tuple[str, int]]) -> int | None:
    """1-based rank of the first growing site that names one of ``lines``."""
    for rank, site in enumerate(getattr(verdict, "sites", None) or [], 1):
        named = _site_lines(site)
        if any(n == ln and _same_file(f, lf) for f, n in named for lf, ln in lines):
            return rank
    return None


def score(s: Scenario, verdict: Any, outside: dict[str, float], lines: list[tuple[str, int]]) -> dict[str, Any]:
    """Per criterion True/False, or None where it does not apply."""
    named = _first_named(verdict)
    first = _endpoint_name(named) if named is not None else None
    per_call = getattr(named, "retained_bytes_per_call", None)
    if per_call is None and named is not None:
        per_call = getattr(named, "bytes_per_call", None)
    truth = outside.get("bytes_per_call", math.nan)
    ratio = per_call / truth if per_call is not None and truth and truth > 0 and math.isfinite(truth) else None
    kinds = [getattr(k, "kind", str(k)) for k in getattr(verdict, "kinds", None) or []]
    rank = _line_rank(verdict, lines)
    leaking = bool(getattr(verdict, "leaking", False)) or getattr(verdict, "status", None) == "leaking"
    criteria: dict[str, bool | None] = dict.fromkeys(CRITERIA)
    if s.control:
        criteria["not_leaking"] = not leaking
    else:
        criteria["endpoint"] = first == s.leaker
        criteria["bytes"] = bool(criteria["endpoint"] and ratio is not None and abs(ratio - 1) <= TOLERANCE)
        criteria["line"] = (rank is not None and rank <= 3) if s.python_stack else None
        criteria["kind"] = bool(kinds and kinds[0] in s.kinds and s.required_kinds <= set(kinds))
    applicable = [v for v in criteria.values() if v is not None]
    return {
        "status": getattr(verdict, "status", None), "leaking": leaking, "headline": getattr(verdict, "headline", ""),
        "first_named": first, "first_named_bytes_per_call": per_call, "ratio_to_outside": ratio,
        "line_rank": rank, "kinds": kinds,
        "top_endpoints": [{"endpoint": _endpoint_name(e), "bytes_per_call": getattr(e, "retained_bytes_per_call", None),
                           "significant": getattr(e, "significant", None)}
                          for e in (getattr(verdict, "endpoints", None) or [])[:5]],
        "top_sites": [sorted(f"{Path(f).name}:{n}" for f, n in _site_lines(site))
                      + [f"{getattr(site, 'growth_bytes', 0) / 1024:.0f} KB",
                         f"{getattr(site, 'per_call_route', None)}"]
                      for site in (getattr(verdict, "sites", None) or [])[:3]],
        "criteria": criteria, "passed": all(applicable) if applicable else False,
    }


# -- one run -----------------------------------------------------------------------------------
def run(name: str | Scenario, *, level: str | None = None, shape: str = "steady", duration_s: float = 30.0,
        interval_s: float | None = None, allocator: str | None = None, clients: int = 8,
        max_requests: int = 1_000_000, seed: int = 0, workdir: str | os.PathLike[str] | None = None,
        keep_series: bool = True) -> dict[str, Any]:
    """Serve, drive and score one scenario; returns a JSON-ready record (never raises on a bad verdict).

    ``level``/``interval_s``/``allocator`` left None keep leakyspanner's
    defaults (the app calls ``leakyspanner(app, log_path=...)``).
    """
    s = name if isinstance(name, Scenario) else scenario(name)
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix=f"unseen-{s.name}-")))
        root.mkdir(parents=True, exist_ok=True)
        return _run(s, root, level, shape, duration_s, interval_s, allocator, clients, max_requests, seed,
                    keep_series)


def _run(s: Scenario, root: Path, level: str | None, shape: str, duration_s: float, interval_s: float | None,
         allocator: str | None, clients: int, max_requests: int, seed: int, keep_series: bool) -> dict[str, Any]:
    wall = time.monotonic()
    logs = root / "logs"
    env = {ENV_LOG_PATH: str(logs)}
    if level:
        env[ENV_LEVEL] = level
    if interval_s:
        env[ENV_INTERVAL_S] = str(interval_s)
    if allocator:
        env[ENV_ALLOCATOR] = allocator
    record: dict[str, Any] = {
        "scenario": s.name, "what": s.what, "level": level or "default", "shape": shape, "duration_s": duration_s,
        "interval_s": interval_s, "allocator": allocator, "clients": clients, "leaker": s.leaker,
        "control": s.control, "python_stack": s.python_stack, "leak_lines": [], "error": None,
    }
    lines = leak_lines(s)
    record["leak_lines"] = [f"{Path(f).relative_to(HERE)}:{n}" for f, n in lines]
    server = _Server(s.module, root, env)
    traffic = _Traffic(s, server.url, shape, duration_s, clients, max_requests, seed)
    poller = _RssPoller(server, traffic)
    try:
        poller.start()
        asyncio.run(traffic.run())
    finally:
        poller.stop()
        record["shutdown_s"] = round(server.stop(), 2)
    record["requests"] = dict(traffic.counts.most_common())
    record["errors"] = dict(traffic.errors)
    record["requests_per_s"] = round(sum(traffic.counts.values()) / duration_s, 1)
    record["server_exit_code"] = server.proc.returncode
    outside = outside_bytes_per_call(poller.readings, duration_s)
    record["outside"] = outside
    record["outside_bytes_per_call"] = outside["bytes_per_call"]
    if keep_series:
        step = max(1, len(poller.readings) // 300)
        record["rss_series"] = [[round(t, 2), rss, calls] for t, rss, calls in poller.readings[::step]]
    try:
        from leakyspanner.analysis import load
        from leakyspanner.analysis.diagnose import diagnose

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sessions = load(logs)
            verdict = diagnose(sessions)
        record["load_warnings"] = [str(w.message) for w in caught][:5]
        record["session_level"] = _session_level(sessions)
        record["session"] = _header(logs)
        record["profiled_endpoints"] = _profiled_endpoints(sessions)
        record.update(score(s, verdict, outside, lines))
    except Exception as exc:
        record.update({"status": "error", "error": "".join(traceback.format_exception_only(type(exc), exc)).strip(),
                       "traceback": traceback.format_exc(), "criteria": dict.fromkeys(CRITERIA), "passed": False})
        if not s.control:
            record["criteria"].update(endpoint=False, bytes=False, kind=False, line=False if s.python_stack else None)
        else:
            record["criteria"]["not_leaking"] = False
    record["wall_s"] = round(time.monotonic() - wall, 1)
    with contextlib.suppress(OSError):
        record["server_output_tail"] = (root / "server.out").read_text()[-2000:]
    return record


def _profiled_endpoints(sessions: Any) -> list[str]:
    """Every "METHOD /route" the session counted calls for: what the verdict can name."""
    for frame_name in ("intervals", "requests"):
        with contextlib.suppress(Exception):
            frame = getattr(sessions, frame_name)
            if len(frame):
                pairs = zip(frame["method"].astype(str), frame["route"].astype(str))
                return sorted({f"{m} {r}" for m, r in pairs})
    return []


def _header(logs: Path) -> dict[str, Any]:
    """What the session says about how it was captured: version, level, engine, interval."""
    for path in sorted(logs.glob("*.jsonl")):
        with contextlib.suppress(OSError, ValueError), open(path) as f:
            header = json.loads(f.readline())
            config = header.get("config") or {}
            return {"file": path.name, "schema_version": header.get("schema_version"),
                    "leakyspanner_version": header.get("leakyspanner_version"), "level": header.get("level"),
                    "heap_engine": header.get("heap_engine"), "heap_engine_note": header.get("heap_engine_note"),
                    "interval_seconds": config.get("interval_seconds"), "sample_bytes": config.get("sample_bytes")}
    return {}


def _session_level(sessions: Any) -> str | None:
    with contextlib.suppress(Exception):
        frame = sessions.sessions
        if "level" in frame:
            return str(frame["level"].iloc[0])
    return None
