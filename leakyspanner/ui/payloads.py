"""What the dashboard and the saved HTML report draw: JSON payloads built from loaded sessions.

Every number comes from the analysis package (``diagnose``, ``compare``,
``endpoint_table``, ``site_diff``, ``downsample``); this module only selects
rows and reshapes frames into JSON. The server (:mod:`.server`) caches and
serves these payloads; :mod:`.html` embeds exactly the same ones in a file.
Text for people (byte sizes, durations) comes from :mod:`leakyspanner.formatting`,
and each payload carries its rules (``units``) for the figures the page works
out itself, such as chart axes.

The source preview of a growing line reads the file as text at analysis time,
never imports or runs it, and only reads ``.py`` files under the project root
(the folder the command runs in, as for the short paths of :mod:`..analysis.paths`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leakyspanner.analysis.diagnose import compare, diagnose
from leakyspanner.analysis.jsonvalue import json_value
from leakyspanner.analysis.load import Sessions
from leakyspanner.analysis.paths import short_path, short_site
from leakyspanner.analysis.stats import downsample, endpoint_table, site_diff
from leakyspanner.analysis.verdict import Verdict
from leakyspanner.commands.terminal import printable
from leakyspanner.errors import MissingExtraError
from leakyspanner.formatting import format_bytes, format_duration, units

__all__ = [
    "MAX_POINTS",
    "compare_payload",
    "endpoint_distribution",
    "fleet_payload",
    "growing_line",
    "next_steps",
    "session_detail",
    "session_label",
    "session_row",
    "snapshot_diff",
    "source_preview",
    "verdict_or_error",
]

#: Most points a trend series carries to the browser.
MAX_POINTS = 2000
_HISTOGRAM_BINS = 30
_SITE_ROWS = 20
_MB = 1024 * 1024
_TREND_COLUMNS = ("rss_bytes", "traced_bytes")
_RESOURCE_COLUMNS = ("asyncio_tasks", "open_fds", "threads")
_ATTRIBUTION = ("retained_bytes_per_call", "low_bytes_per_call", "high_bytes_per_call",
                "share_of_growth", "significant")
_PREVIEW_CONTEXT = 3        # lines shown either side of the growing line
_PREVIEW_MAX_BYTES = 4 << 20  # a larger file is not a source file anyone wants previewed
_PREVIEW_MAX_CHARS = 240    # per line shown


# ------------------------------------------------------------ JSON from frames

def _column(series: pd.Series) -> list[Any]:
    return [json_value(v) for v in series.tolist()]


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
    "median_growth_bytes_per_h": "median RSS growth / h",
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
    records = _records(frame, rows)
    for record in records:
        record["labels"] = _labels(record, {c["key"]: c["unit"] for c in columns})
    return {"columns": columns, "rows": records}


def _labels(values: dict[str, Any], unit_of: dict[str, str]) -> dict[str, str]:
    """The text a person reads for each bytes or seconds value, from :mod:`leakyspanner.formatting`,
    and for a ``site`` its path relative to the project (the full one stays in the row)."""
    out = {}
    for key, unit in unit_of.items():
        value = values.get(key)
        if key == "site" and isinstance(value, str):
            out[key] = short_site(value) or value
        elif unit == "bytes":
            out[key] = format_bytes(value, signed="diff" in key or "growth" in key or "delta" in key, missing="–")
        elif unit == "seconds":
            out[key] = format_duration(value, missing="–")
    return out


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
    out.update(_verdict_summary(verdict))
    out["folder"] = _folder(out["path"])
    out["labels"] = _labels(out, _ROW_UNITS)
    out["label"] = session_label(out)
    return out


#: Units of the session row's figures the page shows.
_ROW_UNITS = {"duration_s": "seconds", "baseline_rss_bytes": "bytes", "peak_rss_bytes": "bytes",
              "final_rss_bytes": "bytes", "net_growth_bytes": "bytes"}


def _folder(path: Any) -> str | None:
    """The folder a session file sits in (``fixed`` for ``logs/fixed/leakyspanner_....jsonl``): in a
    directory of runs it is what tells them apart."""
    return Path(path).parent.name or None if isinstance(path, str) and path else None


def session_label(row: dict[str, Any]) -> str:
    """``fixed · web-1 · mid · 5 min 00 s · no leak``: what tells sessions apart besides their start time."""
    parts = [row.get("folder"), row.get("host"), row.get("level"),
             format_duration(row.get("duration_s"), missing="") if row.get("duration_s") is not None else None,
             row.get("status")]
    return " · ".join(str(p) for p in parts if p)


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


def source_preview(file: str, line: int, root: str | os.PathLike[str] | None = None,
                   context: int = _PREVIEW_CONTEXT) -> dict[str, Any]:
    """Lines ``line - context .. line + context`` of ``file``, read as text and never run.

    Only a ``.py`` file under ``root`` (default: the working directory) is read,
    symlinks followed before the check, so a session log naming ``/etc/passwd``
    or ``.env`` reveals nothing; anything else comes back with ``status``
    ``"outside"`` (an installed package, the standard library, another folder)
    or ``"absent"`` (not on this machine, changed, or unreadable), and no lines.
    """
    out: dict[str, Any] = {"file": file, "line": line, "path": short_path(file, os.fspath(root) if root else None),
                           "status": "absent", "lines": []}
    base = Path(root or os.getcwd()).resolve()
    try:
        target = Path(file).resolve()
        installed = out["path"].startswith(("[pkg] ", "[stdlib] "))  # a virtualenv inside the project, say
        if installed or not (target.is_relative_to(base) and target.suffix == ".py"):
            out["status"] = "outside"
            return out
        if not target.is_file() or target.stat().st_size > _PREVIEW_MAX_BYTES or line < 1:
            return out
        first = max(1, line - context)
        shown = []
        with open(target, encoding="utf-8", errors="replace") as f:
            for number, text in enumerate(f, 1):
                if number >= first:
                    text = text.rstrip("\r\n").expandtabs(4)[:_PREVIEW_MAX_CHARS]
                    shown.append({"n": number, "text": printable(text)})
                if number >= line + context:
                    break
    except (OSError, RuntimeError, ValueError):  # unreadable, a symlink loop, a NUL in the name
        return out
    if not any(row["n"] == line for row in shown):  # the file is shorter now: not the file that ran
        return out
    out.update(status="ok", lines=shown)
    return out


def growing_line(verdict: Verdict | BaseException, root: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The preview of the verdict's top growing site: the user's line that caused it when known."""
    if isinstance(verdict, BaseException) or not verdict.sites:
        return None
    top = verdict.sites[0]
    where = top.app_site or top.site
    file, _, number = where.rpartition(":")
    if not number.isdigit():
        file, number = top.file, str(top.line)
    preview = source_preview(file, int(number), root)
    preview["site"] = top.site
    preview["caused_by"] = where if top.app_site and top.app_site != top.site else None
    return preview


def _typed(path: Any, root: str | os.PathLike[str] | None) -> str | None:
    """``path`` as one would type it from ``root`` (relative when under it), or None."""
    if not isinstance(path, str) or not path:
        return None
    try:
        full, base = Path(path).resolve(), Path(root or os.getcwd()).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return path
    return str(full.relative_to(base)) if full.is_relative_to(base) else path


def next_steps(verdict: Verdict | BaseException, session_file: str | None = None,
               root: str | os.PathLike[str] | None = None) -> list[str]:
    """What to do after reading the verdict, as things to type: the same lines in report, HTML and dashboard."""
    file = _typed(session_file, root) or "leakyspanner_logs/<session>.jsonl"
    folder = os.path.dirname(file) or "."
    if isinstance(verdict, BaseException):
        return [f"where the error above comes from: leakyspanner -v report {file}"]
    steps = []
    if verdict.status in ("leaking", "possible leak"):
        if verdict.sites:
            where = verdict.sites[0].app_site or verdict.sites[0].site
            file_of_line, _, line = where.rpartition(":")
            steps.append(f"open {short_path(file_of_line, os.fspath(root) if root else None)} at line {line}: "
                         "the line whose memory keeps growing")
        if verdict.status == "possible leak":
            steps.append("to confirm it: run the same traffic for a few minutes more")
        steps.append(f"after the fix, run the same traffic again, then: leakyspanner report {file} "
                     "--compare <the new session>.jsonl")
    elif verdict.status == "not enough data":
        steps.append("run the traffic for a minute or more, then Ctrl-C and report again")
    else:
        steps.append(f"in CI, to fail the job on a new leak: leakyspanner report {folder} --fail-on-bytes-per-call 1KB")
    steps.append(f"the dashboard (trends, endpoints, growing lines): leakyspanner inspect {folder}")
    return steps


def session_detail(sessions: Sessions, session_id: str, verdict: Verdict | BaseException, *,
                   root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Everything the session page draws: trends, alerts, endpoints, resources, snapshots, verdict,
    a preview of the growing line (read under ``root``, default the working directory) and next steps."""
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
        "verdict": _verdict_payload(verdict),
        "source": growing_line(verdict, root),
        "next_steps": next_steps(verdict, session.get("path"), root),
        "units": units(),
    }


def _verdict_payload(verdict: Verdict | BaseException) -> dict[str, Any] | None:
    """``Verdict.to_dict()`` with each growing site's short path and figures as text."""
    if isinstance(verdict, BaseException):
        return None
    out = verdict.to_dict()
    for site in out.get("sites") or ():
        site["labels"] = _labels(site, {"site": "text", "growth_bytes": "bytes", "growth_per_hour_bytes": "bytes",
                                        "bytes_per_call": "bytes"})
    return out


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
        "min": json_value(values.min()), "max": json_value(values.max()),
        "bins": [{"lo": json_value(edges[i]), "hi": json_value(edges[i + 1]), "count": int(c)}
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
    rows = _records(row.drop(columns=["session_id"], errors="ignore"))
    return {"session_id": session_id, "method": method, "route": route, "row": rows[0] if rows else None,
            "attribution": attribution, "metrics": metrics, "units": units()}


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
    return {"fixcheck": check.to_dict(), **sides, "units": units()}


def _hosts(sessions: Sessions) -> int:
    host = sessions.sessions["host"]
    return int(host.astype(object).where(host.notna(), "unknown").nunique())


def fleet_payload(sessions: Sessions) -> dict[str, Any] | None:
    """The fleet verdict across ``sessions`` (which routes leak on how many hosts, outlier hosts)
    for the sessions page; None when they all come from one host.

    Computed by :func:`leakyspanner.fleet.fleet_verdict` on the loaded frames (its pandas path);
    without the fleet extra, ``status`` is ``"unavailable"`` and ``headline`` the pip line.
    """
    hosts = _hosts(sessions)
    if hosts < 2:
        return None
    try:
        from leakyspanner.fleet.verdict import fleet_verdict
    except MissingExtraError as exc:
        return {"status": "unavailable", "hosts": hosts, "headline": f"No fleet verdict: {exc}"}
    verdict = fleet_verdict(sessions)
    leaking = verdict.leaking_routes
    routes = pd.DataFrame({
        "endpoint": (leaking["method"].astype(str) + " " + leaking["route"].astype(str)).astype(object),
        "method": leaking["method"].astype(object), "route": leaking["route"].astype(object),
        "hosts_leaking": leaking["hosts_leaking"], "hosts_serving": leaking["hosts_serving"],
        "sessions_leaking": leaking["sessions_leaking"],
        "retained_bytes_per_call": leaking["bytes_per_call"].astype(float)})
    outliers = verdict.outliers
    outliers = pd.DataFrame({"host": outliers["host"].astype(object), "sessions": outliers["sessions"],
                             "sessions_leaking": outliers["sessions_leaking"],
                             "median_growth_bytes_per_h": outliers["median_growth_bytes_per_h"].astype(float)})
    return {"status": "ok", "hosts": hosts, "sessions": len(verdict.sessions),
            "sessions_leaking": int(verdict.sessions["leaking"].sum()), "headline": verdict.lines()[0],
            "growth_threshold_bytes_per_h": verdict.growth_threshold_bytes_per_h,
            "routes": _table(routes, hidden=("method", "route")), "outliers": _table(outliers)}
