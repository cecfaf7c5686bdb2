"""The dashboard server: a JSON API over loaded sessions, plus the static page.

The payloads come from :mod:`.payloads` (the saved HTML report embeds the
same ones); this module finds session files, loads and caches them per file,
and serves. Starlette is imported inside :func:`create_app` only.

Security: the app serves only data loaded from PATH (session ids are looked
up in the loaded set, never joined into paths), static files only from the
package's ``static`` directory, no CORS headers, a strict
Content-Security-Policy, and it answers only requests whose Host header names
a loopback address with the server's port (DNS-rebinding defence) unless
other hosts are allowed explicitly.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from leakyspanner import discovery, errors, schema
from leakyspanner.analysis.load import Sessions, load
from leakyspanner.analysis.stats import endpoint_table
from leakyspanner.analysis.verdict import Verdict
from leakyspanner.formatting import units
from leakyspanner.ui.payloads import (
    MAX_POINTS,
    compare_payload,
    endpoint_distribution,
    fleet_payload,
    session_detail,
    session_row,
    snapshot_diff,
    verdict_or_error,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from leakyspanner._asgi import ASGIApp, Receive, Scope, Send

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "Dashboard",
    "HostCheckMiddleware",
    "LOOPBACK_HOSTS",
    "MAX_LOOKUPS",
    "MAX_POINTS",
    "STATIC_DIR",
    "SecurityHeadersMiddleware",
    "create_app",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Host names the dashboard answers to unless told otherwise.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon"}


# -------------------------------------------------------------------- cache

#: Client-chosen lookups (endpoint histograms, snapshot diffs, comparisons) kept per file.
MAX_LOOKUPS = 128


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _session_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Session files under ``root`` as ``load`` finds them (:mod:`leakyspanner.discovery`), and
    those left out because a symlink leads outside ``root``."""
    if root.is_file():
        return [root], []
    found = discovery.session_files(root)
    base = root.resolve()
    outside = [p for p in found if not discovery.inside(p, base)]
    return discovery.preferred(p for p in found if p not in outside), outside


def _of(frame: pd.DataFrame, session_id: str) -> pd.DataFrame:
    return frame[(frame["session_id"] == session_id).to_numpy()]


def _renamed(sessions: Sessions, old: str, new: str) -> Sessions:
    """The same sessions with one id replaced in every frame (two files with one session id)."""
    frames = {}
    for f in fields(sessions):
        frame = getattr(sessions, f.name)
        if isinstance(frame, pd.DataFrame):
            frame = frame.copy()
            frame["session_id"] = frame["session_id"].where(frame["session_id"] != old, new)
            frames[f.name] = frame
    return replace(sessions, **frames)


def _servable(session_id: str) -> str:
    """An id that fits in one URL path segment: ``/`` and ``\\`` become ``_``, dot-segments get one."""
    served = session_id.replace("/", "_").replace("\\", "_")
    return f"_{served}" if served in ("", ".", "..") else served


def _known_endpoints(sessions: Sessions, session_id: str) -> frozenset[tuple[str, str]]:
    """(method, route) pairs :func:`endpoint_distribution` has something for."""
    table = endpoint_table(sessions, session_id=session_id)
    requests = _of(sessions.requests, session_id)[["method", "route"]].drop_duplicates()
    pairs = [*zip(table["method"], table["route"]), *zip(requests["method"], requests["route"])]
    return frozenset((m, r) for m, r in pairs if isinstance(m, str) and isinstance(r, str))


def _combined(parts: list[Sessions]) -> Sessions:
    """Sessions of several files as one, with the frames the fleet verdict reads (the others empty)."""
    if len(parts) == 1:
        return parts[0]
    read = ("sessions", "samples", "requests", "heap_endpoints")
    frames = {}
    for f in fields(Sessions):
        if f.name == "skipped":
            continue
        # empty frames left out: concatenating them is deprecated in pandas and changes no row
        each = [getattr(p, f.name) for p in parts] if f.name in read else [getattr(parts[0], f.name).iloc[:0]]
        frames[f.name] = pd.concat([x for x in each if len(x)] or each[:1], ignore_index=True)
    return Sessions(**frames)


@dataclass
class _Entry:
    """One loaded file and what was computed from it, valid while its (size, mtime) holds.

    ``lock`` is held while computing from this file's sessions, so a big session's
    first verdict delays only requests about that file. ``derived`` holds one
    value per session and kind (verdict, list row, detail); ``lookups`` the
    client-chosen ones, least recently used dropped beyond :data:`MAX_LOOKUPS`.
    """

    path: Path
    key: tuple[int, int]
    sessions: Sessions
    cost_s: float  # loading plus everything computed from it so far
    loaded_at: float
    ids: dict[str, str] = field(default_factory=dict)  # id in the file -> id served
    derived: dict[Any, Any] = field(default_factory=dict)
    lookups: OrderedDict[Any, Any] = field(default_factory=OrderedDict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def version(self) -> str:
        return f"{self.key[0]}-{self.key[1]}"


class Dashboard:
    """Loaded sessions of PATH, cached per file by (path, size, mtime), and the API payloads.

    With ``follow``, a file that grew is reloaded when its data is next asked
    for (at most every ``max(1 s, 2 x the time spent loading and analysing
    it)``, so a big live session cannot keep the server busy) and new session files
    under a directory are picked up; a file that failed to load is tried again
    only once its size or mtime changes. Thread-safe: the server calls it from
    its thread pool. ``_lock`` guards only the maps of files and ids and is never
    held while loading or computing; that happens under the file's own lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, follow: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 project_root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(path)
        self.follow = follow
        # The folder whose .py files the growing line's preview may quote: fixed at start.
        self.project_root = os.fspath(project_root) if project_root is not None else os.getcwd()
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Path, _Entry] = {}
        self._where: dict[str, _Entry] = {}
        self._failed: dict[Path, tuple[tuple[int, int], str]] = {}  # file -> (stat key, why) when it failed
        self._outside: list[Path] = []
        self._loaders: dict[Path, threading.Lock] = {}
        self._last_scan = clock()
        # The fleet verdict across every served file: (their paths and stat keys, payload, when, cost).
        self._fleet_lock = threading.Lock()
        self._fleet: tuple[Any, dict[str, Any] | None, float, float] | None = None
        if not self.root.exists():
            raise errors.NotALogError(f"{self.root} does not exist: pass a session log file or a directory of them")
        files, self._outside = _session_files(self.root)
        for file in files:
            self._load(file, explicit=self.root.is_file())
        if not self._where:
            detail = f" ({'; '.join(self.problems)})" if self.problems else ""
            raise errors.NotALogError(
                f"{self.root} holds no leakyspanner session{detail}: point inspect at a "
                f"{schema.JSONL_SUFFIX} or {schema.LOG_SUFFIX} file written by leakyspanner, or a directory of them")
        # Verdicts are the slow part (about a second for a 24-hour session): work
        # them out in the background so the first page view finds them ready.
        threading.Thread(target=self._warm, name="ui-verdict-warmup", daemon=True).start()

    @property
    def problems(self) -> list[str]:
        """Why session files under PATH are not shown: one line per file, for as long as it stays so."""
        with self._lock:
            failed = [why for file, (_, why) in sorted(self._failed.items())
                      if file.name.startswith(schema.STEM_PREFIX)]
            outside = [f"{file} is not served: it links outside {self.root}" for file in self._outside]
        return failed + outside

    def _warm(self) -> None:
        for session_id in self.session_ids:
            entry = self._entry(session_id)
            if entry is not None:
                self._verdict(entry, session_id)

    # -- loading
    def _load(self, file: Path, *, explicit: bool = False) -> None:
        """(Re)load ``file`` unless it is loaded, or failed, at its current size and mtime."""
        with self._lock:
            loader = self._loaders.setdefault(file, threading.Lock())
        with loader:  # one load per file at a time; requests for other files go on
            key = _stat_key(file)
            with self._lock:
                current, failed = self._entries.get(file), self._failed.get(file)
            if key is None or (current is not None and current.key == key) or (failed and failed[0] == key):
                return
            started = time.perf_counter()
            try:
                sessions = load(file, warn=False)
            except Exception as exc:  # one unreadable file must not hide the others
                if explicit:
                    raise
                why = str(exc) if isinstance(exc, errors.LeakyspannerError) else f"{file}: {type(exc).__name__}: {exc}"
                with self._lock:
                    self._failed[file] = (key, why)
                return
            entry = _Entry(file, key, sessions, time.perf_counter() - started, self._clock())
            with self._lock:
                self._publish(entry, current)

    def _publish(self, entry: _Entry, old: _Entry | None) -> None:
        """Serve ``entry``'s sessions (under ``_lock``): ids kept across reloads, unique, one path segment."""
        for sid in entry.sessions.session_ids:
            served = next((s for s, e in self._where.items() if e is old and old.ids.get(sid) == s), None)
            if served is None:
                served = _servable(sid)
                while served in self._where and self._where[served].path != entry.path:
                    served += "'"
            if served != sid:
                entry.sessions = _renamed(entry.sessions, sid, served)
            entry.ids[sid] = served
        if old is not None:
            for sid in [s for s, e in self._where.items() if e is old]:
                del self._where[sid]
        self._entries[entry.path] = entry
        self._failed.pop(entry.path, None)
        for served in entry.ids.values():
            self._where[served] = entry

    def _fresh(self, entry: _Entry) -> _Entry:
        """The entry, reloaded first when following and its file changed (throttled)."""
        if not self.follow:
            return entry
        key = _stat_key(entry.path)
        due = entry.loaded_at + max(1.0, 2 * entry.cost_s) <= self._clock()
        if key is not None and key != entry.key and due:
            self._load(entry.path)
            with self._lock:
                return self._entries.get(entry.path, entry)
        return entry

    def _scan(self) -> None:
        """Pick up new session files under a followed directory, at most once a second."""
        if not self.follow or self.root.is_file():
            return
        with self._lock:
            if self._clock() - self._last_scan < 1.0:
                return
            self._last_scan = self._clock()
        files, outside = _session_files(self.root)
        with self._lock:
            self._outside = outside
            new = [file for file in files if file not in self._entries]
        for file in new:
            self._load(file)

    def _entry(self, session_id: str) -> _Entry | None:
        with self._lock:
            entry = self._where.get(session_id)
        if entry is None:
            return None
        entry = self._fresh(entry)
        return entry if session_id in entry.ids.values() else None

    def _derived(self, entry: _Entry, key: Any, make: Callable[[], Any]) -> Any:
        with entry.lock:
            if key not in entry.derived:
                started = time.perf_counter()
                entry.derived[key] = make()
                entry.cost_s += time.perf_counter() - started
            return entry.derived[key]

    def _lookup(self, entry: _Entry, key: Any, make: Callable[[], Any]) -> Any:
        """A client-chosen value: kept among the entry's most recent :data:`MAX_LOOKUPS`, None never kept."""
        with entry.lock:
            if key in entry.lookups:
                entry.lookups.move_to_end(key)
                return entry.lookups[key]
            started = time.perf_counter()
            value = make()
            entry.cost_s += time.perf_counter() - started
            if value is not None:
                entry.lookups[key] = value
                while len(entry.lookups) > MAX_LOOKUPS:
                    entry.lookups.popitem(last=False)
            return value

    def _verdict(self, entry: _Entry, session_id: str) -> Verdict | BaseException:
        return self._derived(entry, ("verdict", session_id),  # type: ignore[no-any-return]
                             lambda: verdict_or_error(entry.sessions, session_id))

    # -- payloads
    @property
    def session_ids(self) -> list[str]:
        """Ids of the loaded sessions, oldest first."""
        with self._lock:
            where = dict(self._where)
        return sorted(where, key=lambda s: (self._start(where[s], s), s))

    @staticmethod
    def _start(entry: _Entry, session_id: str) -> float:
        value = _of(entry.sessions.sessions, session_id)["start_ts"].iloc[0]
        return float(value) if pd.notna(value) else 0.0

    def sessions(self) -> dict[str, Any]:
        """``/api/sessions``: every session, newest first."""
        self._scan()
        with self._lock:
            where = list(self._where.items())
        rows = []
        for sid, entry in where:
            entry = self._fresh(entry)
            if sid not in entry.ids.values():
                continue
            row = self._derived(entry, ("row", sid), functools.partial(self._row, entry, sid))
            rows.append({**row, "version": entry.version})
        rows.sort(key=lambda r: (r.get("start_ts") or 0, r["session_id"]), reverse=True)
        return {"root": str(self.root), "follow": self.follow, "problems": self.problems, "sessions": rows,
                "units": units()}

    def fleet(self) -> dict[str, Any] | None:
        """``/api/fleet``: the fleet verdict across every listed session; None when they come from one host.

        Worked out again when a file changed, but at most every ``max(1 s, 2 x its cost)``
        (a followed live session changes every second).
        """
        self._scan()
        with self._lock:
            entries = list({id(e): e for e in self._where.values()}.values())
        entries = sorted((self._fresh(e) for e in entries), key=lambda e: e.path)
        key = tuple((e.path, e.key) for e in entries)
        with self._fleet_lock:
            cached = self._fleet
            if cached is not None and (cached[0] == key or self._clock() < cached[2] + max(1.0, 2 * cached[3])):
                return cached[1]
            started = time.perf_counter()
            payload = fleet_payload(_combined([e.sessions for e in entries]))
            self._fleet = (key, payload, self._clock(), time.perf_counter() - started)
            return payload

    def _row(self, entry: _Entry, session_id: str) -> dict[str, Any]:
        return session_row(entry.sessions, session_id, self._verdict(entry, session_id))

    def version(self, session_id: str) -> str | None:
        """Changes whenever the session's file was reloaded; None for an unknown id."""
        entry = self._entry(session_id)
        return None if entry is None else entry.version

    def detail(self, session_id: str) -> dict[str, Any] | None:
        """``/api/sessions/{id}``; None for an unknown id."""
        entry = self._entry(session_id)
        if entry is None:
            return None
        payload = self._derived(entry, ("detail", session_id), lambda: session_detail(
            entry.sessions, session_id, self._verdict(entry, session_id), root=self.project_root))
        return {**payload, "version": entry.version, "follow": self.follow}

    def endpoint(self, session_id: str, method: str, route: str) -> dict[str, Any] | None:
        """``/api/sessions/{id}/endpoint``; None for an unknown session or endpoint (never cached)."""
        entry = self._entry(session_id)
        if entry is None:
            return None
        known = self._derived(entry, ("endpoints", session_id), lambda: _known_endpoints(entry.sessions, session_id))
        if (method, route) not in known:
            return None
        return self._lookup(entry, ("endpoint", session_id, method, route), lambda: endpoint_distribution(  # type: ignore[no-any-return]
            entry.sessions, session_id, method, route, self._verdict(entry, session_id)))

    def diff(self, session_id: str, a: int, b: int) -> dict[str, Any] | None:
        """``/api/sessions/{id}/diff``; None for an unknown session or snapshot (never cached)."""
        entry = self._entry(session_id)
        if entry is None:
            return None
        return self._lookup(entry, ("diff", session_id, a, b),  # type: ignore[no-any-return]
                            lambda: snapshot_diff(entry.sessions, session_id, a, b))

    def compare(self, before_id: str, after_id: str) -> dict[str, Any] | None:
        """``/api/compare``; None when either id is unknown."""
        before, after = self._entry(before_id), self._entry(after_id)
        if before is None or after is None:
            return None
        key = ("compare", before_id, after_id, after.path, after.key)
        return self._lookup(before, key, lambda: compare_payload(  # type: ignore[no-any-return]
            before.sessions, before_id, after.sessions, after_id))


# ------------------------------------------------------------------ the app

def _host_allowed(host_header: str, server: Any, allowed: Sequence[str]) -> bool:
    """Host is ``name[:port]`` with an allowed name and the port the server listens on."""
    if "*" in allowed:
        return True
    name, port = host_header.lower(), ""
    if name.startswith("["):
        close = name.find("]")
        name, port = name[:close + 1], name[close + 1:].removeprefix(":")
    elif ":" in name:
        name, _, port = name.rpartition(":")
    if name not in allowed:
        return False
    if not isinstance(server, (tuple, list)) or len(server) < 2 or server[1] is None:
        return True  # a unix socket: no port to compare
    return (port or "80") == str(server[1])


class HostCheckMiddleware:
    """Answers 400 (a websocket: refuses it) unless the Host header names an allowed host with the server's port."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), "")
        if _host_allowed(host, scope.get("server"), self.allowed_hosts):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # closing before accept makes the server refuse the handshake (403)
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid host header"})
            return
        body = b"Invalid host header: this dashboard answers only on its own loopback address.\n"
        await send({"type": "http.response.start", "status": 400, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            *_SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": body})


_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeadersMiddleware:
    """Adds the CSP, nosniff and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in _SECURITY_HEADERS}
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in names]
                message = {**message, "headers": [*headers, *_SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _static_file(name: str) -> Path | None:
    """The file ``name`` inside STATIC_DIR, or None when it escapes it or is not a served type."""
    if "\x00" in name or "\\" in name:
        return None
    try:
        path = (STATIC_DIR / name).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(STATIC_DIR) or path.suffix not in _STATIC_TYPES or not path.is_file():
        return None
    return path


def create_app(path: str | os.PathLike[str], *, follow: bool = True,
               allowed_hosts: Sequence[str] | None = None) -> Starlette:
    """The dashboard for a session log file or a directory of sessions.

    Loads everything once (raising :class:`~leakyspanner.errors.NotALogError`
    when PATH holds no session). ``follow`` reloads files that grow.
    ``allowed_hosts`` adds Host names besides :data:`LOOPBACK_HOSTS` (``"*"``
    accepts any: only for a dashboard bound to a non-loopback address on purpose).
    """
    errors.require_extra("ui", "starlette")
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    dashboard = Dashboard(path, follow=follow)

    def not_found(what: str) -> JSONResponse:
        return JSONResponse({"error": f"{what} not found"}, status_code=404)

    def bad_request(what: str) -> JSONResponse:
        return JSONResponse({"error": what}, status_code=400)

    def page(request: Request) -> Response:
        return Response((STATIC_DIR / "index.html").read_bytes(), media_type=_STATIC_TYPES[".html"])

    def static(request: Request) -> Response:
        file = _static_file(request.path_params["name"])
        if file is None:
            return Response(b"not found\n", status_code=404, media_type="text/plain")
        return Response(file.read_bytes(), media_type=_STATIC_TYPES[file.suffix])

    def sessions(request: Request) -> JSONResponse:
        return JSONResponse(dashboard.sessions())

    def fleet(request: Request) -> JSONResponse:
        return JSONResponse({"fleet": dashboard.fleet()})

    def detail(request: Request) -> Response:
        sid = request.path_params["session_id"]
        since = request.query_params.get("since")
        if since is not None and since == dashboard.version(sid):
            return Response(status_code=204)  # nothing new since the page's copy
        payload = dashboard.detail(sid)
        return not_found(f"session {sid!r}") if payload is None else JSONResponse(payload)

    def endpoint(request: Request) -> JSONResponse:
        sid = request.path_params["session_id"]
        method, route = request.query_params.get("method"), request.query_params.get("route")
        if method is None or route is None:
            return bad_request("endpoint needs ?method=...&route=...")
        payload = dashboard.endpoint(sid, method, route)
        return not_found(f"endpoint {method} {route} of session {sid!r}") if payload is None else JSONResponse(payload)

    def diff(request: Request) -> JSONResponse:
        sid = request.path_params["session_id"]
        try:
            a, b = int(request.query_params["a"]), int(request.query_params["b"])
        except (KeyError, ValueError):
            return bad_request("diff needs two snapshot numbers: ?a=<seq>&b=<seq>")
        payload = dashboard.diff(sid, a, b)
        return not_found(f"snapshots {a} and {b} of session {sid!r}") if payload is None else JSONResponse(payload)

    def compare_view(request: Request) -> JSONResponse:
        before, after = request.query_params.get("before"), request.query_params.get("after")
        if not before or not after:
            return bad_request("compare needs two session ids: ?before=<id>&after=<id>")
        payload = dashboard.compare(before, after)
        return not_found(f"session {before!r} or {after!r}") if payload is None else JSONResponse(payload)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name:path}", static, methods=["GET"]),
        Route("/api/sessions", sessions, methods=["GET"]),
        Route("/api/fleet", fleet, methods=["GET"]),
        Route("/api/sessions/{session_id}", detail, methods=["GET"]),
        Route("/api/sessions/{session_id}/endpoint", endpoint, methods=["GET"]),
        Route("/api/sessions/{session_id}/diff", diff, methods=["GET"]),
        Route("/api/compare", compare_view, methods=["GET"]),
    ]
    hosts = [*LOOPBACK_HOSTS, *(allowed_hosts or ())]
    app = Starlette(routes=routes, middleware=[Middleware(HostCheckMiddleware, allowed_hosts=hosts),
                                               Middleware(SecurityHeadersMiddleware)])
    app.state.dashboard = dashboard
    return app
