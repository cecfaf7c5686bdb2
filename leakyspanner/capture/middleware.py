"""Owns each request's state while it runs (``_Exchange``), written on the event loop's thread only.

The pure ASGI middleware: watches each request, changes nothing.

Per-request state lives in one slotted object that is also the app's
``send``. The request path reads the clock, adds the request to its endpoint's
counter and, for a measured request, reads RSS (one ``pread`` at each end)
and traced memory and appends one tuple to a deque: no I/O, no lock, no
await of its own. Every message, byte and exception passes through untouched.

Which requests are measured: a syscall costs more than everything else this
middleware does (on the benchmark VM two /proc reads per request cost about
13 µs each under load, a quarter of a tiny endpoint's CPU), so RSS is read
for about one request per ``request_rss_interval_seconds`` (5 ms by default)
at most. Each request is measured with the same probability, set per window
(0.1 s, or 64 requests if sooner) from the request rate seen since the previous one opened, so the
measured ones are a uniform random sample: choosing "the first request after
5 ms" instead would favour requests that follow slow ones. Below the target
rate every request is measured. Only measured requests become request
records; counts, errors and durations stay exact for every request, on the
endpoint counters. Traced memory is read for the same sample: under
tracemalloc each ``get_traced_memory()`` call allocates a tuple and two ints,
and every allocation there costs a traceback capture.

Two implementations of the same request path, chosen once when the profiler
is built (``request_path``: the header and ``stats()`` say which one runs):
the C extension ``_reqpath`` where it is built, and the pure-Python
``_Exchange`` below everywhere else. Under the C one a request costs about a
third of the instructions (``python -m benchmarks.bench_instructions``).
"""

from __future__ import annotations

import asyncio
import importlib
import random
import tracemalloc
from collections.abc import Awaitable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._asgi import ASGIApp, Message, Receive, Scope, Send
from . import heap
from .heapsites import TAG_VAR
from .writer import REQUEST

if TYPE_CHECKING:
    from .profiler import Profiler

__all__ = ["LeakyspannerMiddleware", "REQUEST_PATHS", "REQUEST_PATH_C_REASON", "resolve_request_path"]

#: ``request_path`` values: ``auto`` takes the C extension where it is built
REQUEST_PATHS = ("auto", "c", "python")
_reqpath: Any = None
#: why the C request path is not available here (None when it is)
REQUEST_PATH_C_REASON: str | None = None
try:
    _reqpath = importlib.import_module("._reqpath", __package__)
except ModuleNotFoundError:
    REQUEST_PATH_C_REASON = "the C extension leakyspanner.capture._reqpath is not built (no C compiler when installed)"
except ImportError as exc:  # the module refuses this interpreter and says why
    REQUEST_PATH_C_REASON = str(exc)


def resolve_request_path(choice: str) -> str:
    """The implementation a ``request_path`` choice runs: ``"c"`` or ``"python"``; ValueError if it cannot."""
    if choice not in REQUEST_PATHS:
        raise ValueError(f"request_path must be one of {', '.join(map(repr, REQUEST_PATHS))}; got {choice!r}")
    if choice == "c" and _reqpath is None:
        raise ValueError(f"request_path='c' is not available here: {REQUEST_PATH_C_REASON}; "
                         "use request_path='auto' (falls back to the Python path) or 'python'")
    return "c" if choice != "python" and _reqpath is not None else "python"

_get_traced = tracemalloc.get_traced_memory
_random = random.random
_RequestTag = heap.RequestTag if heap.AVAILABLE else None
_METHOD_CODES = heap.METHOD_CODES
_OTHER_METHOD = heap.METHOD_CODES["OTHER"]
#: requests are counted per window (at least this long, closed by the first request
#: after it); the next window measures each request with probability
#: target rate / the rate the last window saw, so an idle gap counts as slow traffic
_WINDOW_S = 0.1
#: ...or closed after this many requests: after an idle gap the first window measures every
#: request, and a burst must not pay that (two /proc reads each) for a whole 0.1 s
#: (tests/capture/test_reqpath.py: a burst of 500 measures at most 64)
_WINDOW_MAX_REQUESTS = 64


#: the loop of an app served by another async library (trio through anyio): no tasks to count
NOT_ASYNCIO = object()


def _running_loop() -> object:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return NOT_ASYNCIO


class _Exchange:
    """One request in flight: the app's ``send``, watching the messages go by.

    One object with slots instead of closures: a closure over this much state
    allocates a cell per variable, and under tracemalloc every allocation
    costs a traceback capture on the request path.
    """

    __slots__ = ("profiler", "send", "scope", "method", "root_before", "t0", "rss0", "traced0", "inflight0",
                 "status", "done", "tag")
    profiler: Profiler
    send: Send
    scope: Scope
    method: str
    root_before: str
    t0: float
    rss0: int | None
    traced0: int | None  # traced bytes at the start (tracemalloc), None when not measured
    inflight0: int  # requests in flight once this one started, itself included
    status: int
    done: bool
    tag: Any  # the heap engine's RequestTag while it runs, else None

    def __call__(self, message: Message) -> Awaitable[None]:
        """Look at the message, then hand back the server's own awaitable.

        Not a coroutine of ours: that would add a frame to every message, which
        a 20-chunk stream pays 21 times. So the request ends when its last body
        chunk is handed to the server, and a malformed message reaches the
        server untouched.
        """
        try:
            message_type = message["type"]
            if message_type == "http.response.body":
                # a stream's chunks but the last say more_body: one lookup and they pass
                if not message.get("more_body", False) and not self.done:
                    self.finish()
            elif message_type == "http.response.start":
                self.status = message["status"]
            elif message_type == "websocket.close":
                self.status = message.get("code", 1000)
            elif message_type == "websocket.http.response.start":  # handshake denied with an HTTP response
                self.status = message["status"]
        except Exception as exc:
            self.profiler._internal_error("send", exc)
        return self.send(message)

    def finish(self) -> None:
        """Count the request on its endpoint's counter; a measured one also becomes a record.

        Every request is counted exactly (calls, errors, duration) on a counter
        this thread alone writes. Only the random sample with RSS read at both
        ends becomes a request record for the writer: formatting a line per
        request cost more CPU than all the rest, for records that carry no memory
        reading.
        """
        self.done = True
        p = self.profiler
        try:
            t1 = perf_counter()
            rss0 = self.rss0
            rss1 = None if rss0 is None else p._read_rss()
            in1 = p._inflight
            p._inflight = in1 - 1
            scope = self.scope
            route = scope.get("route")
            key = id(route if route is not None else scope.get("endpoint"))
            by_method = p._counts.get(key)
            counter = by_method.get(self.method) if by_method is not None else None
            if counter is None:
                counter = p._counter(key, route, scope.get("endpoint"), self.method,
                                     scope.get("root_path", ""), self.root_before)
            duration = t1 - self.t0
            counter[0] += 1
            status = self.status
            if status >= 500:
                counter[1] += 1
            counter[2] += duration
            if duration > counter[3]:
                counter[3] = duration
            if self.tag is not None:  # allocations from now on (spawned tasks) keep the route
                self.tag.close(key if route is not None or scope.get("endpoint") is not None else 0)
            if rss0 is not None:
                tr0 = self.traced0
                tr1 = _get_traced()[0] if tr0 is not None and tracemalloc.is_tracing() else None
                buffer = p._buffer
                if len(buffer) < p._buffer_cap:
                    # plain values and the (method, route) tuple of strings: untracked by the first
                    # young collection, so records waiting for the writer never reach the old generations
                    buffer.append((REQUEST, self.t0, duration, counter[4], status, rss0, rss1, tr0, tr1,
                                   self.inflight0, in1))
                else:
                    p.requests_dropped += 1
        except Exception as exc:
            p._internal_error("request end", exc)


class LeakyspannerMiddleware:
    """Records one request record per HTTP request or websocket session.

    Constructing one gives the implementation ``profiler.request_path`` names:
    this class (pure Python) or its C-backed subclass.
    """

    def __new__(cls, app: ASGIApp, profiler: Profiler) -> LeakyspannerMiddleware:
        if cls is LeakyspannerMiddleware and getattr(profiler, "request_path", "python") == "c":
            cls = _CLeakyspannerMiddleware
        return object.__new__(cls)

    def __init__(self, app: ASGIApp, profiler: Profiler) -> None:
        self.app = app
        self.profiler = profiler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        p = self.profiler
        if scope_type == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if (scope_type != "http" and scope_type != "websocket") or not p._active:
            await self.app(scope, receive, send)
            return
        try:
            if p._loop is None:
                p._first_request(_running_loop())
            x = _Exchange()
            x.profiler = p
            x.send = send
            x.scope = scope
            x.root_before = scope.get("root_path", "")
            x.method = scope.get("method", "GET") if scope_type == "http" else "WS"
            x.status = 0
            x.done = False
            x.t0 = t0 = perf_counter()
            if t0 >= p._window_end or p._window_requests >= _WINDOW_MAX_REQUESTS:
                # a new window: this probability keeps reads near the target rate
                n = p._window_requests  # requests since the last window opened, (t0 - its start) ago
                p._rss_p = min(1.0, (t0 - p._window_start) * p._rss_per_s / n) if n else 1.0
                p._window_requests = 0
                p._window_start = t0
                p._window_end = t0 + _WINDOW_S
            p._window_requests += 1
            if p._rss_p >= 1.0 or _random() < p._rss_p:  # measured: RSS (and traced memory) at both ends
                x.rss0 = p._read_rss()
                x.traced0 = _get_traced()[0] if p._tracing else None
            else:
                x.rss0 = x.traced0 = None
            # last, so that a failure above leaves neither a tag set nor a request in flight
            if p._heap_tags and _RequestTag is not None:
                # the sampled heap engine reads the route from this tag when it samples an allocation
                x.tag = tag = _RequestTag(scope, _METHOD_CODES.get(x.method, _OTHER_METHOD))
                # restored with set(), never reset(): see _reqpath.c's note on a sampled
                # allocation inside a context variable's deletion
                prev_tag = TAG_VAR.get()
                TAG_VAR.set(tag)
            else:
                x.tag = None
            p._inflight += 1
            x.inflight0 = p._inflight
        except Exception as exc:
            p._internal_error("request start", exc)
            await self.app(scope, receive, send)
            return

        try:
            await self.app(scope, receive, x)
        except BaseException:
            if x.status == 0:
                x.status = 500
            if not x.done:
                x.finish()
            raise
        finally:
            if x.tag is not None:
                TAG_VAR.set(prev_tag)
        if not x.done:
            if x.status == 0 and scope_type == "websocket":
                x.status = 1000
            x.finish()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass lifespan through, stopping the profiler (summary) before shutdown completes."""
        p = self.profiler

        async def receive_watching() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                try:  # the last sample before the app's own shutdown hooks close clients or re-enable gc
                    p._before_shutdown()
                except Exception as exc:
                    p._internal_error("lifespan", exc)
            elif message["type"] == "lifespan.startup":
                try:
                    p._first_request(_running_loop())
                except Exception as exc:
                    p._internal_error("lifespan", exc)
            return message

        async def send_watching(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                try:
                    p.stop()
                except Exception as exc:
                    p._internal_error("lifespan", exc)
            await send(message)

        await self.app(scope, receive_watching, send_watching)


class _CLeakyspannerMiddleware(LeakyspannerMiddleware):
    """The same middleware with the per-request bookkeeping in C (``_reqpath.c``).

    ``enter`` does what the Python path does before the app runs and returns
    the app's ``send`` (None: pass the request through unwatched); ``close``
    and ``fail`` what it does after. This coroutine keeps only the frame an
    empty middleware has, and the ``raise`` that hands the app's exception on
    untouched.
    """

    def __init__(self, app: ASGIApp, profiler: Profiler) -> None:
        super().__init__(app, profiler)
        # no tag type where the sampled heap engine will never run (basic, tracemalloc): one lookup less
        tag_type = _RequestTag if getattr(profiler, "heap_engine", "sampler") == "sampler" else None
        #: the C request path; benchmarks pin its RSS-sampling window through it
        self.request_path = _reqpath.RequestPath(
            profiler, _running_loop, TAG_VAR, tag_type, _METHOD_CODES, _OTHER_METHOD, _get_traced,
            tracemalloc.is_tracing, REQUEST)
        self._enter = self.request_path.enter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        x = self._enter(scope, send)
        if x is None:  # lifespan, another scope type, or capture off
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, x)
        except BaseException:
            x.fail()
            raise
        x.close()
