"""Leak checks for test suites: call one endpoint many times in-process and fail when it keeps memory.

    from leakyspanner.leakcheck import leak_check
    leak_check(app).call("POST", "/orders", json={"sku": "A1"}, times=2000, max_retained_per_call="1 KB")

The app is driven through ``httpx.ASGITransport`` (its lifespan runs first when
it has one). Retained bytes come from the sampled heap engine (tracemalloc where
the C extension is not built): every allocation made while the app serves one of
these requests is tagged, so the test client's own objects never count, and a
sample stays live only while the object it stands for does.

How a leak is told from a warming cache: after ``warmup`` calls the live tagged
bytes are the baseline; the calls then run in ``batches`` and the live bytes are
read after each (after a full collection). A straight line fitted to retained
bytes against calls gives bytes per call over the whole run; the same fit over
the later half of the batches says whether it is still growing. Both must
exceed the limit: a cache that fills and stops adds memory early and nothing
late, a leak adds the same per call to the end.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import re
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .capture import heap
from .capture.heapsites import TAG_VAR, HeapSites, is_app_file
from .errors import LeakyspannerError, require_extra
from .formatting import format_bytes

__all__ = ["DEFAULT_LIMIT", "GrowingLine", "LeakCheck", "LeakCheckError", "LeakFound", "LeakReport", "OPTIONS",
           "leak_check", "parse_size"]

#: 1 KB = 1 KiB = 1024 bytes, as ``leakyspanner report`` reads sizes and leakyspanner.formatting writes them
_UNITS = {"": 1, "b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2, "gb": 1024**3, "gib": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_SIZE_FORMS = ('a number of bytes (512) or a string like "512", "512 B", "1 KB", "1KB" or "1 KiB" '
               '(each 1024 bytes), "2.5 MB", "1 MiB"')
#: The sampler's mean gap during a check. Each sample costs a stack capture (~35k instructions,
#: docs/heap_engine.md) and a small FastAPI request through httpx allocates some 100 KB, so a
#: denser gap costs CPU in proportion (the CPU per check is in benchmarks/bench_leak_check.py).
#: What sets the gap is a cache that churns: 512 entries of 2 KB, all replaced every 512 calls,
#: were estimated within ±6% at 4 KiB, enough to move the later half's slope by ~150 B/call;
#: at 2 KiB the error per retained object is 1.9x smaller (its variance goes as (1 - p) / p,
#: p = 1 - exp(-size / gap) the chance the object is sampled).
_CHECK_SAMPLE_BYTES = 2048
_CHECK_MAX_FRAMES = 32
_TRACEMALLOC_FRAMES = 8
#: the default limit: half of the smallest leak the benchmark must always find (1 KB per call)
DEFAULT_LIMIT = "512 B"
#: what leak_check() and the pytest marker accept
OPTIONS = ("max_retained_per_call", "times", "warmup", "batches", "base_url", "allocator")
#: HTTP statuses a checked call may answer with before the check refuses to go on
_OK_STATUS = range(100, 400)


class LeakCheckError(LeakyspannerError):
    """The check could not run as asked (the endpoint errors, the lifespan failed, a loop is running)."""


class LeakFound(AssertionError):
    """The endpoint retained more than the limit per call and kept growing; ``report`` says where."""

    def __init__(self, report: LeakReport) -> None:
        super().__init__(report.describe())
        self.report = report


def parse_size(value: object, name: str = "max_retained_per_call") -> int:
    """Bytes from ``512``, ``"512"``, ``"1 KB"``/``"1KB"``/``"1 KiB"`` (1024), ``"2.5 MB"``, ``"1 MiB"``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {_SIZE_FORMS}; got {value!r}")
    if isinstance(value, (int, float)):
        if math.isfinite(value) and value >= 0:
            return int(value)
        raise ValueError(f"{name} must be {_SIZE_FORMS}; got {value!r}")
    match = _SIZE.match(value) if isinstance(value, str) else None
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{name} must be {_SIZE_FORMS}; got {value!r}")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class GrowingLine:
    """A line whose retained bytes grew between the baseline and the last batch."""

    file: str
    line: int
    function: str
    #: the first frame in the application's own code, when the allocating line is elsewhere
    app_file: str | None
    app_line: int | None
    growth_bytes: int

    def describe(self, calls: int) -> str:
        where = f"{_short(self.file)}:{self.line}" + (f" in {self.function}" if self.function else "")
        if self.app_file and (self.app_file, self.app_line) != (self.file, self.line):
            where += f" (called from {_short(self.app_file)}:{self.app_line})"
        return f"{format_bytes(self.growth_bytes / max(calls, 1))}/call  {where}"


@dataclass(frozen=True)
class LeakReport:
    """What one check measured. ``leaking`` is the verdict; ``describe()`` the failure message."""

    endpoint: str
    calls: int
    warmup: int
    limit_bytes: int
    #: (calls since the baseline, retained bytes since the baseline) after each batch, (0, 0) first
    points: tuple[tuple[int, int], ...]
    #: slope of retained bytes against calls over every batch, and over the later half
    per_call_bytes: float
    late_per_call_bytes: float
    engine: str
    lines: tuple[GrowingLine, ...] = field(default=())
    #: the function serving the endpoint and where it is defined, when the router says
    handler: str | None = None

    @property
    def retained_bytes(self) -> int:
        return self.points[-1][1]

    @property
    def leaking(self) -> bool:
        return self.per_call_bytes > self.limit_bytes and self.late_per_call_bytes > self.limit_bytes

    def describe(self) -> str:
        verdict = "retains" if self.leaking else "stays within"
        served = f" ({self.handler})" if self.handler else ""
        text = (f"{self.endpoint}{served} {verdict} {format_bytes(self.per_call_bytes)} per call "
                f"(limit {format_bytes(self.limit_bytes)}): {format_bytes(self.retained_bytes)} kept over "
                f"{self.calls} calls after {self.warmup} warm-up calls, "
                f"{format_bytes(self.late_per_call_bytes)}/call over the later half [{self.engine}]")
        if self.lines:
            text += "\ngrowing lines:\n" + "\n".join("  " + line.describe(self.calls) for line in self.lines)
        return text


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def _slope(points: list[tuple[int, int]]) -> float:
    """Least-squares bytes per call through ``points``."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def _is_app_file(filename: str) -> bool:
    return filename != __file__ and is_app_file(filename)


class _Sampler:
    """Retained bytes of tagged allocations, from the sampled heap engine."""

    name = "sampled heap engine"

    def __init__(self) -> None:
        self._sites = HeapSites(_CHECK_SAMPLE_BYTES, _CHECK_MAX_FRAMES, lambda route_id, method: None)
        self._previous_gap: int | None = None

    def start(self) -> None:
        self._sites.start()
        # the engine may already run for a profiler in this process: sample densely for the
        # check (every sample keeps its own weight, so the profiler's estimates stay unbiased)
        self._previous_gap = int(heap.stats().get("sample_bytes", _CHECK_SAMPLE_BYTES))
        heap.set_sample_bytes(_CHECK_SAMPLE_BYTES)

    def stop(self) -> None:
        if self._previous_gap is not None and self._previous_gap != _CHECK_SAMPLE_BYTES and heap.running():
            heap.set_sample_bytes(self._previous_gap)
        self._sites.stop()

    def measure(self, sites: bool) -> tuple[int, dict[tuple[Any, ...], int]]:
        """Live tagged bytes, and per line when ``sites`` (method "" is outside any request)."""
        record = self._sites.record() or {"endpoints": [], "sites": []}
        total = sum(row[2] for row in record["endpoints"] if row[0])
        by_line: dict[tuple[Any, ...], int] = {}
        for method, _route, file, line, function, app_file, app_line, size, *_ in record["sites"]:
            if method:
                if app_file == __file__:  # this module's request wrapper is nobody's app code
                    app_file = app_line = None
                key = (file, line, function, app_file, app_line)
                by_line[key] = by_line.get(key, 0) + size
        return total, by_line


class _Tracemalloc:
    """Retained bytes of everything traced, for where the C extension is not built."""

    name = "tracemalloc"

    def __init__(self) -> None:
        self._started = False

    def start(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(_TRACEMALLOC_FRAMES)
            self._started = True

    def stop(self) -> None:
        if self._started:
            tracemalloc.stop()
            self._started = False

    def measure(self, sites: bool) -> tuple[int, dict[tuple[Any, ...], int]]:
        """Traced bytes, and per line when ``sites`` (a snapshot: seconds on a big heap, so twice a check)."""
        total = tracemalloc.get_traced_memory()[0]  # before the snapshot, which is traced too
        if not sites:
            return total, {}
        snapshot = tracemalloc.take_snapshot().filter_traces([
            tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)])
        by_line: dict[tuple[Any, ...], int] = {}
        for stat in snapshot.statistics("traceback"):
            frames = list(reversed(stat.traceback))  # innermost first
            inner = frames[0]
            app = next((f for f in frames if _is_app_file(f.filename)), None)
            key = (inner.filename, inner.lineno, "", app.filename if app else None, app.lineno if app else None)
            by_line[key] = by_line.get(key, 0) + stat.size
        return total, by_line


def _lines(before: dict[tuple[Any, ...], int], after: dict[tuple[Any, ...], int], calls: int,
           limit: int) -> tuple[GrowingLine, ...]:
    """The lines that grew most, those above a tenth of the limit per call (at most 5)."""
    growth = [(after[k] - before.get(k, 0), k) for k in after]
    growth.sort(key=lambda item: -item[0])
    floor = max(limit / 10, 1) * calls
    return tuple(GrowingLine(file=k[0], line=k[1], function=k[2], app_file=k[3], app_line=k[4], growth_bytes=g)
                 for g, k in growth[:5] if g > floor)


class _Lifespan:
    """Runs the app's lifespan startup and shutdown the way a server would, if it has one."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._startup: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._shutdown: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self.supported = False

    async def _receive(self) -> dict[str, Any]:
        return await self._events.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type", "")
        future = self._startup if kind.startswith("lifespan.startup") else self._shutdown
        if not future.done():
            future.set_result(kind if "failed" not in kind else f"{kind}: {message.get('message', '')}")

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # an app without lifespan support raises on the scope: run without
            for future in (self._startup, self._shutdown):
                if not future.done():
                    future.set_result(f"raised {type(exc).__name__}")
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        for future in (self._startup, self._shutdown):
            if not future.done():
                future.set_result("returned")

    async def startup(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._events.put({"type": "lifespan.startup"})
        outcome = await self._startup
        self.supported = outcome == "lifespan.startup.complete"
        if outcome.startswith("lifespan.startup.failed"):
            raise LeakCheckError(f"the app's lifespan startup failed: {outcome}")

    async def shutdown(self) -> None:
        if self.supported:
            await self._events.put({"type": "lifespan.shutdown"})
            await self._shutdown
        if self._task is not None:
            if not self._task.done():
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _tagged(app: Any, lifespan: _Lifespan, tagging: bool, seen: dict[str, str]) -> Any:
    """The app with each request tagged for the heap engine and given the lifespan state; ``seen``
    gets the route template and the endpoint function the router chose (Starlette puts them in the scope)."""

    async def tagged_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        if lifespan.supported:
            scope = {**scope, "state": dict(lifespan.state)}
        tag = heap.RequestTag(scope, heap.METHOD_CODES.get(scope.get("method", ""), heap.METHOD_CODES["OTHER"])) \
            if tagging else None
        previous = TAG_VAR.get()
        TAG_VAR.set(tag)
        try:
            await app(scope, receive, send)
        finally:
            # set back, never reset(): resetting to "unset" runs CPython's contextvar_del, whose
            # HAMT allocation can be sampled, and the sample's PyContextVar_Get then caches the
            # tag as a borrowed pointer that outlives it: the next sample in this task read a
            # freed tag (a crash seen here). set() ends by caching the new value instead.
            TAG_VAR.set(previous)
            if tag is not None:
                tag.close(0)
            if not seen:
                _note_route(scope, seen)

    return tagged_app


def _note_route(scope: dict[str, Any], seen: dict[str, str]) -> None:
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        seen["route"] = path
    code = getattr(scope.get("endpoint"), "__code__", None)
    if code is not None:
        seen["handler"] = f"{scope['endpoint'].__qualname__} at {_short(code.co_filename)}:{code.co_firstlineno}"


def _value(option: Any, i: int) -> Any:
    return option(i) if callable(option) else option


class LeakCheck:
    """Drives one ASGI app's endpoints and decides whether they leak; made by :func:`leak_check`."""

    def __init__(self, app: Any, *, max_retained_per_call: object = DEFAULT_LIMIT, times: int = 1000,
                 warmup: int | None = None, batches: int = 16, base_url: str = "http://testserver",
                 allocator: str = "auto") -> None:
        if not callable(app):
            raise ValueError(f"app must be an ASGI application, got {type(app).__name__}")
        if allocator not in ("auto", "sampler", "tracemalloc"):
            raise ValueError(f"allocator must be one of 'auto', 'sampler', 'tracemalloc'; got {allocator!r}")
        if allocator == "sampler" and not heap.AVAILABLE:
            raise ValueError(f"allocator='sampler' is not available here: {heap.UNAVAILABLE_REASON}")
        self.app = app
        self.limit_bytes = parse_size(max_retained_per_call)
        self.times = _count("times", times, minimum=1)
        self.warmup = None if warmup is None else _count("warmup", warmup, minimum=0)
        self.batches = _count("batches", batches, minimum=4)
        self.base_url = base_url
        self.allocator = "sampler" if allocator == "auto" and heap.AVAILABLE else (
            "tracemalloc" if allocator == "auto" else allocator)

    def call(self, method: str, path: str | Callable[[int], str], *, times: int | None = None,
             warmup: int | None = None, max_retained_per_call: object = None, **request: Any) -> LeakReport:
        """Call ``method path`` ``times`` times after a warm-up; raise :class:`LeakFound` if it leaks.

        ``path`` and the values of ``request`` (httpx keywords: ``json``, ``params``,
        ``headers``, ...) may be callables taking the call's index, to vary each call.
        Returns the :class:`LeakReport` when the endpoint stays within the limit.
        """
        __tracebackhide__ = True  # pytest shows the test's line and the message, not asyncio's frames
        report = self.measure(method, path, times=times, warmup=warmup,
                              max_retained_per_call=max_retained_per_call, **request)
        if report.leaking:
            raise LeakFound(report)
        return report

    async def acall(self, method: str, path: str | Callable[[int], str], *, times: int | None = None,
                    warmup: int | None = None, max_retained_per_call: object = None, **request: Any) -> LeakReport:
        """:meth:`call` for a running event loop (an async test)."""
        __tracebackhide__ = True
        report = await self.ameasure(method, path, times=times, warmup=warmup,
                                     max_retained_per_call=max_retained_per_call, **request)
        if report.leaking:
            raise LeakFound(report)
        return report

    def measure(self, method: str, path: str | Callable[[int], str], **options: Any) -> LeakReport:
        """:meth:`call` without raising: the report, leaking or not."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise LeakCheckError("call() and measure() run their own event loop; in an async test use "
                                 "await leak_check(app).acall(...)")
        return asyncio.run(self.ameasure(method, path, **options))

    async def ameasure(self, method: str, path: str | Callable[[int], str], *, times: int | None = None,
                       warmup: int | None = None, max_retained_per_call: object = None,
                       **request: Any) -> LeakReport:
        """:meth:`measure` for a running event loop."""
        require_extra("pytest", "httpx")
        import httpx

        times = self.times if times is None else _count("times", times, minimum=1)
        limit = self.limit_bytes if max_retained_per_call is None else parse_size(max_retained_per_call)
        warm = self.warmup if warmup is None else _count("warmup", warmup, minimum=0)
        if warm is None:
            warm = min(max(times // 5, 20), 500)
        batches = min(self.batches, times)
        seen: dict[str, str] = {}
        engine: _Sampler | _Tracemalloc = _Sampler() if self.allocator == "sampler" else _Tracemalloc()
        lifespan = _Lifespan(self.app)
        await lifespan.startup()
        transport = httpx.ASGITransport(app=_tagged(self.app, lifespan, self.allocator == "sampler", seen))
        try:
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as client:
                async def run(start: int, count: int) -> None:
                    for i in range(start, start + count):
                        kwargs = {key: _value(value, i) for key, value in request.items()}
                        url = _value(path, i)
                        response = await client.request(method, url, **kwargs)
                        if response.status_code not in _OK_STATUS:
                            raise LeakCheckError(
                                f"{method.upper()} {url} answered {response.status_code} on call {i + 1}: "
                                f"{response.text[:200]!r}; a leak check needs a working call")

                engine.start()
                # Everything alive after the warm-up is frozen out of the collector, so the full
                # collection after each batch scans only what the calls made: in a test process
                # holding pytest, FastAPI and pandas one gc.collect() took ~75 ms, 17 per check.
                # What was frozen stays in the baseline and is never counted as growth.
                freezing = gc.get_freeze_count() == 0  # leave a process that froze its own heap alone
                try:
                    await run(0, max(warm, 1))
                    gc.collect()
                    if freezing:
                        gc.freeze()
                    base_total, base_sites = engine.measure(sites=True)
                    points = [(0, 0)]
                    done = 0
                    for b in range(batches):
                        size = times * (b + 1) // batches - done
                        await run(warm + done, size)
                        done += size
                        gc.collect()
                        total, sites = engine.measure(sites=b == batches - 1)
                        points.append((done, total - base_total))
                finally:
                    if freezing:
                        gc.unfreeze()
                    engine.stop()
        finally:
            await lifespan.shutdown()
        late = points[len(points) // 2:]
        endpoint = f"{method.upper()} {seen.get('route') or (path if isinstance(path, str) else path(0))}"
        return LeakReport(endpoint=endpoint, handler=seen.get("handler"), calls=times, warmup=max(warm, 1), limit_bytes=limit,
                          points=tuple(points), per_call_bytes=_slope(points), late_per_call_bytes=_slope(late),
                          engine=engine.name, lines=_lines(base_sites, sites, times, limit))


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def leak_check(app: Any, **options: Any) -> LeakCheck:
    """A :class:`LeakCheck` of ``app``: ``leak_check(app).call("GET", "/items", times=1000)``.

    Options: ``max_retained_per_call`` (default ``"512 B"``; see :func:`parse_size`),
    ``times`` (1000), ``warmup`` (a fifth of ``times``, 20 to 500), ``batches`` (16),
    ``base_url``, ``allocator`` (``auto``, ``sampler``, ``tracemalloc``).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown leak check option(s) {', '.join(unknown)}; valid options: {', '.join(OPTIONS)}")
    return LeakCheck(app, **options)

