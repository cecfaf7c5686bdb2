"""Numbers behind the plots: per-endpoint tables, allocation diffs, growth rates, smoothing.

Pure pandas/numpy so plots, widgets, the web UI and notebooks share one
computation. Every function takes loaded :class:`~leakyspanner.analysis.Sessions`
(or a plain frame) and returns a new DataFrame or Series; nothing draws here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from leakyspanner.analysis.load import Sessions

__all__ = [
    "TrendLine",
    "align_elapsed",
    "bucket_medians",
    "downsample",
    "endpoint_comparison",
    "endpoint_label",
    "endpoint_table",
    "session_growth",
    "site_diff",
    "smooth",
    "theil_sen",
    "trend_line",
]

_HOUR_S = 3600.0
_FIT_POINTS = 400  # pairwise slopes grow with the square: 80k pairs at most
_MB = 1024 * 1024
_ENDPOINT_COLUMNS = ["method", "route", "endpoint", "calls", "errors", "rss_measured", "avg_delta_bytes",
                     "p50_delta_bytes",
                     "p95_delta_bytes", "max_delta_bytes", "avg_duration_s", "p95_duration_s"]
_SITE_COLUMNS = ["site", "file", "line", "size_a", "size_b", "size_diff_bytes", "count_a", "count_b", "count_diff"]
_ALIGNED_COLUMNS = ["session_id", "elapsed_s", "rss_bytes", "traced_bytes", "vms_bytes", "baseline_rss_bytes",
                    "rss_growth_bytes", "traced_growth_bytes", "vms_growth_bytes"]
_GROWTH_METRICS = ("rss_bytes", "traced_bytes", "vms_bytes")


def _check_session(sessions: Sessions, session_id: str | None) -> None:
    if session_id is not None and session_id not in sessions.session_ids:
        raise ValueError(f"session_id must be one of the loaded sessions ({', '.join(sessions.session_ids)}), "
                         f"got {session_id!r}")


def _floats(series: pd.Series) -> pd.Series:
    """Nullable integers as float64 with NaN, so numpy reductions work on them."""
    return pd.to_numeric(series, errors="coerce").astype("float64")


def endpoint_label(method: object, route: object) -> str:
    """``"GET /items/{item_id}"``: how an endpoint is named in tables, legends and pickers."""
    return f"{method} {route}"


def _exact_counts(sessions: Sessions, requests: pd.DataFrame, session_id: str | None) -> pd.DataFrame:
    """Calls, errors and duration sum per (method, route), counting every request.

    From ``endpoint_interval`` records where a session has them (since schema
    version 3 request records are only the RSS-measured sample); from request
    records for sessions without any.
    """
    intervals = sessions.intervals
    if session_id is not None and len(intervals):
        intervals = intervals[intervals["session_id"] == session_id]
    parts = []
    if len(intervals):
        parts.append(pd.DataFrame({
            "method": intervals["method"].astype("str"), "route": intervals["route"].astype("str"),
            "calls": _floats(intervals["calls"]).fillna(0.0), "errors": _floats(intervals["errors"]).fillna(0.0),
            "duration_sum": _floats(intervals["duration_s_sum"]).fillna(0.0),
        }))
        requests = requests[~requests["session_id"].isin(set(intervals["session_id"]))]
    if len(requests):
        parts.append(pd.DataFrame({
            "method": requests["method"].astype("str"), "route": requests["route"].astype("str"), "calls": 1.0,
            "errors": (_floats(requests["status"]) >= 500).astype("float64"),
            "duration_sum": _floats(requests["duration_s"]).fillna(0.0),
        }))
    if not parts:
        return pd.DataFrame(columns=["calls", "errors", "duration_sum"],
                            index=pd.MultiIndex.from_arrays([[], []], names=["method", "route"]))
    return pd.concat(parts, ignore_index=True).groupby(["method", "route"], sort=False).sum()


def endpoint_table(sessions: Sessions, session_id: str | None = None) -> pd.DataFrame:
    """Per method and route: calls, errors (status >= 500), RSS change and duration statistics.

    Calls, errors and the average duration count every request. RSS statistics
    and the p95 duration are over the ``rss_measured`` calls: under load capture
    reads RSS for a random sample of requests and writes a record for those only.
    ``session_id=None`` pools every loaded session. Rows are sorted by suspicion:
    average per-request RSS change, largest first (ties: more calls first).
    """
    _check_session(sessions, session_id)
    requests = sessions.requests
    if session_id is not None:
        requests = requests[requests["session_id"] == session_id]
    counts = _exact_counts(sessions, requests, session_id)
    if counts.empty:
        return pd.DataFrame({name: pd.Series(dtype="float64") for name in _ENDPOINT_COLUMNS}).astype(
            {"method": "str", "route": "str", "endpoint": "str", "calls": "int64", "errors": "int64",
             "rss_measured": "int64"})
    frame = pd.DataFrame({
        "method": requests["method"].astype("str"),
        "route": requests["route"].astype("str"),
        "delta": _floats(requests["rss_delta_bytes"]),
        "duration": _floats(requests["duration_s"]),
    })
    grouped = frame.groupby(["method", "route"], sort=False)
    sampled = pd.DataFrame({
        "rss_measured": grouped["delta"].count().astype("int64"),
        "avg_delta_bytes": grouped["delta"].mean(),
        "p50_delta_bytes": grouped["delta"].quantile(0.5),
        "p95_delta_bytes": grouped["delta"].quantile(0.95),
        "max_delta_bytes": grouped["delta"].max(),
        "p95_duration_s": grouped["duration"].quantile(0.95),
    })
    table = counts.join(sampled, how="outer")
    table["calls"] = table["calls"].fillna(0).astype("int64")
    table["errors"] = table["errors"].fillna(0).astype("int64")
    table["rss_measured"] = table["rss_measured"].fillna(0).astype("int64")
    table["avg_duration_s"] = table["duration_sum"] / table["calls"].where(table["calls"] > 0)
    table = table.reset_index()
    table.insert(2, "endpoint", [endpoint_label(m, r) for m, r in zip(table["method"], table["route"])])
    table = table.sort_values(["avg_delta_bytes", "calls"], ascending=[False, False], na_position="last")
    return table.reset_index(drop=True)[_ENDPOINT_COLUMNS]


def endpoint_comparison(sessions: Sessions, before_id: str, after_id: str) -> pd.DataFrame:
    """Per endpoint, calls and average RSS change in two sessions side by side.

    Columns ``calls_before``, ``calls_after``, ``avg_delta_bytes_before``,
    ``avg_delta_bytes_after`` and ``change_bytes`` (after - before); endpoints
    seen in only one session have NaN on the other side. Sorted by the
    ``before`` average, largest first.
    """
    keep = ["method", "route", "endpoint", "calls", "avg_delta_bytes"]
    before = endpoint_table(sessions, before_id)[keep]
    after = endpoint_table(sessions, after_id)[keep]
    merged = before.merge(after, on=["method", "route", "endpoint"], how="outer", suffixes=("_before", "_after"))
    merged["change_bytes"] = merged["avg_delta_bytes_after"] - merged["avg_delta_bytes_before"]
    merged = merged.sort_values("avg_delta_bytes_before", ascending=False, na_position="last")
    return merged.reset_index(drop=True)


def _site_session(sessions: Sessions, session_id: str | None) -> str | None:
    """The session a snapshot diff is about: the one named, else the first one with snapshots."""
    _check_session(sessions, session_id)
    if session_id is not None:
        return session_id
    with_sites = set(sessions.sites["session_id"])
    return next((s for s in sessions.session_ids if s in with_sites), None)


def _resolve_seq(seqs: list[int], seq: int, name: str) -> int:
    """A snapshot ``seq``; negative values count from the last snapshot (-1 is the last)."""
    if seq in seqs:
        return seq
    if seq < 0 and -seq <= len(seqs):
        return seqs[seq]
    raise ValueError(f"{name} must be a snapshot seq of the session ({', '.join(map(str, seqs))}) "
                     f"or a negative index from the last one, got {seq!r}")


def site_diff(sessions: Sessions, snapshot_a: int, snapshot_b: int, session_id: str | None = None,
              top: int | None = 20) -> pd.DataFrame:
    """Per allocation site, size and block count in two snapshots and their difference.

    ``snapshot_a``/``snapshot_b`` are snapshot ``seq`` numbers (negative ones
    count from the last: ``site_diff(s, 0, -1)`` is first against last).
    ``session_id=None`` takes the first session that has snapshots. A site
    missing from one snapshot counts as 0 there (snapshots keep only their top
    sites). Sorted by ``size_diff_bytes``, largest growth first; ``top`` rows.
    An empty frame when the session has no snapshots.
    """
    sid = _site_session(sessions, session_id)
    sites = sessions.sites[sessions.sites["session_id"] == sid] if sid is not None else sessions.sites.iloc[:0]
    if sites.empty:
        empty = pd.DataFrame({name: pd.Series(dtype="int64") for name in _SITE_COLUMNS})
        empty = empty.astype({"site": "str", "file": "str", "line": "Int64"})
        empty.attrs.update(session_id=sid, snapshot_a=None, snapshot_b=None)
        return empty
    seqs = sorted(int(s) for s in sites["snapshot_seq"].dropna().unique())
    seq_a = _resolve_seq(seqs, snapshot_a, "snapshot_a")
    seq_b = _resolve_seq(seqs, snapshot_b, "snapshot_b")

    def one(seq: int, suffix: str) -> pd.DataFrame:
        rows = sites[sites["snapshot_seq"] == seq]
        part = pd.DataFrame({"site": rows["site"].astype("str"), "file": rows["file"].astype("str"),
                             "line": _floats(rows["line"]), "size": _floats(rows["size_bytes"]),
                             "count": _floats(rows["count"])})
        # A site listed twice (top by size and by growth) is the same numbers: keep one.
        part = part.drop_duplicates("site")
        return part.set_index("site").rename(columns={"size": f"size_{suffix}", "count": f"count_{suffix}"})

    a, b = one(seq_a, "a"), one(seq_b, "b")
    diff = a.merge(b, how="outer", left_index=True, right_index=True, suffixes=("_x", "_y"))
    diff["file"] = diff["file_x"].fillna(diff["file_y"])
    diff["line"] = diff["line_x"].fillna(diff["line_y"])
    for name in ("size_a", "size_b", "count_a", "count_b"):
        diff[name] = diff[name].fillna(0)
    diff["size_diff_bytes"] = diff["size_b"] - diff["size_a"]
    diff["count_diff"] = diff["count_b"] - diff["count_a"]
    diff = diff.reset_index().sort_values(["size_diff_bytes", "site"], ascending=[False, True])
    ints = {name: "int64" for name in _SITE_COLUMNS if name not in ("site", "file", "line")}
    out = diff[_SITE_COLUMNS].astype(ints).astype({"line": "Int64"})
    if top is not None:
        out = out.head(top)
    out = out.reset_index(drop=True)
    out.attrs.update(session_id=sid, snapshot_a=seq_a, snapshot_b=seq_b)  # what the negative seqs resolved to
    return out


def smooth(series: pd.Series, window: int | None) -> pd.Series:
    """Centred rolling mean over ``window`` points; ``None`` or 1 returns the series unchanged."""
    if window is None or window <= 1:
        return series
    if not isinstance(window, (int, np.integer)):
        raise ValueError(f"window must be a whole number of points, got {window!r}")
    return _floats(series).rolling(int(window), center=True, min_periods=1).mean()


def downsample(frame: pd.DataFrame, max_points: int, x: str = "elapsed_s",
               y: str | Sequence[str] | None = None) -> pd.DataFrame:
    """At most about ``max_points`` rows, keeping each bucket's min and max so spikes survive.

    The ``x`` range is cut into equal buckets; in each, the rows holding the
    minimum and the maximum of every ``y`` column (default: every numeric
    column but ``x``) are kept, plus the first and last rows. Rows keep their
    order; a frame already small enough is returned as is.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points!r}")
    if len(frame) <= max_points:
        return frame
    if y is None:
        columns = [c for c in frame.columns if c != x and pd.api.types.is_numeric_dtype(frame[c])
                   and not pd.api.types.is_bool_dtype(frame[c])]
    else:
        columns = [y] if isinstance(y, str) else list(y)
    ordered = frame.sort_values(x, kind="stable")
    xs = _floats(ordered[x]).to_numpy()
    finite = np.isfinite(xs)
    buckets = max(1, (max_points - 2) // max(1, 2 * len(columns)))
    lo, hi = (xs[finite].min(), xs[finite].max()) if finite.any() else (0.0, 0.0)
    width = (hi - lo) / buckets or 1.0
    bucket = pd.Series(np.clip((xs - lo) // width, 0, buckets - 1), index=ordered.index)
    keep = {ordered.index[0], ordered.index[-1]}
    for name in columns:
        values = _floats(ordered[name])[finite].dropna()
        if values.empty:
            continue
        groups = values.groupby(bucket[values.index])
        keep.update(groups.idxmin())
        keep.update(groups.idxmax())
    return ordered[ordered.index.isin(keep)]


def align_elapsed(sessions: Sessions) -> pd.DataFrame:
    """Every session's samples on one elapsed-time axis, with growth from each session's baseline.

    ``elapsed_s`` counts from the session's start (from its first sample when
    the start is unknown). ``rss_growth_bytes`` is RSS above the session's
    baseline (its first sample when the header gave none); ``traced_growth_bytes``
    and ``vms_growth_bytes`` are growth above the session's first sample.
    """
    samples = sessions.samples
    if samples.empty:
        return pd.DataFrame({name: pd.Series(dtype="float64") for name in _ALIGNED_COLUMNS}).astype(
            {"session_id": "str"})
    out = pd.DataFrame({
        "session_id": samples["session_id"].astype("str"),
        "ts": _floats(samples["ts"]),
        "elapsed_s": _floats(samples["elapsed_s"]),
        "rss_bytes": _floats(samples["rss_bytes"]),
        "traced_bytes": _floats(samples["traced_bytes"]),
        "vms_bytes": _floats(samples["vms_bytes"]),
    })
    by_session = out.groupby("session_id", sort=False)
    out["elapsed_s"] = out["elapsed_s"].fillna(out["ts"] - by_session["ts"].transform("min"))
    baselines = dict(zip(sessions.sessions["session_id"].astype("str"), _floats(sessions.sessions["baseline_rss_bytes"])))
    baseline = out["session_id"].map(baselines).astype("float64")
    out["baseline_rss_bytes"] = baseline.fillna(by_session["rss_bytes"].transform("first"))
    out["rss_growth_bytes"] = out["rss_bytes"] - out["baseline_rss_bytes"]
    out["traced_growth_bytes"] = out["traced_bytes"] - by_session["traced_bytes"].transform("first")
    out["vms_growth_bytes"] = out["vms_bytes"] - by_session["vms_bytes"].transform("first")
    order = {sid: i for i, sid in enumerate(sessions.session_ids)}  # sessions in load order
    out = out.assign(_order=out["session_id"].map(order)).sort_values(["_order", "elapsed_s"], kind="stable")
    return out[_ALIGNED_COLUMNS].reset_index(drop=True)


@dataclass(frozen=True)
class TrendLine:
    """A Theil-Sen line through a memory series after warm-up: the one trend fit.

    The report's RSS trend, the fix check, the dashboard and the plots'
    MB/hour all come from :func:`trend_line`, so one series gives one number.
    """

    slope: float          # per unit of x (bytes per second for a time series)
    intercept: float
    low: float            # 90% band of the slope
    high: float
    late_slope: float     # the same fit over the later half of the points
    confidence: float     # one-sided Kendall confidence that y rises with x, 0..1
    fit_start: float      # x where the fit starts (after warm-up)
    points: int           # points fitted (bucket medians for long series)

    @property
    def mb_per_hour(self) -> float:
        return self.slope * _HOUR_S / _MB


def theil_sen(x: np.ndarray, y: np.ndarray, alpha: float = 0.90, rising: bool = True
              ) -> tuple[float, float, float, float, float]:
    """Slope, intercept, ``alpha`` band and one-sided Kendall confidence of rising (scipy's).

    NaN slope (confidence 0) with fewer than 3 points or an ``x`` that does not move;
    ``rising=False`` skips the Kendall test (confidence 0) when only the slope is wanted.
    """
    from scipy import stats as sps  # analysis needs scipy; stats stays cheap to import

    if len(x) < 3 or not np.ptp(x) > 0:
        return math.nan, math.nan, math.nan, math.nan, 0.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # mostly equal values make the band's variance formula go negative: no band then
        warnings.simplefilter("ignore", RuntimeWarning)
        slope, intercept, low, high = sps.theilslopes(y, x, alpha=alpha)
        pvalue = sps.kendalltau(x, y, alternative="greater").pvalue if rising else math.nan
    if not (np.isfinite(low) and np.isfinite(high)):
        low = high = slope
    confidence = 1.0 - float(pvalue) if np.isfinite(pvalue) else 0.0
    return float(slope), float(intercept), float(low), float(high), confidence


def bucket_medians(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Medians of runs of consecutive points (at most ``max_points`` runs), so long series
    stay cheap to fit and one spike does not dominate; short series come back unchanged."""
    n = len(x)
    if n <= max_points:
        return x, y
    size = -(-n // max_points)
    pad = (-n) % size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the padded tail is NaN
        xs = np.nanmedian(np.concatenate([np.asarray(x, float), np.full(pad, np.nan)]).reshape(-1, size), axis=1)
        ys = np.nanmedian(np.concatenate([np.asarray(y, float), np.full(pad, np.nan)]).reshape(-1, size), axis=1)
    return xs, ys


def trend_line(x: np.ndarray, y: np.ndarray, warmup_fraction: float = 0.2,
               max_points: int = _FIT_POINTS) -> TrendLine:
    """The trend of ``y`` over ascending ``x`` after the first ``warmup_fraction`` of the span.

    Points past warm-up are reduced to at most ``max_points`` bucket medians
    (a 24-hour session at 5 s is 17k samples; pairwise slopes grow with the
    square), then fitted by Theil-Sen with its 90% band. NaN fields when
    fewer than 3 points remain.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    fit_start = float(x[0] + warmup_fraction * (x[-1] - x[0])) if len(x) else math.nan
    keep = x >= fit_start
    bx, by = bucket_medians(x[keep], y[keep], max_points)
    slope, intercept, low, high, confidence = theil_sen(bx, by)
    half = len(bx) // 2
    late = theil_sen(bx[half:], by[half:], rising=False)[0] if len(bx) - half >= 3 else slope
    return TrendLine(slope=slope, intercept=intercept, low=low, high=high,
                     late_slope=late if math.isfinite(late) else slope, confidence=confidence,
                     fit_start=fit_start, points=int(len(bx)))


def session_growth(sessions: Sessions, metric: str = "rss_bytes", warmup_fraction: float = 0.2) -> pd.DataFrame:
    """Per session: samples, duration and memory growth from its baseline, with a least-squares MB/hour.

    ``metric`` is ``"rss_bytes"`` (growth above the header's baseline),
    ``"traced_bytes"`` or ``"vms_bytes"`` (growth above the first sample).
    ``growth_bytes`` is the growth at the last sample; ``mb_per_hour`` (and
    ``slope_bytes_per_s``, ``intercept_bytes``) come from :func:`trend_line`
    (Theil-Sen, so one jump barely moves it; the same fit the verdict's RSS
    trend uses) through growth over elapsed time from ``fit_start_s`` on,
    which skips the first ``warmup_fraction`` of the session (imports and
    caches filling up): NaN with fewer than three samples there.
    """
    if metric not in _GROWTH_METRICS:
        raise ValueError(f"metric must be one of {', '.join(_GROWTH_METRICS)}, got {metric!r}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be at least 0 and below 1, got {warmup_fraction!r}")
    aligned = align_elapsed(sessions)
    aligned = aligned.assign(growth=aligned[metric.replace("_bytes", "_growth_bytes")]).dropna(subset=["elapsed_s", "growth"])
    rows = []
    for sid in sessions.session_ids:
        part = aligned[aligned["session_id"] == sid]
        xs, ys = part["elapsed_s"].to_numpy(), part["growth"].to_numpy()
        line = trend_line(xs, ys, warmup_fraction)
        fit_start, slope, intercept = line.fit_start, line.slope, line.intercept
        rows.append({
            "session_id": sid,
            "samples": len(part),
            "duration_s": float(np.ptp(xs)) if len(part) else np.nan,
            "growth_bytes": float(ys[-1]) if len(part) else np.nan,
            "fit_start_s": float(fit_start),
            "slope_bytes_per_s": float(slope),
            "intercept_bytes": float(intercept),
            "mb_per_hour": float(slope) * _HOUR_S / _MB,
        })
    columns = ["session_id", "samples", "duration_s", "growth_bytes", "fit_start_s", "slope_bytes_per_s",
               "intercept_bytes", "mb_per_hour"]
    return pd.DataFrame(rows, columns=columns).astype({"session_id": "str", "samples": "int64"})
