"""Owns a session's use of the sampled heap engine (started by the profiler) and its ``heap`` records (sampler thread).

Starting the engine, tagging requests, and turning its live samples into
``heap`` records grouped by endpoint and site.

The engine (``_heap``, C) samples allocations by bytes and remembers, for each
sampled allocation still alive, its Python stack and the request it was made
in (a :class:`RequestTag` in a context variable, so tasks a request spawns
inherit it). This module resolves what the engine stores as addresses (the
route object) and stack ids into route templates and ``file:line`` sites, and
finds for each stack the first frame in the application's own code.

One engine per process: several profilers in one process (app factories)
share it, and it stops when the last of them releases it.
"""

from __future__ import annotations

import contextvars
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from typing import Any

from ..schema import BACKGROUND_ROUTE, HEAP_ENDPOINT_FIELDS, HEAP_SITE_FIELDS, UNMATCHED_ROUTE
from . import heap

__all__ = ["HeapSites", "TAG_VAR", "engine_available"]

#: The request the running code serves; set by the middleware while the engine runs.
TAG_VAR: contextvars.ContextVar[Any] = contextvars.ContextVar("leakyspanner_request", default=None)

#: Site rows kept per heap record (largest live bytes first). Each row is one
#: (endpoint, allocating line, app line) group; live samples bound them anyway
#: (about one per ``sample_bytes`` of live heap), this caps a huge heap's record.
_MAX_SITE_ROWS = 400

_CAPTURE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_prefixes() -> tuple[str, ...]:
    """Directories whose files are not the application's: stdlib and installed packages."""
    paths = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            path = sysconfig.get_paths().get(name)
        except Exception:
            path = None
        if path:
            paths.add(os.path.abspath(path) + os.sep)
    for path in sys.path:
        if path and ("site-packages" in path or "dist-packages" in path):
            paths.add(os.path.abspath(path) + os.sep)
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        paths.add(os.path.join(os.path.abspath(prefix), "lib") + os.sep)
    return tuple(sorted(paths))


_LIBRARY_PREFIXES = _library_prefixes()


def is_app_file(filename: str) -> bool:
    """True for the application's own code: not stdlib, site-packages, frozen modules or leakyspanner's capture."""
    if not filename or filename.startswith("<") or filename.startswith(_CAPTURE_DIR):
        return False
    if "site-packages" in filename or "dist-packages" in filename:
        return False
    return not filename.startswith(_LIBRARY_PREFIXES)


def engine_available() -> tuple[bool, str | None]:
    """Whether the sampled heap engine can run here, and why not when it cannot."""
    return heap.AVAILABLE, heap.UNAVAILABLE_REASON


_engine_lock = threading.Lock()
_engine_users = 0


def _acquire(sample_bytes: int, max_frames: int) -> None:
    global _engine_users
    with _engine_lock:
        if _engine_users == 0 and not heap.running():
            heap.start(sample_bytes, max_frames, TAG_VAR)
        _engine_users += 1


def _release() -> None:
    global _engine_users
    with _engine_lock:
        if _engine_users <= 0:
            return
        _engine_users -= 1
        if _engine_users == 0:
            heap.stop()


def _after_fork_in_child() -> None:
    """A forked child inherits the running engine but no profiler owns it yet."""
    global _engine_lock
    _engine_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class HeapSites:
    """One profiler's view of the engine: start, snapshot into records, stop.

    ``route_name(route_id, method)`` names the route object whose address the
    engine stored (the profiler's route namer keeps those objects alive).
    """

    def __init__(self, sample_bytes: int, max_frames: int,
                 route_name: Callable[[int, str], str | None],
                 early_sample_bytes: int | None = None, early_s: float = 0.0) -> None:
        self.sample_bytes = sample_bytes
        self.max_frames = max_frames
        #: a denser rate for the session's first ``early_s`` seconds, so a short run has
        #: enough samples; every sample keeps the weight of the rate it was taken at
        self._early_sample_bytes = early_sample_bytes
        self._early_until = 0.0
        self._early_s = early_s
        self._route_name = route_name
        self._stacks: dict[int, tuple[str, int, str, str | None, int | None]] = {}
        self._seq = 0
        self._started = False

    def start(self) -> None:
        if not self._started:
            early = self._early_sample_bytes
            _acquire(early or self.sample_bytes, self.max_frames)
            if early:
                heap.set_sample_bytes(early)
                self._early_until = time.monotonic() + self._early_s
            self._started = True
            self._stacks.clear()

    def stop(self) -> None:
        if self._started:
            self._started = False
            _release()

    @property
    def running(self) -> bool:
        return self._started and heap.running()

    def live_bytes(self) -> int | None:
        """The engine's estimate of the live heap, for each sample (None when not running)."""
        if not self.running:
            return None
        return int(heap.stats().get("live_est_bytes", 0))

    def _site(self, stack_id: int) -> tuple[str, int, str, str | None, int | None]:
        """(file, line, function, app_file, app_line) of a stack: the allocating line
        outside leakyspanner's capture code, and the first application frame."""
        known = self._stacks.get(stack_id)
        if known is not None:
            return known
        frames = heap.stack(stack_id)
        site: tuple[str, int, str] | None = None
        app: tuple[str, int] | None = None
        for filename, line, function in frames:
            if site is None and not filename.startswith(_CAPTURE_DIR):
                site = (filename, line, function)
            if app is None and site is not None and is_app_file(filename):
                app = (filename, line)
                break
        if site is None:
            site = frames[0] if frames else ("<unknown>", 0, "")
        out = (site[0], site[1], site[2], app[0] if app else None, app[1] if app else None)
        if len(self._stacks) < 200_000:
            self._stacks[stack_id] = out
        return out

    def _endpoint(self, route_id: int, method_code: int, names: dict[tuple[int, int], tuple[str, str]]
                  ) -> tuple[str, str]:
        key = (route_id, method_code)
        hit = names.get(key)
        if hit is None:
            method = heap.METHOD_NAMES.get(method_code, "OTHER")
            if method_code == 0:
                hit = ("", BACKGROUND_ROUTE)
            elif route_id == 0:
                hit = (method, UNMATCHED_ROUTE)
            else:
                hit = (method, self._route_name(route_id, method) or UNMATCHED_ROUTE)
            names[key] = hit
        return hit

    def record(self) -> dict[str, Any] | None:
        """A schema ``heap`` record (without ts) of the live samples now, or None when not running."""
        if not self.running:
            return None
        if self._early_until and time.monotonic() >= self._early_until:
            self._early_until = 0.0
            heap.set_sample_bytes(self.sample_bytes)
        c0 = time.thread_time()
        rows = heap.snapshot()
        stats = heap.stats()
        names: dict[tuple[int, int], tuple[str, str]] = {}
        endpoints: dict[tuple[Any, ...], list[int]] = {}
        sites: dict[tuple[Any, ...], list[int]] = {}
        for route_id, method_code, stack_id, samples, count, size in rows:
            endpoint = self._endpoint(route_id, method_code, names)
            for table, key in ((endpoints, endpoint), (sites, (*endpoint, *self._site(stack_id)))):
                acc = table.get(key)
                if acc is None:
                    acc = table[key] = [0, 0, 0]
                acc[0] += size
                acc[1] += count
                acc[2] += samples
        site_rows = sorted(sites.items(), key=lambda kv: kv[1][0], reverse=True)[:_MAX_SITE_ROWS]
        record = {
            "seq": self._seq, "engine": "sampler", "sample_bytes": int(stats.get("sample_bytes", self.sample_bytes)),
            "max_frames": self.max_frames,
            "live_bytes": int(stats.get("live_est_bytes", 0)), "live_samples": int(stats.get("live_samples", 0)),
            "samples_total": int(stats.get("samples_total", 0)),
            "samples_dropped": int(stats.get("samples_dropped", 0)),
            "engine_bytes": int(stats.get("engine_bytes", 0)),
            "endpoint_fields": list(HEAP_ENDPOINT_FIELDS),
            "endpoints": [[m, r, size, count, samples]
                          for (m, r), (size, count, samples) in sorted(endpoints.items(), key=lambda kv: -kv[1][0])],
            "site_fields": list(HEAP_SITE_FIELDS),
            "sites": [[*key, size, count, samples] for key, (size, count, samples) in site_rows],
        }
        self._seq += 1
        record["cost_s"] = round(time.thread_time() - c0, 6)
        return record
