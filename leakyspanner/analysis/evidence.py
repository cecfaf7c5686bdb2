"""Attribution from direct evidence: heap samples tagged with their endpoint, and
per-request RSS deltas for memory no allocator hook sees.

Why not only the regression over time in ``diagnose``: under a steady traffic
mix every endpoint's cumulative calls are the same line times a constant, so
growth fits any of them. The sampled heap engine records, for each sampled
allocation still alive, the endpoint whose request made it; an endpoint's own
live bytes regressed on its own calls give its retained bytes per call,
whatever the other endpoints do. Native memory (ctypes, C clients) never
passes through the Python allocator; there each measured request's own RSS
delta, less the growth the rest of the process caused meanwhile, is the
evidence that does not depend on how traffic varies.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .load import Sessions

__all__ = ["SeriesFit", "fit_growth", "request_delta_estimates", "tagged_endpoint_series", "tagged_site_series"]

#: Share of the points (in time) treated as warm-up before fitting.
WARMUP_FRACTION = 0.2
#: A fit needs at least this many points after warm-up.
MIN_POINTS = 5
#: The late half's slope must keep at least this share of the whole slope: a
#: cache that warms up and levels off has a late slope near zero.
KEEPS_GROWING = 0.3
_TRIM = 0.1  # trimmed share at each end of the request deltas


@dataclass(frozen=True)
class SeriesFit:
    """A robust fit of live bytes against an endpoint's cumulative calls (or time)."""

    slope: float          # bytes per call (or per second)
    low: float            # 90% band of the slope
    high: float
    late_slope: float     # the same over the second half of the points
    growth: float         # slope x the span of x after warm-up
    rising: float         # one-sided Kendall confidence that y rises with x, 0..1
    points: int
    first: float          # median of the first points after warm-up
    last: float           # median of the last points

    @property
    def keeps_growing(self) -> bool:
        return self.slope > 0 and self.late_slope >= KEEPS_GROWING * self.slope


def fit_growth(x: np.ndarray, y: np.ndarray, warm_x: float | None = None) -> SeriesFit | None:
    """Theil-Sen slope of ``y`` on ``x`` after warm-up, with its band and a late-half slope.

    ``x`` ascending (cumulative calls or seconds). None when there are too few
    points or ``x`` does not move.
    """
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if warm_x is not None:
        keep = x >= warm_x
        if keep.sum() >= MIN_POINTS:
            x, y = x[keep], y[keep]
    if len(x) < MIN_POINTS or x[-1] - x[0] <= 0:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # a series of mostly equal values (an endpoint with no live samples most of
        # the time) makes the band's variance formula go negative: no band then
        warnings.simplefilter("ignore", RuntimeWarning)
        slope, _, low, high = stats.theilslopes(y, x, alpha=0.90)
        half = len(x) // 2
        late = x[half:], y[half:]
        late_slope = (float(stats.theilslopes(late[1], late[0])[0])
                      if len(late[0]) >= 3 and late[0][-1] > late[0][0] else slope)
        tau = stats.kendalltau(x, y, alternative="greater")
    if not (np.isfinite(low) and np.isfinite(high)):
        low = high = float(slope)
    rising = 1.0 - float(tau.pvalue) if np.isfinite(tau.pvalue) else 0.0
    tenth = max(2, len(y) // 10)
    return SeriesFit(slope=float(slope), low=float(low), high=float(high), late_slope=late_slope,
                     growth=float(slope * (x[-1] - x[0])), rising=rising, points=int(len(x)),
                     first=float(np.median(y[:tenth])), last=float(np.median(y[-tenth:])))


def _session_rows(frame: pd.DataFrame, sid: str) -> pd.DataFrame:
    return frame[frame["session_id"] == sid] if len(frame) else frame


def tagged_endpoint_series(s: Sessions, sid: str) -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """Heap record times, and per endpoint its estimated live bytes at each (0 where absent)."""
    heaps = _session_rows(s.heaps, sid)
    heaps = heaps[heaps["seq"].notna() & heaps["ts"].notna()].sort_values("seq") if len(heaps) else heaps
    if not len(heaps):
        return np.array([]), {}
    seqs = heaps["seq"].to_numpy(dtype="int64")
    ts = heaps["ts"].to_numpy(dtype=float, na_value=np.nan)
    rows = _session_rows(s.heap_endpoints, sid)
    rows = rows[rows["heap_seq"].notna() & rows["size_bytes"].notna()] if len(rows) else rows
    if not len(rows):
        return ts, {}
    table = pd.DataFrame({"seq": rows["heap_seq"].astype("int64"),
                          "key": list(zip(rows["method"].astype(str), rows["route"].astype(str))),
                          "size": rows["size_bytes"].astype("float64")})
    pivot = table.pivot_table(index="seq", columns="key", values="size", aggfunc="sum", fill_value=0.0)
    pivot = pivot.reindex(seqs, fill_value=0.0)
    return ts, {key: pivot[key].to_numpy(dtype=float) for key in pivot.columns}


def tagged_site_series(s: Sessions, sid: str, endpoints: set[tuple[str, str]] | None = None
                       ) -> tuple[np.ndarray, dict[tuple[str, str, str, str | None], np.ndarray], pd.DataFrame]:
    """Per (method, route, site, app_site): live bytes at each heap record; and the rows' metadata."""
    heaps = _session_rows(s.heaps, sid)
    heaps = heaps[heaps["seq"].notna() & heaps["ts"].notna()].sort_values("seq") if len(heaps) else heaps
    rows = _session_rows(s.heap_sites, sid)
    rows = rows[rows["heap_seq"].notna() & rows["size_bytes"].notna()] if len(rows) else rows
    if not len(heaps) or not len(rows):
        return np.array([]), {}, rows
    if endpoints is not None:
        keys = pd.Series(list(zip(rows["method"].astype(str), rows["route"].astype(str))), index=rows.index)
        rows = rows[keys.isin(endpoints)]
        if not len(rows):
            return np.array([]), {}, rows
    seqs = heaps["seq"].to_numpy(dtype="int64")
    ts = heaps["ts"].to_numpy(dtype=float, na_value=np.nan)
    app = rows["app_site"].astype(object).where(rows["app_site"].notna(), "")
    table = pd.DataFrame({"seq": rows["heap_seq"].astype("int64"),
                          "key": list(zip(rows["method"].astype(str), rows["route"].astype(str),
                                          rows["site"].astype(str), app)),
                          "size": rows["size_bytes"].astype("float64")})
    pivot = table.pivot_table(index="seq", columns="key", values="size", aggfunc="sum", fill_value=0.0)
    pivot = pivot.reindex(seqs, fill_value=0.0)
    out = {(m, r, site, app_site or None): pivot[(m, r, site, app_site)].to_numpy(dtype=float)
           for (m, r, site, app_site) in pivot.columns}
    return ts, out, rows


@dataclass(frozen=True)
class DeltaEstimate:
    """Retained bytes per call from a request's own RSS delta, corrected for the rest of the process."""

    per_call: float
    stderr: float
    measured: int
    raw_mean: float
    #: the middle request's delta: a leaker grows RSS in most of its own requests; an
    #: endpoint whose mean comes from a minority of big deltas is growing the allocator's
    #: pool for memory someone else keeps (freed memory reused by the leaker's mallocs)
    median: float = 0.0


def request_delta_estimates(s: Sessions, sid: str, warm_ts: float, growth_bytes_per_s: float
                            ) -> dict[tuple[str, str], DeltaEstimate]:
    """Per endpoint: the trimmed mean of its measured requests' RSS deltas after warm-up,
    less what the whole process grew during an average one of its requests.

    A request's delta also holds what concurrent requests left behind while it
    ran (the process grows ``growth_bytes_per_s`` on average), which is why the
    correction subtracts that growth over the request's duration. Trimming
    drops the requests that caught another's transient allocation.
    """
    req = _session_rows(s.requests, sid)
    if not len(req) or "rss_delta_bytes" not in req:
        return {}
    ts = req["ts"].to_numpy(dtype=float, na_value=np.nan)
    delta = req["rss_delta_bytes"].to_numpy(dtype=float, na_value=np.nan)
    duration = req["duration_s"].to_numpy(dtype=float, na_value=np.nan)
    frame = pd.DataFrame({"method": req["method"].astype(str).to_numpy(), "route": req["route"].astype(str).to_numpy(),
                          "delta": delta, "duration": duration})
    frame = frame[(ts >= warm_ts) & np.isfinite(delta)]
    out: dict[tuple[str, str], DeltaEstimate] = {}
    g = max(growth_bytes_per_s, 0.0) if math.isfinite(growth_bytes_per_s) else 0.0
    for (method, route), group in frame.groupby(["method", "route"], sort=False):
        d = group["delta"].to_numpy(dtype=float)
        if len(d) < 10:
            continue
        mean = float(stats.trim_mean(d, _TRIM))
        clipped = np.clip(d, np.quantile(d, _TRIM), np.quantile(d, 1 - _TRIM))
        stderr = float(np.std(clipped, ddof=1) / ((1 - 2 * _TRIM) * math.sqrt(len(d))))
        background = g * float(np.nanmean(group["duration"].to_numpy(dtype=float)))
        out[(str(method), str(route))] = DeltaEstimate(per_call=mean - background, stderr=stderr,
                                                       measured=len(d), raw_mean=float(np.mean(d)),
                                                       median=float(np.median(d)))
    return out
