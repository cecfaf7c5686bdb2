"""The pure ASGI middleware: watches each request, changes nothing.

Per-request state lives in locals and closures. The request path reads the
clock, RSS (one ``pread``, shared between requests within half a millisecond)
and, when tracing, traced memory, then appends one tuple to a deque: no I/O,
no lock, no await of its own. Every message, byte
and exception passes through untouched.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from time import perf_counter
from typing import TYPE_CHECKING

from .._asgi import ASGIApp, Message, Receive, Scope, Send
from .writer import REQUEST

if TYPE_CHECKING:
    from .profiler import Profiler

__all__ = ["LeakyspannerMiddleware"]

_get_traced = tracemalloc.get_traced_memory
#: RSS costs a /proc read (about 1.5 µs); readings younger than this are shared
#: between concurrent requests, so under heavy load about 2k reads/s happen.
#: A request's end reading is its own unless another request read after it
#: started, so sequential requests always see their own allocations.
_RSS_SHARE_S = 0.0005


class LeakyspannerMiddleware:
    """Records one request record per HTTP request or websocket session."""

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
                p._first_request(asyncio.get_running_loop())
            read_rss = p._read_rss
            tracing = p._tracing
            root_before = scope.get("root_path", "")
            method = scope.get("method", "GET") if scope_type == "http" else "WS"
            p._inflight += 1
            in0 = p._inflight
            t0 = perf_counter()
            if t0 - p._rss_t < _RSS_SHARE_S:
                rss0 = p._rss
            else:
                rss0 = p._rss = read_rss()
                p._rss_t = t0
            tr0 = _get_traced()[0] if tracing else None
        except Exception as exc:
            p._internal_error("request start", exc)
            await self.app(scope, receive, send)
            return

        status = 0
        done = False

        def finish() -> None:
            nonlocal done
            done = True
            try:
                t1 = perf_counter()
                # reuse only a reading another request took after this one started
                if t0 < p._rss_t and t1 - p._rss_t < _RSS_SHARE_S:
                    rss1 = p._rss
                else:
                    rss1 = p._rss = read_rss()
                    p._rss_t = t1
                tr1 = _get_traced()[0] if tracing and tracemalloc.is_tracing() else None
                in1 = p._inflight
                p._inflight = in1 - 1
                buffer = p._buffer
                if len(buffer) < p._buffer_cap:
                    buffer.append((
                        REQUEST, t0, t1, method, scope.get("route"), scope.get("endpoint"),
                        scope.get("root_path", ""), root_before, status, rss0, rss1,
                        tr0, tr1 if tr0 is not None else None, in0, in1,
                    ))
                else:
                    p.requests_dropped += 1
            except Exception as exc:
                p._internal_error("request end", exc)

        async def send_watching(message: Message) -> None:
            nonlocal status
            await send(message)
            message_type = message["type"]
            if message_type == "http.response.start":
                status = message["status"]
            elif message_type == "http.response.body":
                if not done and not message.get("more_body", False):
                    finish()
            elif message_type == "websocket.close":
                status = message.get("code", 1000)
            elif message_type == "websocket.http.response.start":  # handshake denied with an HTTP response
                status = message["status"]

        try:
            await self.app(scope, receive, send_watching)
        except BaseException:
            if status == 0:
                status = 500
            if not done:
                finish()
            raise
        if not done:
            if status == 0 and scope_type == "websocket":
                status = 1000
            finish()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass lifespan through, stopping the profiler (summary) before shutdown completes."""
        p = self.profiler

        async def receive_watching() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    p._first_request(asyncio.get_running_loop())
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
