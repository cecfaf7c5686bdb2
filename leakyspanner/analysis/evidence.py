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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .load import Sessions
from .stats import bucket_medians, theil_sen

__all__ = ["IncrementFit", "SeriesFit", "fit_growth", "increment_fit", "min_intervals", "request_delta_estimates", "robust_nnls",
           "tagged_endpoint_series", "tagged_site_series"]

#: Share of the points (in time) treated as warm-up before fitting.
WARMUP_FRACTION = 0.2
#: A fit needs at least this many points after warm-up.
MIN_POINTS = 5
#: Most points a fit takes (bucket medians beyond): a day of 5 s heap records is 17k points,
#: and Theil-Sen's pairwise slopes grow with the square (200 points: 20k pairs, about 2 ms).
MAX_FIT_POINTS = 200
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
    x, y = bucket_medians(x, y, MAX_FIT_POINTS)
    # the same Theil-Sen + Kendall as every trend (stats.theil_sen), on calls instead of time
    slope, _, low, high, rising = theil_sen(x, y)
    half = len(x) // 2
    late_slope = theil_sen(x[half:], y[half:], rising=False)[0] if len(x) - half >= 3 else slope
    if not math.isfinite(late_slope):
        late_slope = slope
    tenth = max(2, len(y) // 10)
    return SeriesFit(slope=float(slope), low=float(low), high=float(high), late_slope=late_slope,
                     growth=float(slope * (x[-1] - x[0])), rising=rising, points=int(len(x)),
                     first=float(np.median(y[:tenth])), last=float(np.median(y[-tenth:])))


def _session_rows(frame: pd.DataFrame, sid: str) -> pd.DataFrame:
    return frame[frame["session_id"] == sid] if len(frame) else frame


def _pivot(rows: pd.DataFrame, columns: Sequence[str], seqs: np.ndarray
           ) -> tuple[list[tuple[Any, ...]], np.ndarray]:
    """Sum of ``size_bytes`` per heap record (row of the result, in ``seqs`` order) and per
    distinct value of ``columns`` (its columns; the keys, in first-seen order).

    Integer codes and one ``np.add.at`` instead of tuples of strings: a day of heap
    records holds millions of rows, and iterating their string columns was most of the
    report's time.
    """
    combined = np.zeros(len(rows), dtype=np.int64)
    for name in columns:
        codes, uniques = pd.factorize(rows[name], use_na_sentinel=False)
        combined = combined * (len(uniques) + 1) + codes
    keys, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    position = np.searchsorted(seqs, rows["heap_seq"].to_numpy(dtype="int64"))
    inside = (position < len(seqs)) & (seqs[np.minimum(position, len(seqs) - 1)] == rows["heap_seq"].to_numpy(
        dtype="int64"))
    matrix = np.zeros((len(seqs), len(keys)))
    np.add.at(matrix, (position[inside], inverse.reshape(-1)[inside]),
              rows["size_bytes"].to_numpy(dtype=float, na_value=0.0)[inside])
    values = [rows[name].take(first).astype(object) for name in columns]
    labels = [tuple(None if v is None or v is pd.NA or v != v else v for v in key) for key in zip(*values)]
    return labels, matrix


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
    labels, matrix = _pivot(rows, ("method", "route"), seqs)
    return ts, {(str(m), str(r)): matrix[:, i] for i, (m, r) in enumerate(labels)}


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
    labels, matrix = _pivot(rows, ("method", "route", "site", "app_site"), seqs)
    out = {(str(m), str(r), str(site), app_site or None): matrix[:, i]
           for i, (m, r, site, app_site) in enumerate(labels)}
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


# -- per-interval increments: memory and descriptors no allocator hook sees ------------------------
#: Most condition number of the centred, column-scaled calls matrix that still tells endpoints apart.
MAX_CONDITION = 100.0
#: Share of bootstrap fits that must agree on the top endpoint.
TOP_AGREEMENT = 0.9
_INCREMENT_BOOTSTRAP = 200
#: Most rows an increment fit takes (sums of consecutive intervals beyond).
MAX_INCREMENT_ROWS = 300


@dataclass(frozen=True)
class IncrementFit:
    """Per-interval increments of a counter regressed on per-interval calls per endpoint."""

    keys: list[tuple[str, str]]
    per_call: np.ndarray          # non-negative increment per call, per endpoint
    low: np.ndarray               # bootstrap 90% band
    high: np.ndarray
    top: int | None               # index of the endpoint with the largest share of the increments
    top_agreement: float          # share of bootstrap fits naming the same top endpoint
    condition: float              # of the centred, column-scaled design
    intervals: int
    identifiable: bool
    reason: str                   # why it cannot tell endpoints apart ("" when it can)


def robust_nnls(design: np.ndarray, y: np.ndarray, iterations: int = 6) -> np.ndarray:
    """``scipy.optimize.nnls`` with Huber weights, so the odd interval that caught a huge
    transient (or the sample after shutdown) does not drag the fit."""
    coef: np.ndarray = optimize.nnls(design, y)[0]
    for _ in range(iterations):
        resid = y - design @ coef
        scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid)))) or 1.0
        root = np.sqrt(np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(resid), 1e-12)))
        coef = optimize.nnls(design * root[:, None], y * root)[0]
    return coef


def min_intervals(endpoints: int) -> int:
    """Fewest intervals an increment fit over ``endpoints`` columns (plus an intercept) accepts."""
    return max(8, 2 * endpoints + 2)


def increment_fit(calls: np.ndarray, increments: np.ndarray, keys: Sequence[tuple[str, str]],
                  seed: int = 0) -> IncrementFit:
    """Which endpoint's calls make a counter (open fds, native RSS) step up, interval by interval.

    Cumulative calls are collinear under a steady mix, but what each interval
    adds is not: the calls per endpoint in one interval scatter randomly
    (multinomial noise) around the mix, and a counter that grows with one
    endpoint's calls follows that endpoint's scatter. Non-negative robust
    least squares with a free intercept; a row bootstrap gives each
    coefficient's band and how often the top endpoint stays on top. Not
    identifiable (``reason`` says why) with too few intervals, a design whose
    centred columns are nearly collinear, a top endpoint whose band includes
    zero, or bootstrap fits that disagree on the top endpoint.
    """
    keys = list(keys)
    ok = np.isfinite(increments) & np.isfinite(calls).all(axis=1)
    x, y = calls[ok], increments[ok]
    if len(y) > MAX_INCREMENT_ROWS:
        # a day at 5 s is 17k intervals: sums over runs of consecutive intervals obey the
        # same linear model, and keep the bootstrap's hundreds of NNLS fits cheap
        size = -(-len(y) // MAX_INCREMENT_ROWS)
        edges = np.arange(0, len(y), size)
        x, y = np.add.reduceat(x, edges, axis=0), np.add.reduceat(y, edges)
    used = np.flatnonzero(x.sum(axis=0) > 0)
    n, k = len(y), len(used)
    zeros = np.zeros(len(keys))

    def refused(reason: str, condition: float = math.nan) -> IncrementFit:
        return IncrementFit(keys, zeros, zeros, zeros, None, 0.0, condition, n, False, reason)

    if k == 0:
        return refused("no calls")
    if n < min_intervals(k):
        return refused(f"{n} intervals for {k} endpoints: at least {min_intervals(k)} needed")
    xu = x[:, used]
    centred = xu - xu.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    if (norms <= 0).any():
        return refused("an endpoint's calls did not vary between intervals")
    condition = float(np.linalg.cond(centred / norms))
    if not condition <= MAX_CONDITION:
        return refused(f"calls per interval too collinear (condition number {condition:.0f})", condition)
    ones = np.ones(n)
    design = np.column_stack([xu, ones, -ones])
    coef = robust_nnls(design, y)[:k]
    totals = xu.sum(axis=0)
    top = int(np.argmax(coef * totals))
    rng = np.random.default_rng(seed)
    boots = np.empty((_INCREMENT_BOOTSTRAP, k))
    for b in range(_INCREMENT_BOOTSTRAP):
        rows = rng.integers(0, n, n)
        boots[b] = robust_nnls(design[rows], y[rows], iterations=2)[:k]
    agreement = float((np.argmax(boots * totals, axis=1) == top).mean())
    low, high = np.percentile(boots, 5, axis=0), np.percentile(boots, 95, axis=0)
    per_call, lo_all, hi_all = zeros.copy(), zeros.copy(), zeros.copy()
    per_call[used], lo_all[used], hi_all[used] = coef, low, high
    reason = ""
    if coef[top] <= 0 or low[top] <= 0:
        reason = "no endpoint's calls step the counter up beyond noise"
    elif agreement < TOP_AGREEMENT:
        reason = f"resampled intervals name the same endpoint only {agreement:.0%} of the time"
    return IncrementFit(keys, per_call, lo_all, hi_all, int(used[top]), agreement, condition, n, not reason, reason)
