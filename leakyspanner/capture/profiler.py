"""Owns the session: its files, buffer, endpoint counters and threads (counters: the event loop's thread).

``leakyspanner(app)``: validate, attach, start; the handle it returns and the session it shares.

One capture engine per process and configuration: the first ``Profiler`` to
start hosts the session (files, sampler and writer threads); later ones with
the same ``CaptureConfig`` (an app factory building an app per test) join it,
sharing its buffer and counters, and leave when their app shuts down. The
session ends when the last one leaves.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
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
from types import TracebackType
from typing import IO, Any

from .. import __version__
from ..schema import (
    FORMAT_NAME,
    JSONL_SUFFIX,
    LOG_SUFFIX,
    REQUEST_FIELDS,
    SCHEMA_VERSION,
    session_stem,
)
from . import heap, humanlog
from .config import CaptureConfig
from .heapsites import HeapSites
from .middleware import LeakyspannerMiddleware, resolve_request_path
from .procmem import ProcessReader, cgroup_memory_limit_bytes
from .routes import METHODS, RouteNamer
from .sampler import Sampler
from .writer import OBJECT, RecordWriter

__all__ = ["CaptureStats", "Profiler", "leakyspanner"]

logger = logging.getLogger("leakyspanner")
_MB = 1024 * 1024
_MAX_FAST_COUNTERS = 4096  # (route object, method) pairs the request path finds a counter for in two lookups
#: tracemalloc frames per traceback by level. deep keeps 5: enough to climb from a
#: library's allocation to the caller in the app, at about half the per-allocation
#: cost of the seed's 10 (``traceback_frames=10`` buys that depth back).
_FRAMES = {"mid": 1, "auto": 1, "deep": 5, "basic": 0}
#: deep samples this many times more often than mid, with more frames
_DEEP_SAMPLE_DIVISOR = 8
_DEEP_MAX_FRAMES = 64
#: The sampler's mean gap (the engine's own default, heap.DEFAULT_SAMPLE_BYTES, is 512 KiB
#: for callers outside a session). A sample costs a stack capture (about 3.4k instructions
#: at 32 frames, benchmarks/bench_heap_alloc.py); a tiny FastAPI request allocates ~32 KB,
#: so 256 KiB pays one per 8 requests. Estimates carry a relative error of about
#: sqrt(sample_bytes / retained bytes): 5% at 100 MB.
_SAMPLE_BYTES = 256 * 1024
#: For the first _EARLY_S of a session the gap is 64 KiB: a one-minute run that keeps
#: 10 KB per call over a few thousand calls then has hundreds of samples, not dozens.
_EARLY_SAMPLE_BYTES = 64 * 1024
_EARLY_S = 120.0
#: what a profiler that joins a running session takes from its host: the request
#: path's buffer and counters, and what stats() reads
_SHARED = ("_buffer", "_counters", "_counts", "_read_rss", "_heap", "_heap_tags", "_tracing", "_writer",
           "_sampler", "reader", "baseline_rss_bytes", "cgroup_limit_bytes", "session_id", "log_file",
           "jsonl_file", "start_ts", "heap_engine", "heap_engine_note")


@dataclasses.dataclass(frozen=True)
class CaptureStats:
    """``Profiler.stats()``: the numbers of the session now; ``stats["key"]`` works too."""

    active: bool
    level: str
    session_id: str | None
    rss_bytes: int | None
    baseline_rss_bytes: int
    rss_delta_bytes: int | None
    tracing: bool
    heap_engine: str
    request_path: str  # the middleware's per-request bookkeeping: "c" or "python"
    heap_live_bytes: int | None
    traced_bytes: int | None
    inflight: int
    requests_total: int  # every app sharing the session
    request_records: int
    requests_dropped: int
    buffered: int
    internal_errors: int
    log_file: str | None
    jsonl_file: str | None
    apps: int  # apps attached to the session now

    def __getitem__(self, key: str) -> Any:
        """Dict-style access, as ``stats()`` returned a dict before 0.2."""
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _ProcessBaseline:
    """RSS when this process first started capture: every session's growth alert measures from here,
    so an app attached late does not take growth other apps caused as its own baseline."""

    pid = -1
    rss_bytes = 0

    @classmethod
    def get(cls, rss_now: int) -> int:
        if cls.pid != os.getpid():
            cls.pid, cls.rss_bytes = os.getpid(), rss_now
        return cls.rss_bytes


class Profiler:
    """One app's capture; the handle ``leakyspanner(app)`` returns.

    ``start()``/``stop()`` are idempotent; ``stop()`` flushes and writes the
    summary (once the last app sharing the session has stopped). Use it as a
    context manager (``with Profiler(app) as p:``, also ``async with``) to
    start on entry and stop on exit. ``stats()`` gives the current numbers;
    ``log_file`` and ``jsonl_file`` are the paths written (None while capture
    is disabled). Options are those of :class:`CaptureConfig` (or pass
    ``config=``); ``LEAKYSPANNER_*`` environment variables fill in the ones
    not given.
    """

    def __init__(
        self,
        app: object = None,
        config: CaptureConfig | None = None,
        *,
        proc_root: str = "/proc",
        environ: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        if config is None:
            config = CaptureConfig.resolve(options, environ)
        elif options:
            raise ValueError(f"pass either config= or keyword options, not both (got {', '.join(sorted(options))})")
        elif not isinstance(config, CaptureConfig):
            raise ValueError(f"config must be a CaptureConfig, got {type(config).__name__}")
        self.config = config
        level = config.level
        self.app = app
        self.level = level
        self.log_path = Path(config.log_path)
        self.interval_seconds = float(config.interval_seconds)
        self.leak_threshold_mb = float(config.leak_threshold_mb)
        self.threshold_bytes = int(config.leak_threshold_mb * _MB)
        self.top_stats_count = int(config.top_stats_count)
        self.snapshot_interval_seconds = float(config.snapshot_interval_seconds or config.interval_seconds)
        self.snapshot_cpu_budget = float(config.snapshot_cpu_budget)
        self.auto_window_seconds = float(config.auto_window_seconds or 10 * config.interval_seconds)
        self.snapshot_mode = config.snapshot_mode
        self.traceback_frames = int(config.traceback_frames or _FRAMES.get(level, 1) or 1)
        self.request_rss_interval_seconds = float(config.request_rss_interval_seconds)
        #: the engine that finds allocation sites: "sampler", "tracemalloc" or "none" (basic)
        #: the request path the middleware runs: "c" (the _reqpath extension) or "python"
        self.request_path = resolve_request_path(config.request_path)
        self.heap_engine = "none" if level == "basic" else (
            "sampler" if config.allocator != "tracemalloc" and heap.AVAILABLE else "tracemalloc")
        self.heap_engine_note = (heap.UNAVAILABLE_REASON
                                 if level != "basic" and config.allocator == "auto" and not heap.AVAILABLE else None)
        default_sample = _SAMPLE_BYTES // (_DEEP_SAMPLE_DIVISOR if level == "deep" else 1)
        self.sample_bytes = int(config.sample_bytes or default_sample)
        #: unless sample_bytes is given, the first minutes sample denser (see _EARLY_SAMPLE_BYTES)
        self._early_sample_bytes = (None if config.sample_bytes else
                                    min(self.sample_bytes, _EARLY_SAMPLE_BYTES))
        self.heap_max_frames = _DEEP_MAX_FRAMES if level == "deep" else heap.DEFAULT_MAX_FRAMES
        self._proc_root = proc_root
        self._config = {
            **config.header(), "interval_seconds": self.interval_seconds,
            "leak_threshold_mb": self.leak_threshold_mb,
            "snapshot_interval_seconds": self.snapshot_interval_seconds,
            "auto_window_seconds": self.auto_window_seconds, "traceback_frames": self.traceback_frames,
            "sample_bytes": self.sample_bytes,
        }
        #: requests to these paths pass by capture (see _exclusions)
        self._exclude_exact = frozenset(p for p in config.exclude_paths if not p.endswith(("/", "*")))
        self._exclude_prefixes = tuple(p.rstrip("*") for p in config.exclude_paths if p.endswith(("/", "*")))
        #: the session this profiler writes into: itself when it hosts one, another's when it joined
        self._host: Profiler | None = None
        #: on a host, the other profilers sharing its session by id (held weakly: an app
        #: factory's apps that never shut down are not kept alive by us)
        self._members: dict[int, weakref.ref[Profiler]] = {}
        self._app_left = False  # a host whose own app has stopped while members still run
        self._session_running = False
        #: counter keys this profiler put in a shared ``_counts`` (dropped when it goes)
        self._fast_keys: list[int] = []
        self._dropped_by_left = 0  # requests_dropped of members that left
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
        self._buffer_cap = int(config.max_buffered_records)
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
        self.alert_baseline_rss_bytes = 0
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
        self._pid = os.getpid()
        self._stopped = False
        self._platform = f"{platform.platform()} {platform.python_implementation()} {platform.python_version()}"

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> bool:
        """Capture this app: join a running session of the same configuration or open a new one.

        Returns False (with one warning) when it cannot, or when the
        configuration (or ``LEAKYSPANNER_ENABLED``) says disabled.
        """
        if not self.config.enabled:
            return False
        with _engine_lock:
            if self._active:
                return True
            if self._session_running and self._pid == os.getpid():
                # a host whose app stopped while other apps kept its session going: back in it
                self._active, self._stopped, self._app_left = True, False, False
                return True
            host = _hosts.get(self._session_key())
            if host is not None and host is not self and host._session_running and host._pid == os.getpid():
                self._join(host)
                return True
            try:
                started = self._start()
            except Exception as exc:
                self._internal_error("start", exc)
                self._close_files()
                return False
            if started:
                _hosts[self._session_key()] = self
                logger.info("leakyspanner: capturing at level %s into %s and %s", self.level,
                            self.log_file, self.jsonl_file)
            return started

    def __enter__(self) -> Profiler:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Profiler:
        return self.__enter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.stop()

    def _session_key(self) -> tuple[Any, ...]:
        """Profilers with equal keys share one session: same settings, same directory, same process."""
        return (os.getpid(), dataclasses.replace(self.config, exclude_paths=()),
                os.path.abspath(self.log_path), self._proc_root)

    def _join(self, host: Profiler) -> None:
        """Share ``host``'s session: its buffer, counters, files and threads; no thread or file of our own."""
        for name in _SHARED:
            setattr(self, name, getattr(host, name))
        self._host = host
        self._pid = os.getpid()
        self._stopped = False
        self._loop = None
        self._inflight = 0
        self.requests_dropped = 0
        self._n_fast, self._fast_keys = 0, []
        self._routes = RouteNamer(self.app)
        self._routes_written = False
        self._rss_p, self._window_requests, self._window_start, self._window_end = 1.0, 0, 0.0, 0.0
        host._members[id(self)] = weakref.ref(self)
        # a collected member leaves; its route objects die with it, so their ids must not find its counters
        weakref.finalize(self, _forget_member, host._members, id(self), host._counts, self._fast_keys)
        self._active = True
        _register_exit_hooks(self)
        host._event("app_attached", f"another app joined this session ({host._apps()} attached)")

    def _member_list(self) -> list[Profiler]:
        """The live members now: one atomic copy of the dict (the sampler thread reads it while
        the event loop's thread may add to it), then the weak references followed."""
        return [m for m in [ref() for ref in list(self._members.values())] if m is not None]

    def _apps(self) -> int:
        """Apps capturing into this (host's) session now."""
        return sum(1 for m in [self, *self._member_list()] if m._active)

    def _start(self) -> bool:
        self._stopped = False
        self._app_left = False
        self._host = self
        self._pid = os.getpid()
        self._loop = None
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
        #: growth alerts measure from the process's first capture, not from this session's start
        self.alert_baseline_rss_bytes = _ProcessBaseline.get(self.baseline_rss_bytes)
        self.cgroup_limit_bytes = cgroup_memory_limit_bytes()
        self.session_id, self.jsonl_file, self.log_file, self.start_ts = stem, jsonl_path, log_path, start_ts
        # new objects, not cleared ones: members that left an earlier session still hold those
        self._buffer = deque()
        self.requests_dropped = self._dropped_by_left = 0
        self._inflight = 0
        self._counters, self._counts, self._n_fast, self._fast_keys = {}, {}, 0, []
        self._members = {}
        self._routes = RouteNamer(self.app)
        self._routes_written = False
        self._routes_named = 0
        self._writer = RecordWriter(
            self._buffer, jsonl, log,
            perf_to_wall=time.time() - time.perf_counter(),
            on_error=self._internal_error, dropped=self._dropped_total, reopen=self._reopen_files,
        )
        self._header = {
            "kind": "header", "format": FORMAT_NAME, "schema_version": SCHEMA_VERSION,
            "session_id": stem, "leakyspanner_version": __version__, "pid": self._pid,
            "host": socket.gethostname(), "python": platform.python_version(), "platform": self._platform,
            "level": self.level, "config": self._config, "start_ts": round(start_ts, 4),
            "baseline_rss_bytes": self.baseline_rss_bytes, "baseline_vms_bytes": baseline_vms,
            "cgroup_memory_limit_bytes": self.cgroup_limit_bytes, "memory_reader": self.reader.source,
            "request_fields": list(REQUEST_FIELDS), "request_records": "measured",
            "heap_engine": self.heap_engine, "heap_engine_note": self.heap_engine_note,
            "sample_bytes": self.sample_bytes if self.heap_engine == "sampler" else None,
            "request_path": self.request_path,
        }
        self._writer.write_lines(*self._header_lines(self._header, jsonl_path))
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
        self._session_running = True
        _register_exit_hooks(self)
        return True

    def _header_lines(self, header: dict[str, Any], jsonl_path: Path) -> tuple[list[str], list[str]]:
        return ([_json_dumps(header, separators=(",", ":")) + "\n"],
                humanlog.header_lines(__version__, header["start_ts"], self._platform, self.level,
                                      self.interval_seconds, self.leak_threshold_mb, self.baseline_rss_bytes,
                                      jsonl_path.name))

    def _reopen_files(self) -> tuple[IO[str], IO[str]] | None:
        """The session's files were deleted under us (their directory removed): new ones, said so.

        Called by the writer thread, which swaps them in; the old ones are closed here.
        """
        old = self.session_id
        try:
            self.log_path.mkdir(parents=True, exist_ok=True)
            now = time.time()
            jsonl, stem = self._open_new_session_file(now)
            log = open(self.log_path / (stem + LOG_SUFFIX), "x", encoding="utf-8", errors="replace")
        except OSError as exc:
            self._internal_error("reopen", exc)
            return None
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass
        self._files = [jsonl, log]
        self.session_id, self.jsonl_file, self.log_file = stem, self.log_path / (stem + JSONL_SUFFIX), \
            self.log_path / (stem + LOG_SUFFIX)
        for member in self._member_list():
            member.session_id, member.jsonl_file, member.log_file = stem, self.jsonl_file, self.log_file
        self._header = {**self._header, "session_id": stem}
        lines, human = self._header_lines(self._header, self.jsonl_file)
        detail = (f"the log files of session {old} were deleted (their directory removed?) at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}; the session continues in "
                  f"this file, records written between the deletion and now may be lost")
        event = {"kind": "event", "ts": round(now, 4), "event": "log_files_recreated", "detail": detail}
        try:
            jsonl.write("".join(lines) + _json_dumps(event, separators=(",", ":")) + "\n")
            jsonl.flush()
            log.write("\n".join([*human, humanlog.event_line("log_files_recreated", detail)]) + "\n")
            log.flush()
        except OSError as exc:
            self._internal_error("reopen", exc)
        logger.warning("leakyspanner: %s", detail)
        return jsonl, log

    def _dropped_total(self) -> int:
        """Requests dropped by every app of this (host's) session, including those that left."""
        return self.requests_dropped + self._dropped_by_left + sum(m.requests_dropped for m in self._member_list())

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
        """Stop capturing this app; the last app of a session to stop ends it: sampling stops,
        every record is flushed and the summary written. Idempotent, never raises."""
        if self._pid != os.getpid():
            # a process the app forked (a helper that exits with sys.exit): the session and
            # its files belong to the parent; write nothing into them
            self._active = False
            return
        with _engine_lock:
            host = self._host
            if not self._active or self._stopped or host is None:
                return
            self._stopped = True
            self._active = False
            if host is not self:
                self._leave(host)
            else:
                self._app_left = True
            if host._app_left and not any(m._active for m in host._member_list()):
                host._end_session()

    def _leave(self, host: Profiler) -> None:
        """A member's app stopped: its counts stay in the session, its keys go."""
        host._members.pop(id(self), None)
        host._dropped_by_left += self.requests_dropped
        _forget_keys(host._counts, self._fast_keys)
        host._event("app_detached", f"an app left this session ({host._apps()} attached)")

    def _end_session(self) -> None:
        self._active = False
        self._session_running = False
        if _hosts.get(self._session_key()) is self:
            del _hosts[self._session_key()]
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
        make the leak vanish from the last point of the session. Only when this
        app is the last one capturing into the session.
        """
        host = self._host
        sampler = self._sampler
        if not self._active or sampler is None or host is None:
            return
        if any(m._active and m is not self for m in [host, *host._member_list()]):
            return
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
            "requests_dropped": self._dropped_total(), "internal_errors": self.internal_errors,
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
            self._fast_keys.append(key)
            self._n_fast += 1
        return counter

    def _first_request(self, loop: Any) -> None:
        """Slow path: learn the loop, restart after a fork or after a lifespan shutdown.

        The middleware calls it at each lifespan startup and at the first request:
        an app served again after its shutdown (a second ``with TestClient(app)``)
        is captured again, in a new session.
        """
        if self._pid != os.getpid():
            self._after_fork_restart()
        elif not self._active and self._stopped:
            self.start()
        self._loop = loop
        if not self._routes_written and self._active:
            self._write_routes()

    def _write_routes(self) -> None:
        """Where each endpoint's code lives, once at start and again when routes the
        walk could not see (lazily included routers) have been named since; one
        record for every app of the session (readers keep the last)."""
        self._routes_written = True
        host = self._host
        if host is not None and host is not self:
            host._write_routes()
            return
        apps = [self, *self._member_list()]
        self._routes_named = sum(p._routes.named_count for p in apps)
        routes: list[dict[str, object]] = []
        for p in apps:
            routes += p._routes.code_ranges()
        self._buffer.append((OBJECT, {"kind": "routes", "ts": round(time.time(), 4), "routes": routes}))

    def _routes_stale(self) -> bool:
        """Routes were named since the last routes record (the sampler asks, on a host)."""
        return self._routes_written and self._routes_named != sum(
            p._routes.named_count for p in [self, *self._member_list()])

    def _inflight_total(self) -> int:
        return self._inflight + sum(m._inflight for m in self._member_list() if m._active)

    def _tasks_loop(self) -> Any:
        """A loop whose tasks the sampler counts: this app's, else a member's."""
        if self._loop is not None:
            return self._loop
        return next((m._loop for m in self._member_list() if m._active and m._loop is not None), None)

    def _after_fork_restart(self) -> None:
        # Threads do not survive fork and /proc/self fds point at the parent:
        # abandon the parent's session objects (without flushing) and start anew.
        self._files = []
        self._writer = self._sampler = self._host = None
        self._active = self._stopped = self._session_running = self._started_tracing = False
        self._members = {}
        self._buffer = deque()
        self._tracing = tracemalloc.is_tracing()
        self.internal_errors = 0
        self.start()
        if self._active:
            self._event("forked", "new session after fork")

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
        for p in [self, *self._member_list()]:
            name = p._routes.name_by_id(route_id)
            if name is not None:
                return name
        return None

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
        for member in self._member_list():  # their request paths read their own attribute
            member._tracing = self._tracing

    def _event(self, name: str, detail: str) -> None:
        self._buffer.append((OBJECT, {"kind": "event", "ts": round(time.time(), 4), "event": name, "detail": detail}))

    def _internal_error(self, where: str, exc: BaseException) -> None:
        """Count it, log it once per place; never raise into the app."""
        host = self._host
        if host is not None and host is not self:
            host._internal_error(where, exc)
            return
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

    def stats(self) -> CaptureStats:
        """Current numbers of the session, read without waiting for the next sample."""
        host = self._host or self
        rss = self._read_rss() if self._active and self._read_rss else None
        writer = host._writer
        return CaptureStats(
            active=self._active, level=self.level, session_id=self.session_id,
            rss_bytes=rss, baseline_rss_bytes=self.baseline_rss_bytes,
            rss_delta_bytes=None if rss is None else rss - self.baseline_rss_bytes,
            tracing=self._tracing, heap_engine=self.heap_engine, request_path=self.request_path,
            heap_live_bytes=self._heap.live_bytes() if self._heap is not None else None,
            traced_bytes=tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
            inflight=host._inflight_total(),
            requests_total=sum(c[0] for c in list(self._counters.values())),
            request_records=writer.requests_total if writer else 0,
            requests_dropped=host._dropped_total(), buffered=len(self._buffer),
            internal_errors=host.internal_errors,
            log_file=str(self.log_file) if self.log_file else None,
            jsonl_file=str(self.jsonl_file) if self.jsonl_file else None,
            apps=host._apps(),
        )

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


def leakyspanner(app: Any, config: CaptureConfig | None = None, **options: Any) -> Profiler | None:
    """Attach the leak profiler to a FastAPI/Starlette ``app`` and start capturing.

    Options are the fields of :class:`CaptureConfig` (``level``, ``log_path``,
    ``interval_seconds``, ``exclude_paths``, ...; the table in docs/internals.md),
    or a ready ``config=``. Options not given come from ``LEAKYSPANNER_<NAME>``
    environment variables, then the defaults; ``LEAKYSPANNER_ENABLED=0`` disables
    capture whatever the code says.

    Levels: ``basic`` (endpoint counts and RSS deltas only), ``mid`` and
    ``auto`` (+ the sampled heap engine: live bytes per endpoint and per
    allocation site, from allocations sampled by bytes and tagged with the
    request that made them), ``deep`` (the same, sampled 8x more often with
    64 frames). Where the C extension is not built they fall back to
    tracemalloc (mid: 1 frame; deep: 5 frames; auto: tracemalloc for a window
    once RSS grows by ``leak_threshold_mb``) and say so in the log.
    Bad arguments (and bad environment values) raise ``ValueError`` here;
    after this call nothing leakyspanner does can raise into the app. When
    disabled the app is left exactly as it was and None is returned. Apps
    attached with the same configuration in one process share one session
    (one sampler, one writer, one pair of files).
    """
    profiler = Profiler(app, config, **options)
    if not callable(app):
        raise ValueError(f"app must be an ASGI application (a FastAPI or Starlette app), got {type(app).__name__}")
    if not profiler.config.enabled:
        return None
    if getattr(app, "middleware_stack", None) is not None:
        # already serving: wrap the built stack instead of add_middleware (which would raise)
        app.middleware_stack = _wrap(app.middleware_stack, profiler)
    elif callable(getattr(app, "build_middleware_stack", None)):
        # outermost, around every middleware whenever it was added: allocations a user's
        # middleware makes for a request (metrics, logging) carry that request's tag
        app.build_middleware_stack = _outermost(app.build_middleware_stack, profiler)
    elif hasattr(app, "add_middleware"):
        if profiler.config.exclude_paths:
            raise ValueError("exclude_paths needs a FastAPI or Starlette app (one with build_middleware_stack); "
                             f"{type(app).__name__} has only add_middleware")
        app.add_middleware(LeakyspannerMiddleware, profiler=profiler)
    else:
        raise ValueError(
            f"app must be a FastAPI or Starlette application (it has no add_middleware), got "
            f"{type(app).__name__}; for another ASGI app use "
            "app = LeakyspannerMiddleware(app, Profiler(app)) and call profiler.start()"
        )
    profiler.start()
    return profiler


def _excluding(app: Any, captured: Any, profiler: Profiler) -> Any:
    """Requests to excluded paths go straight to the app, past capture.

    A plain function, not a coroutine or an object with ``__call__``: it hands
    back the chosen app's awaitable, so a request pays one cheap call, one set
    lookup and (when prefixes are given) one ``startswith``.
    """
    exact, prefixes = profiler._exclude_exact, profiler._exclude_prefixes

    if not prefixes:
        def excluding(scope: Any, receive: Any, send: Any) -> Any:
            if scope.get("path") in exact:
                return app(scope, receive, send)
            return captured(scope, receive, send)
    else:
        def excluding(scope: Any, receive: Any, send: Any) -> Any:
            path = scope.get("path")
            if path in exact or (path.__class__ is str and path.startswith(prefixes)):
                return app(scope, receive, send)
            return captured(scope, receive, send)

    excluding.middleware = captured  # type: ignore[attr-defined]  # the middleware behind it
    return excluding


def _wrap(app: Any, profiler: Profiler) -> Any:
    middleware = LeakyspannerMiddleware(app, profiler)
    if profiler.config.exclude_paths:
        return _excluding(app, middleware, profiler)
    return middleware


def _outermost(build: Any, profiler: Profiler) -> Any:
    def build_middleware_stack() -> Any:
        return _wrap(build(), profiler)

    build_middleware_stack.__wrapped__ = build  # type: ignore[attr-defined]
    return build_middleware_stack


def _forget_keys(counts: dict[int, Any], keys: list[int]) -> None:
    """Drop a departed app's route ids from a shared ``_counts``: a new object may reuse the address."""
    for key in keys:
        counts.pop(key, None)
    keys.clear()


def _forget_member(members: dict[int, Any], key: int, counts: dict[int, Any], keys: list[int]) -> None:
    members.pop(key, None)
    _forget_keys(counts, keys)


#: the running session of each (pid, configuration, directory): where a new profiler joins
_hosts: dict[tuple[Any, ...], Profiler] = {}
#: held while a profiler starts, joins, leaves or ends a session (rare; never on the request path)
_engine_lock = threading.RLock()


def _fork_hook() -> None:
    global _engine_lock
    _engine_lock = threading.RLock()  # another thread may have held it at the fork
    for profiler in list(_live):
        profiler._loop = None  # next request in the child takes the slow path and restarts


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_hook)
