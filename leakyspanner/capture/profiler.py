"""``leakyspanner(app)``: validate, attach, start. The handle it returns."""

from __future__ import annotations

import atexit
import logging
import math
import os
import platform
import signal
import socket
import threading
import time
import tracemalloc
import weakref
from collections import deque
from json import dumps as _json_dumps  # bound at import: a test mocking json.dumps never sees us
from pathlib import Path
from typing import IO, Any

from .. import __version__
from ..schema import (
    FORMAT_NAME,
    JSONL_SUFFIX,
    LEVELS,
    LOG_SUFFIX,
    REQUEST_FIELDS,
    SCHEMA_VERSION,
    session_stem,
)
from . import heap, humanlog
from .allocations import SNAPSHOT_MODES
from .heapsites import HeapSites
from .middleware import LeakyspannerMiddleware
from .procmem import ProcessReader, cgroup_memory_limit_bytes
from .routes import METHODS, RouteNamer
from .sampler import Sampler
from .writer import OBJECT, RecordWriter

__all__ = ["Profiler", "leakyspanner"]

logger = logging.getLogger("leakyspanner")
_MB = 1024 * 1024
_MAX_FAST_COUNTERS = 4096  # (route object, method) pairs the request path finds a counter for in two lookups
#: tracemalloc frames per traceback by level. deep keeps 5: enough to climb from a
#: library's allocation to the caller in the app, at about half the per-allocation
#: cost of the seed's 10 (``traceback_frames=10`` buys that depth back).
_FRAMES = {"mid": 1, "auto": 1, "deep": 5, "basic": 0}
#: Which engine finds the allocation sites: ``auto`` takes the sampled heap engine
#: (C extension) where it is built and tracemalloc elsewhere.
ALLOCATORS = ("auto", "sampler", "tracemalloc")
#: deep samples this many times more often than mid, with more frames
_DEEP_SAMPLE_DIVISOR = 8
_DEEP_MAX_FRAMES = 64
#: The sampler's mean gap. A sample costs a stack capture (about 35k instructions at 32
#: frames, benchmarks/bench_heap_alloc.py); a tiny FastAPI request allocates ~32 KB, so
#: 256 KiB pays one per 8 requests. Estimates carry a relative error of about
#: sqrt(sample_bytes / retained bytes): 5% at 100 MB.
_SAMPLE_BYTES = 256 * 1024
#: For the first _EARLY_S of a session the gap is 64 KiB: a one-minute run that keeps
#: 10 KB per call over a few thousand calls then has hundreds of samples, not dozens.
_EARLY_SAMPLE_BYTES = 64 * 1024
_EARLY_S = 120.0


def _check_number(name: str, value: object, *, minimum: float, integer: bool = False,
                  maximum: float = 1e15) -> None:
    """Finite, in range, the right type: inf or 1e300 would kill a thread later, not fail here."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:
        expected = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {expected} >= {minimum}, got {value!r}")
    if not math.isfinite(value) or value > maximum:
        raise ValueError(f"{name} must be a finite number <= {maximum:g}, got {value!r}")


class Profiler:
    """One capture session; the handle ``leakyspanner(app)`` returns.

    ``start()``/``stop()`` are idempotent; ``stop()`` flushes and writes the
    summary. ``stats()`` gives the current numbers; ``log_file`` and
    ``jsonl_file`` are the paths written (None while capture is disabled).
    """

    def __init__(
        self,
        app: object = None,
        *,
        log_path: str | os.PathLike[str] = "./leakyspanner_logs",
        level: str = "mid",
        interval_seconds: float = 5.0,
        leak_threshold_mb: float = 50.0,
        top_stats_count: int = 10,
        snapshot_interval_seconds: float | None = None,
        snapshot_cpu_budget: float = 0.02,
        auto_window_seconds: float | None = None,
        max_buffered_records: int = 50_000,
        snapshot_mode: str = "auto",
        traceback_frames: int | None = None,
        request_rss_interval_seconds: float = 0.005,
        allocator: str = "auto",
        sample_bytes: int | None = None,
        proc_root: str = "/proc",
    ) -> None:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(map(repr, LEVELS))}; got {level!r}")
        if snapshot_mode not in SNAPSHOT_MODES:
            raise ValueError(f"snapshot_mode must be one of {', '.join(map(repr, SNAPSHOT_MODES))}; "
                             f"got {snapshot_mode!r}")
        if allocator not in ALLOCATORS:
            raise ValueError(f"allocator must be one of {', '.join(map(repr, ALLOCATORS))}; got {allocator!r}")
        if sample_bytes is not None:
            _check_number("sample_bytes", sample_bytes, minimum=1, integer=True)
        if allocator == "sampler" and not heap.AVAILABLE:
            raise ValueError(f"allocator='sampler' is not available here: {heap.UNAVAILABLE_REASON}; "
                             "use allocator='auto' (falls back to tracemalloc) or 'tracemalloc'")
        if not isinstance(log_path, (str, os.PathLike)):
            raise ValueError(f"log_path must be a str or path, got {log_path!r}")
        _check_number("interval_seconds", interval_seconds, minimum=0.01, maximum=86_400)
        _check_number("leak_threshold_mb", leak_threshold_mb, minimum=0, maximum=1e9)
        _check_number("top_stats_count", top_stats_count, minimum=1, integer=True)
        _check_number("snapshot_cpu_budget", snapshot_cpu_budget, minimum=1e-6)
        _check_number("max_buffered_records", max_buffered_records, minimum=1, integer=True)
        if traceback_frames is not None:
            _check_number("traceback_frames", traceback_frames, minimum=1, integer=True)
            if traceback_frames > 100:
                raise ValueError(f"traceback_frames must be an integer from 1 to 100, got {traceback_frames!r}")
        _check_number("request_rss_interval_seconds", request_rss_interval_seconds, minimum=0)
        if snapshot_interval_seconds is not None:
            _check_number("snapshot_interval_seconds", snapshot_interval_seconds, minimum=0.01, maximum=86_400)
        if auto_window_seconds is not None:
            _check_number("auto_window_seconds", auto_window_seconds, minimum=0.01, maximum=30 * 86_400)
        self.app = app
        self.level = level
        self.log_path = Path(log_path)
        self.interval_seconds = float(interval_seconds)
        self.leak_threshold_mb = float(leak_threshold_mb)
        self.threshold_bytes = int(leak_threshold_mb * _MB)
        self.top_stats_count = int(top_stats_count)
        self.snapshot_interval_seconds = float(snapshot_interval_seconds or interval_seconds)
        self.snapshot_cpu_budget = float(snapshot_cpu_budget)
        self.auto_window_seconds = float(auto_window_seconds or 10 * interval_seconds)
        self.snapshot_mode = snapshot_mode
        self.traceback_frames = int(traceback_frames or _FRAMES.get(level, 1) or 1)
        self.request_rss_interval_seconds = float(request_rss_interval_seconds)
        #: the engine that finds allocation sites: "sampler", "tracemalloc" or "none" (basic)
        self.heap_engine = "none" if level == "basic" else (
            "sampler" if allocator != "tracemalloc" and heap.AVAILABLE else "tracemalloc")
        self.heap_engine_note = (heap.UNAVAILABLE_REASON
                                 if level != "basic" and allocator == "auto" and not heap.AVAILABLE else None)
        default_sample = _SAMPLE_BYTES // (_DEEP_SAMPLE_DIVISOR if level == "deep" else 1)
        self.sample_bytes = int(sample_bytes or default_sample)
        #: unless sample_bytes is given, the first minutes sample denser (see _EARLY_SAMPLE_BYTES)
        self._early_sample_bytes = (None if sample_bytes else
                                    min(self.sample_bytes, _EARLY_SAMPLE_BYTES))
        self.heap_max_frames = _DEEP_MAX_FRAMES if level == "deep" else heap.DEFAULT_MAX_FRAMES
        self._proc_root = proc_root
        self._config = {
            "level": level, "log_path": str(log_path), "interval_seconds": self.interval_seconds,
            "leak_threshold_mb": self.leak_threshold_mb, "top_stats_count": self.top_stats_count,
            "snapshot_interval_seconds": self.snapshot_interval_seconds,
            "snapshot_cpu_budget": self.snapshot_cpu_budget,
            "auto_window_seconds": self.auto_window_seconds,
            "max_buffered_records": max_buffered_records, "snapshot_mode": snapshot_mode,
            "traceback_frames": self.traceback_frames,
            "request_rss_interval_seconds": self.request_rss_interval_seconds,
            "allocator": allocator, "sample_bytes": self.sample_bytes,
        }
        # read by the middleware on every request
        self._active = False
        self._tracing = False
        #: requests carry a tag for the sampled heap engine (it runs)
        self._heap_tags = False
        self._heap: HeapSites | None = None
        self._loop: Any = None
        self._inflight = 0
        self._buffer: deque[tuple[Any, ...]] = deque()
        #: endpoint counters, written by the event loop's thread only: [calls, errors,
        #: duration sum, duration max, (method, route)], cumulative except the max, which
        #: the sampler resets each interval. One per (method, route template): bounded.
        self._counters: dict[tuple[str, str], list[Any]] = {}
        #: the request path's way to them: id(route object) -> raw method -> counter, for
        #: routes whose template never depends on the raw root path (the objects are kept
        #: alive by the RouteNamer, so the ids are not reused)
        self._counts: dict[int, dict[str, list[Any]]] = {}
        self._n_fast = 0
        self._routes = RouteNamer(app)
        self._routes_written = False
        self._routes_named = 0
        self._buffer_cap = int(max_buffered_records)
        self._read_rss: Any = None
        # RSS sampling (see middleware): target measured requests per second, current probability, window
        self._rss_per_s = (1 / self.request_rss_interval_seconds
                           if self.request_rss_interval_seconds > 0 else float("inf"))
        self._rss_p = 1.0
        self._window_requests = 0
        self._window_start = self._window_end = 0.0
        self.requests_dropped = 0
        self.internal_errors = 0
        # session state
        self.reader: ProcessReader | None = None
        self.baseline_rss_bytes = 0
        self.cgroup_limit_bytes: int | None = None
        self.session_id: str | None = None
        self.log_file: Path | None = None
        self.jsonl_file: Path | None = None
        self.start_ts = 0.0
        self._files: list[IO[str]] = []
        self._writer: RecordWriter | None = None
        self._sampler: Sampler | None = None
        self._started_tracing = False
        self._errors_logged: set[str] = set()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._stopped = False
        self._platform = f"{platform.platform()} {platform.python_implementation()} {platform.python_version()}"

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> bool:
        """Open a new session; returns False (with one warning) when it cannot."""
        with self._lock:
            if self._active:
                return True
            try:
                return self._start()
            except Exception as exc:
                self._internal_error("start", exc)
                self._close_files()
                return False

    def _start(self) -> bool:
        self._stopped = False
        self._pid = os.getpid()
        try:
            self.log_path.mkdir(parents=True, exist_ok=True)
            start_ts = time.time()
            jsonl, stem = self._open_new_session_file(start_ts)
            jsonl_path = self.log_path / (stem + JSONL_SUFFIX)
            log_path = self.log_path / (stem + LOG_SUFFIX)
            self._files = [jsonl]
            log = open(log_path, "x", encoding="utf-8", errors="replace")
            self._files.append(log)
        except OSError as exc:
            self._close_files()
            logger.warning("leakyspanner: cannot write logs to %s (%s); capture is disabled, the app is unaffected",
                           self.log_path, exc)
            return False
        self.reader = ProcessReader(self._proc_root)
        self._read_rss = self.reader.read_rss_bytes
        self._rss_p, self._window_requests, self._window_start, self._window_end = 1.0, 0, 0.0, 0.0
        self.baseline_rss_bytes, baseline_vms = self.reader.read_rss_vms_bytes()
        self.cgroup_limit_bytes = cgroup_memory_limit_bytes()
        self.session_id, self.jsonl_file, self.log_file, self.start_ts = stem, jsonl_path, log_path, start_ts
        self._buffer.clear()
        self.requests_dropped = 0
        self._inflight = 0
        self._counters, self._counts, self._n_fast = {}, {}, 0
        self._routes = RouteNamer(self.app)
        self._routes_written = False
        self._routes_named = 0
        self._writer = RecordWriter(
            self._buffer, jsonl, log,
            perf_to_wall=time.time() - time.perf_counter(),
            on_error=self._internal_error, dropped=lambda: self.requests_dropped,
        )
        header = {
            "kind": "header", "format": FORMAT_NAME, "schema_version": SCHEMA_VERSION,
            "session_id": stem, "leakyspanner_version": __version__, "pid": self._pid,
            "host": socket.gethostname(), "python": platform.python_version(), "platform": self._platform,
            "level": self.level, "config": self._config, "start_ts": round(start_ts, 4),
            "baseline_rss_bytes": self.baseline_rss_bytes, "baseline_vms_bytes": baseline_vms,
            "cgroup_memory_limit_bytes": self.cgroup_limit_bytes, "memory_reader": self.reader.source,
            "request_fields": list(REQUEST_FIELDS), "request_records": "measured",
            "heap_engine": self.heap_engine, "heap_engine_note": self.heap_engine_note,
            "sample_bytes": self.sample_bytes if self.heap_engine == "sampler" else None,
        }
        self._writer.write_lines(
            [_json_dumps(header, separators=(",", ":")) + "\n"],
            humanlog.header_lines(__version__, start_ts, self._platform, self.level, self.interval_seconds,
                                  self.leak_threshold_mb, self.baseline_rss_bytes, jsonl_path.name),
        )
        if self.heap_engine == "sampler":
            self._start_heap()
        elif self.level in ("mid", "deep"):
            self._set_tracing(True, f"level={self.level}")
        self._sampler = Sampler(
            self, self.interval_seconds, self.snapshot_interval_seconds,
            self.snapshot_cpu_budget, self.auto_window_seconds,
        )
        self._writer.start(round(start_ts, 4))
        self._sampler.start()
        self._active = True
        _register_exit_hooks(self)
        return True

    def _open_new_session_file(self, start_ts: float) -> tuple[IO[str], str]:
        """A ``.jsonl`` no other session has: the plain stem, then with the pid, then numbered
        (another worker, or a stop and start, in the same second)."""
        base = session_stem(start_ts)
        stems = [base, session_stem(start_ts, self._pid)]
        stems += [f"{stems[1]}_{n}" for n in range(2, 1000)]
        for stem in stems:
            if (self.log_path / (stem + LOG_SUFFIX)).exists():
                continue
            try:
                return open(self.log_path / (stem + JSONL_SUFFIX), "x", encoding="utf-8"), stem
            except FileExistsError:
                continue
        raise FileExistsError(f"no free session file name for {base} in {self.log_path}")

    def stop(self) -> None:
        """Stop sampling, flush every record, write the summary; idempotent, never raises."""
        if self._pid != os.getpid():
            # a process the app forked (a helper that exits with sys.exit): the session and
            # its files belong to the parent; write nothing into them
            self._active = False
            return
        with self._lock:
            if not self._active or self._stopped:
                return
            self._stopped = True
            self._active = False
            try:
                if self._sampler is not None:
                    self._sampler.stop()
                self._stop_heap()
                self._set_tracing(False, "session stopped")
                writer = self._writer
                if writer is not None:
                    writer.stop()
                    summary = self._summary(writer)
                    writer.write_lines([_json_dumps(summary, separators=(",", ":")) + "\n"],
                                       humanlog.summary_lines(summary, self._platform))
            except Exception as exc:
                self._internal_error("stop", exc)
            finally:
                self._close_files()
                if self.reader is not None:
                    self.reader.close()

    def _before_shutdown(self) -> None:
        """Take the session's closing sample now, before the app's shutdown hooks run.

        Hooks that close clients, cancel tasks or re-enable gc would otherwise
        make the leak vanish from the last point of the session.
        """
        sampler = self._sampler
        if self._active and sampler is not None:
            sampler.stop()

    def _summary(self, writer: RecordWriter) -> dict[str, Any]:
        now = time.time()
        final = writer.final_rss_bytes or self.baseline_rss_bytes
        return {
            "kind": "summary", "ts": round(now, 4), "duration_s": round(now - self.start_ts, 3),
            "baseline_rss_bytes": self.baseline_rss_bytes,
            "peak_rss_bytes": max(writer.peak_rss_bytes, self.baseline_rss_bytes),
            "final_rss_bytes": final, "net_growth_bytes": final - self.baseline_rss_bytes,
            "samples": writer.samples, "requests_total": writer.calls_total,
            "request_records": writer.requests_total,
            "requests_dropped": self.requests_dropped, "internal_errors": self.internal_errors,
            "endpoints": writer.endpoint_summary(),
        }

    def _close_files(self) -> None:
        for f in self._files:
            try:
                f.close()
            except Exception:
                pass
        self._files = []

    # -- called by middleware and sampler --------------------------------
    def _counter(self, key: int, route: Any, endpoint: Any, method: str, root_after: str, root_before: str
                 ) -> list[Any]:
        """The counter of a request the two-lookup path missed; on the event loop's thread.

        The raw method is the client's to choose: anything unknown counts as
        ``OTHER`` and is never cached, so junk methods cost a slower lookup, not
        memory. A route whose template depends on the raw root path (one added
        after the app's routes were walked) is named on every call.
        """
        known_method = method in METHODS
        name = (method if known_method else "OTHER",
                self._routes.name(route, endpoint, root_after or "", root_before or ""))
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = [0, 0, 0.0, 0.0, name]
        if (known_method and self._n_fast < _MAX_FAST_COUNTERS
                and (route is None and endpoint is None or self._routes.is_static(route, endpoint))):
            self._counts.setdefault(key, {})[method] = counter
            self._n_fast += 1
        return counter

    def _first_request(self, loop: Any) -> None:
        """Slow path taken once per process: learn the loop, restart after a fork."""
        if self._pid != os.getpid():
            self._after_fork_restart()
        self._loop = loop
        if not self._routes_written and self._active:
            self._write_routes()

    def _write_routes(self) -> None:
        """Where each endpoint's code lives, once at start and again when routes the
        walk could not see (lazily included routers) have been named since."""
        self._routes_written = True
        self._routes_named = self._routes.named_count
        self._buffer.append((OBJECT, {"kind": "routes", "ts": round(time.time(), 4),
                                      "routes": self._routes.code_ranges()}))

    def _after_fork_restart(self) -> None:
        # Threads do not survive fork and /proc/self fds point at the parent:
        # abandon the parent's session objects (without flushing) and start anew.
        self._files = []
        self._writer = None
        self._sampler = None
        self._active = False
        self._stopped = False
        self._lock = threading.Lock()
        self._buffer.clear()
        self._started_tracing = False
        self._tracing = tracemalloc.is_tracing()
        self.internal_errors = 0
        self.start()
        if self._active:
            self._buffer.append((OBJECT, {"kind": "event", "ts": round(time.time(), 4), "event": "forked",
                                          "detail": "new session after fork"}))

    def _start_heap(self) -> None:
        """Start (or join) the sampled heap engine; tracemalloc is the fallback if it will not start."""
        heap_sites = HeapSites(self.sample_bytes, self.heap_max_frames, self._route_name,
                               early_sample_bytes=self._early_sample_bytes, early_s=_EARLY_S)
        try:
            heap_sites.start()
        except Exception as exc:
            self.heap_engine = "tracemalloc"
            self.heap_engine_note = f"the sampled heap engine did not start ({type(exc).__name__}: {exc})"
            self._event("heap_engine_fallback", self.heap_engine_note)
            logger.warning("leakyspanner: %s; using tracemalloc", self.heap_engine_note)
            if self.level in ("mid", "deep"):
                self._set_tracing(True, f"level={self.level}")
            return
        self._heap = heap_sites
        self._heap_tags = True
        self._event("heap_sampling_started",
                    f"sampled heap engine: one sample per {self.sample_bytes} bytes on average, "
                    f"{self.heap_max_frames} frames")

    def _stop_heap(self) -> None:
        self._heap_tags = False
        heap_sites, self._heap = self._heap, None
        if heap_sites is not None:
            heap_sites.stop()

    def _route_name(self, route_id: int, method: str) -> str | None:
        """The template of the route object at ``route_id`` (an address the heap engine stored)."""
        by_method = self._counts.get(route_id)
        if by_method is not None:
            counter = by_method.get(method) or next(iter(by_method.values()), None)
            if counter is not None:
                return str(counter[4][1])
        return self._routes.name_by_id(route_id)

    def _set_tracing(self, on: bool, why: str) -> None:
        if on and not tracemalloc.is_tracing():
            tracemalloc.start(self.traceback_frames)
            self._started_tracing = True
            self._event("tracing_started", why)
        elif not on and self._started_tracing:
            tracemalloc.stop()  # only ever stopped when leakyspanner started it
            self._started_tracing = False
            self._event("tracing_stopped", why)
        self._tracing = tracemalloc.is_tracing() and self.level != "basic"

    def _event(self, name: str, detail: str) -> None:
        self._buffer.append((OBJECT, {"kind": "event", "ts": round(time.time(), 4), "event": name, "detail": detail}))

    def _internal_error(self, where: str, exc: BaseException) -> None:
        """Count it, log it once per place; never raise into the app."""
        try:
            self.internal_errors += 1
            if where not in self._errors_logged:
                self._errors_logged.add(where)
                logger.warning("leakyspanner: internal error in %s (%s: %s); the app is unaffected",
                               where, type(exc).__name__, exc)
                self._event("internal_error", f"{where}: {type(exc).__name__}: {exc}")
        except Exception:
            pass

    # -- public -------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while a session is being captured."""
        return self._active

    def stats(self) -> dict[str, Any]:
        """Current numbers, read without waiting for the next sample."""
        rss = self._read_rss() if self._active and self._read_rss else None
        return {
            "active": self._active, "level": self.level, "session_id": self.session_id,
            "rss_bytes": rss, "baseline_rss_bytes": self.baseline_rss_bytes,
            "rss_delta_bytes": None if rss is None else rss - self.baseline_rss_bytes,
            "tracing": self._tracing, "heap_engine": self.heap_engine,
            "heap_live_bytes": self._heap.live_bytes() if self._heap is not None else None,
            "traced_bytes": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
            "inflight": self._inflight,
            "requests_total": sum(c[0] for c in list(self._counters.values())),
            "request_records": self._writer.requests_total if self._writer else 0,
            "requests_dropped": self.requests_dropped, "buffered": len(self._buffer),
            "internal_errors": self.internal_errors,
            "log_file": str(self.log_file) if self.log_file else None,
            "jsonl_file": str(self.jsonl_file) if self.jsonl_file else None,
        }

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"<leakyspanner.Profiler {state} level={self.level} session={self.session_id}>"


_live: weakref.WeakSet[Profiler] = weakref.WeakSet()
_hooks_registered = False


def _stop_all() -> None:
    for profiler in list(_live):
        profiler.stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    """Write every session's summary, then die of SIGTERM as the default handler would."""
    _stop_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)


def _register_exit_hooks(profiler: Profiler) -> None:
    global _hooks_registered
    _live.add(profiler)
    if not _hooks_registered:
        _hooks_registered = True
        atexit.register(_stop_all)  # fallback when no lifespan shutdown runs
        # SIGTERM skips atexit. uvicorn without a watched lifespan shuts down, restores the
        # handler it found and raises the signal again: with this one in place the session
        # still ends with its summary. Only where nobody else handles SIGTERM.
        try:
            if (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):
            pass


def leakyspanner(
    app: Any,
    *,
    enabled: bool = True,
    log_path: str | os.PathLike[str] = "./leakyspanner_logs",
    level: str = "mid",
    interval_seconds: float = 5.0,
    leak_threshold_mb: float = 50.0,
    top_stats_count: int = 10,
    **advanced: Any,
) -> Profiler | None:
    """Attach the leak profiler to a FastAPI/Starlette ``app`` and start a session.

    Levels: ``basic`` (endpoint counts and RSS deltas only), ``mid`` and
    ``auto`` (+ the sampled heap engine: live bytes per endpoint and per
    allocation site, from allocations sampled by bytes and tagged with the
    request that made them), ``deep`` (the same, sampled 8x more often with
    64 frames). Where the C extension is not built they fall back to
    tracemalloc (mid: 1 frame; deep: 5 frames; auto: tracemalloc for a window
    once RSS grows by ``leak_threshold_mb``) and say so in the log.
    ``allocator="tracemalloc"`` forces that path. Bad arguments raise ``ValueError`` here; after this
    call nothing leakyspanner does can raise into the app. With
    ``enabled=False`` the app is left exactly as it was and None is returned.
    Advanced keywords: snapshot_interval_seconds, snapshot_cpu_budget,
    auto_window_seconds, max_buffered_records, snapshot_mode (``auto``:
    take allocation snapshots in a forked child when that stalls the app
    less, ``fork``, ``inline``), traceback_frames (tracemalloc frames,
    1-100; default 1, deep 5), request_rss_interval_seconds (under load
    RSS is read, and a request record written, for a random sample of about
    one request per this many seconds, default 0.005; 0 measures and records
    every request; every request is counted either way), allocator
    (``auto``, ``sampler``, ``tracemalloc``), sample_bytes (the sampler's
    mean bytes between samples).
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be True or False, got {enabled!r}")
    allowed = {"snapshot_interval_seconds", "snapshot_cpu_budget", "auto_window_seconds", "max_buffered_records",
               "snapshot_mode", "traceback_frames", "request_rss_interval_seconds", "allocator", "sample_bytes"}
    unknown = sorted(set(advanced) - allowed)
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; valid advanced arguments: {', '.join(sorted(allowed))}")
    profiler = Profiler(
        app, log_path=log_path, level=level, interval_seconds=interval_seconds,
        leak_threshold_mb=leak_threshold_mb, top_stats_count=top_stats_count, **advanced,
    )
    if not callable(app):
        raise ValueError(f"app must be an ASGI application (a FastAPI or Starlette app), got {type(app).__name__}")
    if not enabled:
        return None
    if getattr(app, "middleware_stack", None) is not None:
        # already serving: wrap the built stack instead of add_middleware (which would raise)
        app.middleware_stack = LeakyspannerMiddleware(app.middleware_stack, profiler)
    elif callable(getattr(app, "build_middleware_stack", None)):
        # outermost, around every middleware whenever it was added: allocations a user's
        # middleware makes for a request (metrics, logging) carry that request's tag
        app.build_middleware_stack = _outermost(app.build_middleware_stack, profiler)
    elif hasattr(app, "add_middleware"):
        app.add_middleware(LeakyspannerMiddleware, profiler=profiler)
    else:
        raise ValueError(
            f"app must be a FastAPI or Starlette application (it has no add_middleware), got "
            f"{type(app).__name__}; for another ASGI app use "
            "app = LeakyspannerMiddleware(app, Profiler(app)) and call profiler.start()"
        )
    profiler.start()
    return profiler


def _outermost(build: Any, profiler: Profiler) -> Any:
    def build_middleware_stack() -> Any:
        return LeakyspannerMiddleware(build(), profiler)

    build_middleware_stack.__wrapped__ = build  # type: ignore[attr-defined]
    return build_middleware_stack


def _fork_hook() -> None:
    for profiler in list(_live):
        profiler._loop = None  # next request in the child takes the slow path and restarts


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_hook)
