"""The dashboard server: a JSON API over loaded sessions, plus the static page.

Every number comes from the analysis package (``diagnose``, ``compare``,
``endpoint_table``, ``site_diff``, ``downsample``); this module only selects
rows, reshapes frames into JSON and caches. The payload builders are
module-level functions so :func:`leakyspanner.ui.html.render_report` embeds
exactly what the API serves. Starlette is imported inside :func:`create_app`
only, so the HTML report needs the ``analysis`` extra alone.

Security: the app serves only data loaded from PATH (session ids are looked
up in the loaded set, never joined into paths), static files only from the
package's ``static`` directory, no CORS headers, a strict
Content-Security-Policy, and it answers only requests whose Host header names
a loopback address with the server's port (DNS-rebinding defence) unless
other hosts are allowed explicitly.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from leakyspanner import errors, schema
from leakyspanner.analysis.diagnose import compare, diagnose
from leakyspanner.analysis.load import Sessions, load
from leakyspanner.analysis.stats import downsample, endpoint_table, site_diff
from leakyspanner.analysis.verdict import Verdict

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
    "compare_payload",
    "create_app",
    "endpoint_distribution",
    "session_detail",
    "session_row",
    "snapshot_diff",
    "verdict_or_error",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Most points a trend series carries to the browser.
MAX_POINTS = 2000
#: Host names the dashboard answers to unless told otherwise.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HISTOGRAM_BINS = 30
_SITE_ROWS = 20
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon"}
_MB = 1024 * 1024
_TREND_COLUMNS = ("rss_bytes", "traced_bytes")
_RESOURCE_COLUMNS = ("asyncio_tasks", "open_fds", "threads")
_ATTRIBUTION = ("retained_bytes_per_call", "low_bytes_per_call", "high_bytes_per_call",
                "share_of_growth", "significant")


# ------------------------------------------------------------ JSON from frames

def _plain(value: Any) -> Any:
    """A JSON-ready scalar: NA and NaN become None, numpy scalars Python ones."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.timestamp()
    return value


def _column(series: pd.Series) -> list[Any]:
    return [_plain(v) for v in series.tolist()]


def _records(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    names = [c for c in (columns or frame.columns) if c in frame.columns]
    lists = {name: _column(frame[name]) for name in names}
    return [dict(zip(names, row)) for row in zip(*lists.values())] if names else []


#: Table headers for the analysis columns the page shows; others get their name with spaces.
_LABELS = {
    "avg_delta_bytes": "avg Δ RSS", "p50_delta_bytes": "p50 Δ RSS", "p95_delta_bytes": "p95 Δ RSS",
    "max_delta_bytes": "max Δ RSS", "avg_duration_s": "avg duration", "p95_duration_s": "p95 duration",
    "retained_bytes_per_call": "retained / call", "low_bytes_per_call": "retained / call, 90% low",
    "high_bytes_per_call": "retained / call, 90% high", "share_of_growth": "share of growth",
    "significant": "leaks?", "errors": "errors (5xx)", "rss_measured": "RSS measured", "size_a": "size A", "size_b": "size B",
    "size_diff_bytes": "growth A→B", "count_a": "blocks A", "count_b": "blocks B", "count_diff": "+ blocks",
}
#: Columns whose unit their name does not spell.
_UNITS = {"size_a": "bytes", "size_b": "bytes"}


def _unit(name: str, series: pd.Series) -> str:
    """How the page formats a column, read from its name (units live in names) and type."""
    if name in _UNITS:
        return _UNITS[name]
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if not pd.api.types.is_numeric_dtype(series):
        return "text"
    if "_bytes" in name:
        return "bytes"
    if name.endswith("_s"):
        return "seconds"
    if name.startswith("share") or name.endswith("fraction"):
        return "ratio"
    return "number"


def _table(frame: pd.DataFrame, hidden: Iterable[str] = ()) -> dict[str, Any]:
    """``{"columns": [{key, label, unit}], "rows": [...]}`` for a sortable table.

    ``hidden`` columns stay in the rows (the page uses them as keys) but get no table column.
    """
    rows = [c for c in frame.columns if c != "session_id"]
    shown = [c for c in rows if c not in set(hidden)]
    columns = [{"key": c, "label": _LABELS.get(c, c.replace("_", " ")), "unit": _unit(c, frame[c])} for c in shown]
    return {"columns": columns, "rows": _records(frame, rows)}


def _series(frame: pd.DataFrame, names: Sequence[str], x: str = "elapsed_s") -> dict[str, list[Any]]:
    return {"x": _column(frame[x]), **{n: _column(frame[n]) for n in names if n in frame.columns}}


def _of(frame: pd.DataFrame, session_id: str) -> pd.DataFrame:
    return frame[(frame["session_id"] == session_id).to_numpy()]


# ----------------------------------------------------------------- payloads

def verdict_or_error(sessions: Sessions, session_id: str) -> Verdict | Exception:
    """:func:`diagnose` of one session, or the exception it raised (shown in place of a verdict)."""
    try:
        return diagnose(sessions, session_id=session_id)
    except Exception as exc:  # one session the analysis cannot read must not hide the others
        return exc


def _verdict_summary(verdict: Verdict | BaseException) -> dict[str, Any]:
    if isinstance(verdict, BaseException):
        return {"status": "error", "headline": f"no verdict: {type(verdict).__name__}: {verdict}",
                "leaking": None}
    return {"status": verdict.status, "headline": verdict.headline, "leaking": verdict.leaking}


def session_row(sessions: Sessions, session_id: str, verdict: Verdict | BaseException) -> dict[str, Any]:
    """One line of the sessions list: who, when, how long, how big, and the verdict."""
    row = _records(_of(sessions.sessions, session_id))[0]
    keep = ("session_id", "path", "host", "pid", "level", "start_ts", "end_ts", "duration_s", "complete",
            "baseline_rss_bytes", "peak_rss_bytes", "final_rss_bytes", "net_growth_bytes",
            "requests_total", "requests_dropped", "internal_errors", "python", "platform",
            "interval_seconds", "leak_threshold_mb", "cgroup_memory_limit_bytes", "format")
    out = {name: row.get(name) for name in keep}
    out["samples"] = int((sessions.samples["session_id"] == session_id).sum())
    return {**out, **_verdict_summary(verdict)}


def _threshold_bytes(session: dict[str, Any], alerts: pd.DataFrame) -> int | None:
    """The alert threshold above baseline as the session's alerts state it, else from its config."""
    if len(alerts) and pd.notna(alerts["threshold_bytes"].iloc[-1]):
        return int(alerts["threshold_bytes"].iloc[-1])
    limit = session.get("leak_threshold_mb")
    return int(limit * _MB) if isinstance(limit, (int, float)) else None


def _endpoints(sessions: Sessions, session_id: str, verdict: Verdict | BaseException) -> dict[str, Any]:
    """The endpoint table of :func:`endpoint_table`, joined with the verdict's attribution per call."""
    table = endpoint_table(sessions, session_id=session_id).reset_index(drop=True)
    attributed = {} if isinstance(verdict, BaseException) else {
        (e.method, e.route): e for e in verdict.endpoints}
    for name in _ATTRIBUTION:
        values = []
        for method, route in zip(table["method"].astype(str), table["route"].astype(str)):
            found = attributed.get((method, route))
            values.append(getattr(found, name) if found is not None else None)
        dtype = "boolean" if name == "significant" else "Float64"
        table[name] = pd.array(values, dtype=dtype)
    return _table(table, hidden=("method", "route"))


def session_detail(sessions: Sessions, session_id: str, verdict: Verdict | BaseException) -> dict[str, Any]:
    """Everything the session page draws: trends, alerts, endpoints, resources, snapshots, verdict."""
    session = session_row(sessions, session_id, verdict)
    samples = _of(sessions.samples, session_id)
    alerts = _of(sessions.alerts, session_id)
    trend = downsample(samples[["elapsed_s", *_TREND_COLUMNS]], MAX_POINTS)
    resources = downsample(samples[["elapsed_s", *_RESOURCE_COLUMNS]], MAX_POINTS)
    tasks = _of(sessions.tasks, session_id)
    if len(tasks):  # coroutines with unfinished tasks at the last sample, most first
        tasks = tasks[tasks["ts"] == tasks["ts"].max()].sort_values("tasks", ascending=False)
    snapshots = _of(sessions.snapshots, session_id)
    return {
        "session": session,
        "baseline_rss_bytes": session["baseline_rss_bytes"],
        "threshold_bytes": _threshold_bytes(session, alerts),
        "trend": _series(trend, _TREND_COLUMNS),
        "alerts": _records(alerts, ("elapsed_s", "ts", "alert", "rss_bytes", "baseline_rss_bytes",
                                    "growth_bytes", "threshold_bytes")),
        "events": _records(_of(sessions.events, session_id), ("elapsed_s", "ts", "event", "detail")),
        "endpoints": _endpoints(sessions, session_id, verdict),
        "resources": _series(resources, _RESOURCE_COLUMNS),
        "tasks_by_coro": _records(tasks, ("coro", "tasks")),
        "snapshots": _records(snapshots, ("seq", "elapsed_s", "ts", "traced_bytes", "blocks", "sites_total")),
        "verdict": None if isinstance(verdict, BaseException) else verdict.to_dict(),
    }


def _histogram(values: np.ndarray, bins: int = _HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts in equal bins between the 1st and 99th percentile, the tails counted apart.

    Deltas are heavy-tailed: bins spanning min..max would put nearly every call
    into one bar. RSS moves in whole pages, so bin widths are multiples of the
    values' common divisor (4096 for page-sized deltas) and every bin is exact.
    """
    if not values.size:
        return {"count": 0, "bins": [], "below": 0, "above": 0, "min": None, "max": None, "zero": 0}
    low, high = (int(v) for v in np.percentile(values, [1, 99], method="inverted_cdf"))
    if low == high:
        low, high = int(values.min()), int(values.max())
    quantum = max(1, min(int(np.gcd.reduce(values)), 1 << 20)) if values.any() else 1
    width = max(quantum, -(-(high - low) // (bins * quantum)) * quantum)
    start = (low // quantum) * quantum
    edges = start + width * np.arange(max(1, -(-(high + 1 - start) // width)) + 1, dtype=np.int64)
    inside = values[(values >= edges[0]) & (values < edges[-1])]
    counts = np.bincount((inside - edges[0]) // width, minlength=edges.size - 1)
    return {
        "count": int(values.size), "below": int((values < edges[0]).sum()),
        "above": int((values >= edges[-1]).sum()), "zero": int((values == 0).sum()),
        "min": _plain(values.min()), "max": _plain(values.max()),
        "bins": [{"lo": _plain(edges[i]), "hi": _plain(edges[i + 1]), "count": int(c)}
                 for i, c in enumerate(counts)],
    }


def endpoint_distribution(sessions: Sessions, session_id: str, method: str, route: str,
                          verdict: Verdict | BaseException | None = None) -> dict[str, Any] | None:
    """Per-request delta histograms of one endpoint with its table row; None for an unknown endpoint."""
    requests = sessions.requests
    keep = ((requests["session_id"] == session_id) & (requests["method"] == method)
            & (requests["route"] == route)).to_numpy()
    chosen = requests[keep]
    table = endpoint_table(sessions, session_id=session_id)
    row = table[(table["method"].astype(str) == method) & (table["route"].astype(str) == route)]
    if not len(chosen) and not len(row):
        return None
    metrics = {}
    for name in ("rss_delta_bytes", "traced_delta_bytes"):
        values = chosen[name].dropna().to_numpy(dtype=np.int64)
        if values.size or name == "rss_delta_bytes":
            metrics[name] = _histogram(values)
    attribution = None
    if verdict is not None and not isinstance(verdict, BaseException):
        attribution = next((e.to_dict() for e in verdict.endpoints
                            if e.method == method and e.route == route), None)
    return {"session_id": session_id, "method": method, "route": route,
            "row": (_records(row.drop(columns=["session_id"], errors="ignore")) or [None])[0],
            "attribution": attribution, "metrics": metrics}


def snapshot_diff(sessions: Sessions, session_id: str, a: int, b: int) -> dict[str, Any] | None:
    """:func:`site_diff` between snapshots ``a`` and ``b``; None when either is not in the session."""
    seqs = set(_of(sessions.snapshots, session_id)["seq"].dropna().astype(int))
    if a not in seqs or b not in seqs:
        return None
    try:
        diff = site_diff(sessions, a, b, session_id=session_id, top=_SITE_ROWS)
    except ValueError:  # a snapshot that listed no sites
        return None
    return {"session_id": session_id, "a": a, "b": b, **_table(diff, hidden=("file", "line"))}


def _rss_trend(sessions: Sessions, session_id: str) -> dict[str, list[Any]]:
    samples = _of(sessions.samples, session_id)
    return _series(downsample(samples[["elapsed_s", *_TREND_COLUMNS]], MAX_POINTS), _TREND_COLUMNS)


def compare_payload(before: Sessions, before_id: str, after: Sessions, after_id: str) -> dict[str, Any]:
    """The :func:`compare` FixCheck of two sessions with both RSS trends."""
    check = compare(before, after, before_id=before_id, after_id=after_id)
    sides = {}
    for name, sessions, sid in (("before", before, before_id), ("after", after, after_id)):
        row = _records(_of(sessions.sessions, sid), ("session_id", "host", "pid", "start_ts", "duration_s",
                                                   "baseline_rss_bytes", "peak_rss_bytes"))[0]
        sides[name] = {"session": row, "trend": _rss_trend(sessions, sid)}
    return {"fixcheck": check.to_dict(), **sides}


# -------------------------------------------------------------------- cache

#: Client-chosen lookups (endpoint histograms, snapshot diffs, comparisons) kept per file.
MAX_LOOKUPS = 128


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _inside(path: Path, base: Path) -> bool:
    try:
        return path.resolve().is_relative_to(base)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _session_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Session files under ``root`` as ``load`` finds them (two levels deep, .log only without a
    .jsonl), and those left out because a symlink leads outside ``root``."""
    if root.is_file():
        return [root], []
    suffixes = (schema.JSONL_SUFFIX, schema.LOG_SUFFIX)
    found = sorted(p for p in [*root.glob("*"), *root.glob("*/*")] if p.suffix in suffixes and p.is_file())
    base = root.resolve()
    outside = [p for p in found if not _inside(p, base)]
    found = [p for p in found if p not in outside]
    stems = {(p.parent, p.stem) for p in found if p.suffix == schema.JSONL_SUFFIX}
    return [p for p in found if p.suffix == schema.JSONL_SUFFIX or (p.parent, p.stem) not in stems], outside


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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(path)
        self.follow = follow
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Path, _Entry] = {}
        self._where: dict[str, _Entry] = {}
        self._failed: dict[Path, tuple[tuple[int, int], str]] = {}  # file -> (stat key, why) when it failed
        self._outside: list[Path] = []
        self._loaders: dict[Path, threading.Lock] = {}
        self._last_scan = clock()
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
            row = self._derived(entry, ("row", sid), lambda e=entry, s=sid: session_row(
                e.sessions, s, self._verdict(e, s)))
            rows.append({**row, "version": entry.version})
        rows.sort(key=lambda r: (r.get("start_ts") or 0, r["session_id"]), reverse=True)
        return {"root": str(self.root), "follow": self.follow, "problems": self.problems, "sessions": rows}

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
            entry.sessions, session_id, self._verdict(entry, session_id)))
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
