"""From a session to a verdict: is it leaking, which endpoint, how much per call,
which ``file:line``, what kind, and did a fix work.

Why regression: under concurrency a request's own RSS delta includes every
other request's allocations, so per-request deltas blame whoever happens to
be busy. Memory growth per sampling interval, regressed on how often each
endpoint was called in that interval (non-negative least squares), recovers
the bytes each call leaves behind. Trends use Theil-Sen slopes, which shrug
off the spikes of heavy-but-transient endpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ..formatting import format_bytes
from ..schema import BACKGROUND_ROUTE
from .evidence import (
    fit_growth,
    increment_fit,
    min_intervals,
    request_delta_estimates,
    robust_nnls,
    tagged_endpoint_series,
    tagged_site_series,
)
from .load import Sessions
from .paths import short_site
from .stats import trend_line
from .verdict import (
    EndpointAttribution,
    FixCheck,
    GrowingSite,
    LeakKind,
    Trend,
    TrendStatus,
    Verdict,
    VerdictStatus,
)

__all__ = ["compare", "diagnose", "diagnose_all", "format_fix_check", "format_verdict"]

_MB = 1024 * 1024
_WARMUP_FRACTION = 0.2
_MIN_SAMPLES = 6
_BOOTSTRAP = 120
_MAX_LEVEL_POINTS = 400
_T = TypeVar("_T")
#: per diagnose call (a context variable, so the dashboard's threads never share one)
_MEMO: ContextVar[dict[tuple[object, ...], Any] | None] = ContextVar("leakyspanner_diagnose_memo", default=None)
#: below this wobble of an endpoint's cumulative calls around a straight line (as a
#: share of its calls), its traffic is steady: a Poisson stream of 1,000 calls wobbles ~1%
_STEADY_SHARE = 0.03


# ---------------------------------------------------------------- statistics
def _material(metric: str, level: float) -> float:
    """Growth below this is noise for the metric at this level (bytes)."""
    if metric == "rss_bytes":
        return max(2 * _MB, 0.03 * level)
    return max(1 * _MB, 0.05 * level)


def _trend(metric: str, t: np.ndarray, y: np.ndarray, requests_after_warmup: int | None) -> Trend:
    keep = np.isfinite(y) & np.isfinite(t)
    t, y = t[keep], y[keep]
    empty = Trend(metric, "not enough data", math.nan, math.nan, math.nan, 0.0, math.nan, None,
                  0.0, int(len(t)), math.nan, math.nan)
    if len(t) < _MIN_SAMPLES or t[-1] - t[0] <= 0:
        return empty
    # the one trend fit: the plots' MB/hour, the fix check and the dashboard use it too
    line = trend_line(t, y, _WARMUP_FRACTION)
    warm_until = line.fit_start
    start = int(np.searchsorted(t, warm_until))
    tw, yw = t[start:], y[start:]
    if len(tw) < 4 or not math.isfinite(line.slope):
        return empty
    slope, lo, hi, confidence, late_slope = line.slope, line.low, line.high, line.confidence, line.late_slope
    span = float(tw[-1] - tw[0])
    level = float(np.median(yw))
    growth = slope * span
    material = _material(metric, level)
    value_range = float(yw.max() - yw.min())
    drops = int((np.diff(yw) < -0.25 * value_range).sum()) if value_range > material else 0
    status: TrendStatus
    if growth > material and lo > 0 and late_slope > 0.25 * slope:
        status = "leaking"
    elif drops >= 2:
        status = "sawtooth"
    elif float(yw[len(yw) // 3:].max() - y[:start + 1].min()) > material and late_slope <= 0.25 * max(slope, 0):
        status = "plateau"
    elif growth > material and lo > 0:
        status = "plateau"  # rose after warm-up, flat at the end
    else:
        status = "flat"
    per_1k = None
    if requests_after_warmup:
        per_1k = growth / requests_after_warmup * 1000
    return Trend(
        metric=metric, status=status, slope_bytes_per_s=slope, slope_low_bytes_per_s=lo,
        slope_high_bytes_per_s=hi, confidence=round(confidence, 4), mb_per_hour=slope * 3600 / _MB,
        bytes_per_1k_requests=per_1k, warmup_s=float(warm_until - t[0]), samples=int(len(t)),
        start_bytes=float(np.median(yw[: max(1, len(yw) // 10)])),
        end_bytes=float(np.median(yw[-max(1, len(yw) // 10):])),
    )


# ---------------------------------------------------------------- attribution
def _memo(name: str, compute: Callable[[], _T], *key: object) -> _T:
    """``compute()`` once per diagnose call: call counts of a day's million interval records
    were rebuilt by every evidence source in turn."""
    memo = _MEMO.get()
    if memo is None:
        return compute()
    full = (name, *map(id, key))
    if full not in memo:
        memo[full] = compute()
    return memo[full]  # type: ignore[no-any-return]


def _interval_matrix(s: Sessions, sid: str, samples: pd.DataFrame
                     ) -> tuple[np.ndarray, list[tuple[str, str]], np.ndarray]:
    """Calls per endpoint per sampling interval, and the interval end times."""
    return _memo("interval_matrix", lambda: _build_interval_matrix(s, sid, samples), s, sid, samples)


def _calls_by_seq(intervals: pd.DataFrame, seqs: np.ndarray) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Calls summed per (sample seq, endpoint), endpoints sorted as text, a row per entry of ``seqs``.

    Integer codes and one ``np.add.at``: a day holds hundreds of thousands of interval
    records, and a pivot table over (method, route) string tuples took most of a second.
    """
    method_codes, methods = pd.factorize(intervals["method"].astype(object).to_numpy(), use_na_sentinel=False)
    route_codes, routes = pd.factorize(intervals["route"].astype(object).to_numpy(), use_na_sentinel=False)
    keys, column = np.unique(method_codes * len(routes) + route_codes, return_inverse=True)
    labels = [(str(methods[k // len(routes)]), str(routes[k % len(routes)])) for k in keys.tolist()]
    order = sorted(range(len(labels)), key=labels.__getitem__)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    unique_seqs, row = np.unique(intervals["seq"].to_numpy(dtype="int64"), return_inverse=True)
    table = np.zeros((len(unique_seqs) + 1, len(labels)))  # the last row stays 0: seqs without intervals
    np.add.at(table, (row.reshape(-1), rank[column.reshape(-1)]),
              intervals["calls"].to_numpy(dtype=float, na_value=0.0))
    position = np.searchsorted(unique_seqs, seqs)  # NaN sorts last: not found
    found = position < len(unique_seqs)
    found[found] = unique_seqs[position[found]] == seqs[found]
    return table[np.where(found, position, len(unique_seqs))], [labels[i] for i in order]


def _build_interval_matrix(s: Sessions, sid: str, samples: pd.DataFrame
                           ) -> tuple[np.ndarray, list[tuple[str, str]], np.ndarray]:
    ts = samples["ts"].to_numpy(dtype=float, na_value=np.nan)
    intervals = s.intervals[s.intervals["session_id"] == sid] if len(s.intervals) else s.intervals
    intervals = intervals[intervals["seq"].notna()] if len(intervals) else intervals  # the loader nulls bad seqs
    if len(intervals):
        matrix, keys = _calls_by_seq(intervals, samples["seq"].to_numpy(dtype=float, na_value=np.nan))
        return matrix, keys, ts
    else:  # legacy logs and older files: bin the request records by sample time
        req = s.requests[s.requests["session_id"] == sid]
        if not len(req) or len(ts) < 2:
            return np.zeros((len(ts), 0)), [], ts
        keys = list(zip(req["method"].astype(str), req["route"].astype(str)))
        bins = np.searchsorted(ts, req["ts"].to_numpy(dtype=float, na_value=np.nan) + req["duration_s"].fillna(0).to_numpy(dtype=float, na_value=np.nan))
        frame = pd.DataFrame({"bin": bins, "key": keys, "calls": 1.0})
        table = frame.pivot_table(index="bin", columns="key", values="calls", aggfunc="sum", fill_value=0.0)
        table = table.reindex(range(len(ts)), fill_value=0.0)
    keys_out = list(table.columns)
    return table.to_numpy(dtype=float), keys_out, ts


def _call_counts(s: Sessions, sid: str) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Per endpoint, (times, calls completed by each time), ascending (see :func:`_count_calls`)."""
    return _memo("call_counts", lambda: _count_calls(s, sid), s, sid)


def _count_calls(s: Sessions, sid: str) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Per endpoint, (times, calls completed by each time), ascending.

    From the ``endpoint_interval`` records, which count every request (since
    schema version 3 request records are only the RSS-measured sample); files
    without them fall back to one step per request record.
    """
    intervals = s.intervals[s.intervals["session_id"] == sid] if len(s.intervals) else s.intervals
    out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    if len(intervals):
        frame = pd.DataFrame({"method": intervals["method"].astype(str), "route": intervals["route"].astype(str),
                              "ts": intervals["ts"].to_numpy(dtype=float, na_value=np.nan),
                              "calls": intervals["calls"].to_numpy(dtype=float, na_value=0.0)})
        for key, group in frame.sort_values("ts", kind="stable").groupby(["method", "route"], sort=False):
            out[(str(key[0]), str(key[1]))] = (group["ts"].to_numpy(), np.cumsum(group["calls"].to_numpy()))
        return out
    req = s.requests[s.requests["session_id"] == sid] if len(s.requests) else s.requests
    if len(req):
        frame = pd.DataFrame({"method": req["method"].astype(str), "route": req["route"].astype(str),
                              "ts": req["ts"].to_numpy(dtype=float, na_value=np.nan)})
        for key, group in frame.groupby(["method", "route"], sort=False):
            times = np.sort(group["ts"].to_numpy())
            out[(str(key[0]), str(key[1]))] = (times, np.arange(1, len(times) + 1, dtype=float))
    return out


def _calls_at(counts: tuple[np.ndarray, np.ndarray], ts: np.ndarray | float) -> np.ndarray:
    """Calls completed by each of ``ts`` (0 before the first)."""
    times, cumulative = counts
    idx = np.searchsorted(times, ts, side="right")
    return np.where(idx > 0, cumulative[np.maximum(idx - 1, 0)], 0.0)


def _floors(s: Sessions, sid: str, samples: pd.DataFrame, metric: str) -> np.ndarray:
    """The lowest reading of ``metric`` in each sampling interval.

    Retained memory is the floor under the spikes of in-flight requests. Every
    request carries readings at its start and end, so an interval holds many
    readings; their minimum tracks what stays allocated far better than the
    one sample that may land in the middle of a 4 MB transient allocation.
    """
    ts = samples["ts"].to_numpy(dtype=float, na_value=np.nan)
    values = samples[metric].to_numpy(dtype=float, na_value=np.nan)
    floors: np.ndarray = values.copy()
    before, after = (("rss_before_bytes", "rss_after_bytes") if metric == "rss_bytes"
                     else ("traced_before_bytes", "traced_after_bytes"))
    req = s.requests[s.requests["session_id"] == sid] if len(s.requests) else s.requests
    if not len(req) or before not in req:
        return floors
    start = req["ts"].to_numpy(dtype=float, na_value=np.nan)
    end = start + req["duration_s"].to_numpy(dtype=float, na_value=0.0)
    times = np.concatenate([start, end])
    readings = np.concatenate([req[before].to_numpy(dtype=float, na_value=np.nan),
                               req[after].to_numpy(dtype=float, na_value=np.nan)])
    ok = np.isfinite(readings) & np.isfinite(times)
    bins = np.searchsorted(ts, times[ok])  # reading at t belongs to the interval closing at ts[bin]
    inside = bins < len(ts)
    mins = pd.Series(readings[ok][inside]).groupby(bins[inside]).min()
    idx = mins.index.to_numpy()
    floors[idx] = np.fmin(floors[idx], mins.to_numpy())
    return floors


def _huber_nnls(design: np.ndarray, y: np.ndarray, iterations: int = 6) -> np.ndarray:
    """NNLS made robust to the odd interval that caught a huge transient (Huber weights)."""
    return robust_nnls(design, y, iterations)


def _attribute(s: Sessions, sid: str, samples: pd.DataFrame, metric: str, warm_ts: float, seed: int = 0
               ) -> list[EndpointAttribution]:
    """Retained bytes per call: the memory floor regressed on cumulative calls per endpoint.

    Levels rather than per-interval differences: the floor's noise does not
    accumulate, while a leak does, and allocator lumpiness (RSS that grows
    only once freed memory is used up) averages out over the session.
    """
    x, keys, ts = _interval_matrix(s, sid, samples)
    if not keys:
        return []
    y = _floors(s, sid, samples, metric)
    keep = (ts > warm_ts) & np.isfinite(y)
    if keep.sum() < 6:
        return []
    cumulative = np.cumsum(x, axis=0)[keep]
    cumulative = cumulative - cumulative[0]
    yk = y[keep] - y[keep][0]
    if len(yk) > _MAX_LEVEL_POINTS:
        # Levels regression: evenly spaced rows carry the same information, and a
        # 24-hour session (17k intervals) stays fast enough to open in the UI.
        rows = np.linspace(0, len(yk) - 1, _MAX_LEVEL_POINTS).round().astype(int)
        cumulative, yk = cumulative[rows], yk[rows]
    ones = np.ones(len(yk))
    design = np.column_stack([cumulative, ones, -ones])  # free intercept as two non-negative parts
    coef = _huber_nnls(design, yk)[: len(keys)]
    rng = np.random.default_rng(seed)
    resid = yk - design[:, : len(keys)] @ coef
    resid = resid - resid.mean()
    k = len(yk)
    block = max(2, int(round(math.sqrt(k))))
    boots = []
    fitted = design[:, : len(keys)] @ coef
    for _ in range(_BOOTSTRAP):
        # moving-block bootstrap of the residuals keeps their autocorrelation
        starts = rng.integers(0, max(1, k - block + 1), size=k // block + 1)
        idx = np.concatenate([np.arange(b0, b0 + block) for b0 in starts])[:k]
        boots.append(_huber_nnls(design, fitted + resid[np.minimum(idx, k - 1)], iterations=1)[: len(keys)])
    boot = np.array(boots)
    lo = np.percentile(boot, 5, axis=0)
    hi = np.percentile(boot, 95, axis=0)
    xk = x[keep]
    dy = np.diff(yk)
    calls = xk.sum(axis=0)
    req = s.requests[s.requests["session_id"] == sid]
    naive: dict[tuple[str, str], float] = {}
    if len(req):
        grouped = req.groupby([req["method"].astype(str), req["route"].astype(str)], observed=True)["rss_delta_bytes"]
        naive = {key: float(v) for key, v in grouped.mean().items()}
    all_calls = {key: int(cum[-1]) for key, (_, cum) in _call_counts(s, sid).items() if len(cum)}
    contributions = coef * calls
    explained = max(float(contributions.sum()), 1.0)
    total_growth = max(float(dy.sum()), 0.0)
    out = []
    for i, key in enumerate(keys):
        contribution = float(contributions[i])
        significant = bool(lo[i] > 0 and contribution > max(0.1 * total_growth, _material(metric, 0) / 2))
        out.append(EndpointAttribution(
            method=key[0], route=key[1], calls=all_calls.get(key, int(calls[i])),
            retained_bytes_per_call=float(coef[i]), low_bytes_per_call=float(lo[i]),
            high_bytes_per_call=float(hi[i]), naive_avg_delta_bytes=naive.get(key, math.nan),
            share_of_growth=contribution / explained, significant=significant,
        ))
    out.sort(key=lambda e: (e.significant, e.retained_bytes_per_call * e.calls), reverse=True)
    return out


def _naive_deltas(s: Sessions, sid: str) -> dict[tuple[str, str], float]:
    req = s.requests[s.requests["session_id"] == sid]
    if not len(req):
        return {}
    grouped = req.groupby([req["method"].astype(str), req["route"].astype(str)], observed=True)["rss_delta_bytes"]
    return {(str(k[0]), str(k[1])): float(v) for k, v in grouped.mean().items()}


def _sample_bytes(s: Sessions, sid: str) -> float:
    heaps = s.heaps[s.heaps["session_id"] == sid] if len(s.heaps) else s.heaps
    if not len(heaps) or "sample_bytes" not in heaps:
        return 0.0
    value = heaps["sample_bytes"].astype("float64").median()
    return float(value) if value == value else 0.0


def _tagged_attribution(s: Sessions, sid: str, warm_ts: float, start_ts: float
                        ) -> tuple[list[EndpointAttribution], float]:
    """Retained bytes per call from each endpoint's own tagged live samples.

    Each endpoint's estimated live bytes at each heap record, regressed
    (Theil-Sen) on that endpoint's own cumulative calls. Significant when the
    band excludes zero, the growth clears the sampling noise, it is still
    growing in the second half (a warming cache is not), and it rises with
    calls (Kendall). Also returns the growth of memory allocated outside any
    request (bytes per second), which no endpoint owns.
    """
    ts, series = tagged_endpoint_series(s, sid)
    if not series:
        return [], 0.0
    counts = _call_counts(s, sid)
    material = max(1 * _MB, 4 * _sample_bytes(s, sid))
    naive = _naive_deltas(s, sid)
    fits = []
    background = 0.0
    for key, y in series.items():
        if key[1] == BACKGROUND_ROUTE or key not in counts:
            fit = fit_growth(ts - start_ts, y, warm_ts - start_ts)
            if key[1] == BACKGROUND_ROUTE and fit is not None and fit.low > 0 and fit.keeps_growing:
                background = fit.slope
            continue
        x = _calls_at(counts[key], ts)
        fit = fit_growth(x, y, float(_calls_at(counts[key], warm_ts)))
        if fit is not None:
            fits.append((key, fit))
    total = sum(max(f.growth, 0.0) for _, f in fits) or 1.0
    out = []
    for key, fit in fits:
        significant = bool(fit.low > 0 and fit.growth >= material and fit.keeps_growing and fit.rising >= 0.95)
        out.append(EndpointAttribution(
            method=key[0], route=key[1], calls=int(counts[key][1][-1]),
            retained_bytes_per_call=max(fit.slope, 0.0), low_bytes_per_call=fit.low,
            high_bytes_per_call=fit.high, naive_avg_delta_bytes=naive.get(key, math.nan),
            share_of_growth=max(fit.growth, 0.0) / total, significant=significant,
            evidence="tagged heap samples"))
    out.sort(key=lambda e: (e.significant, e.share_of_growth), reverse=True)
    return out, background


def _delta_attribution(s: Sessions, sid: str, samples: pd.DataFrame, warm_ts: float, rss: Trend
                       ) -> list[EndpointAttribution]:
    """Retained bytes per call from each endpoint's own measured RSS deltas (native memory).

    A request's own RSS delta names the endpoint, but its size runs low: the kernel
    batches RSS counter updates per thread, so short reads lag the pages touched. So
    the deltas only rank the endpoints and share the growth out; the size comes from
    the RSS floor against the top endpoint's own cumulative calls, which holds under
    steady and varying traffic alike.
    """
    g = rss.slope_bytes_per_s if rss.slope_bytes_per_s == rss.slope_bytes_per_s else 0.0
    estimates = request_delta_estimates(s, sid, warm_ts, g)
    if not estimates:
        return []
    counts = _call_counts(s, sid)
    after = {key: float(cum[-1] - _calls_at((times, cum), warm_ts)) for key, (times, cum) in counts.items()}
    contributions = {key: max(e.per_call, 0.0) * after.get(key, e.measured) for key, e in estimates.items()}
    total = sum(contributions.values()) or 1.0
    top = max(contributions, key=contributions.__getitem__)
    scale = 1.0
    if top in counts and estimates[top].per_call > 0:
        ts = samples["ts"].to_numpy(dtype=float, na_value=np.nan)
        floors = _floors(s, sid, samples, "rss_bytes")
        fit = fit_growth(_calls_at(counts[top], ts), floors, float(_calls_at(counts[top], warm_ts)))
        if fit is not None and fit.slope > 0:
            scale = fit.slope / estimates[top].per_call
    growth_after = max(g, 0.0) * max(float(samples["ts"].max()) - warm_ts, 0.0) if len(samples) else 0.0
    # An endpoint that holds far more Python heap while in flight than the RSS its calls seem to
    # keep is a transient allocator: its RSS deltas are the allocator's pool growing for memory
    # another endpoint keeps (the heap engine sees its in-flight bytes at the samples).
    _, tagged = tagged_endpoint_series(s, sid)
    in_flight = {key: float(np.mean(series)) for key, series in tagged.items() if len(series)}  # average held
    out = []
    for key, e in estimates.items():
        contribution = contributions[key]
        transient = in_flight.get(key, 0.0) >= 2 * max(e.per_call, 1.0)
        significant = bool(e.per_call - 2.5 * e.stderr > 0 and contribution * scale >= max(0.25 * growth_after, 2 * _MB)
                           and rss.status == "leaking" and e.median > 0 and not transient)
        out.append(EndpointAttribution(
            method=key[0], route=key[1], calls=int(counts[key][1][-1]) if key in counts else e.measured,
            retained_bytes_per_call=max(e.per_call, 0.0) * scale,
            low_bytes_per_call=(e.per_call - 1.645 * e.stderr) * scale,
            high_bytes_per_call=(e.per_call + 1.645 * e.stderr) * scale, naive_avg_delta_bytes=e.raw_mean,
            share_of_growth=contribution / total, significant=significant, evidence="request RSS deltas"))
    out.sort(key=lambda a: (a.significant, a.share_of_growth), reverse=True)
    return out

def _increment_attribution(s: Sessions, sid: str, samples: pd.DataFrame, warm_ts: float, native: bool,
                           kinds: list[LeakKind], notes: list[str]) -> list[EndpointAttribution]:
    """Native memory and descriptors, from what each sampling interval adds (see ``increment_fit``).

    Open fds are exact counts, so an fd kept per call names its endpoint within a
    few dozen intervals even under a steady mix. The native residual (the RSS
    floor's step less the sampled Python heap's step) is noisier; it names the
    endpoint on its own when it is identifiable, and otherwise must not
    contradict the fd evidence. The bytes per call come from the RSS floor
    against the named endpoint's own calls, as the outside measurement does.
    """
    x, keys, ts = _interval_matrix(s, sid, samples)
    if not keys or len(ts) < 3:
        return []
    # after warm-up when that leaves enough intervals; else every one but the first (startup)
    rows = np.arange(1, len(ts))
    called = int((x.sum(axis=0) > 0).sum())
    rows = rows[ts[rows] > warm_ts] if (ts[rows] > warm_ts).sum() >= min_intervals(called) else rows
    floors = _floors(s, sid, samples, "rss_bytes")
    fits = {}
    if any(k.kind == "file_descriptors" for k in kinds) and "open_fds" in samples:
        fds = samples["open_fds"].to_numpy(dtype=float, na_value=np.nan)
        fits["open fds"] = increment_fit(x[rows], (fds[rows] - fds[rows - 1]), keys)
    if native:
        # An interval's floor is its lowest reading, which on a rising series is at its start:
        # the floor of interval k+1 is the level interval k left behind. Only when the sampled
        # Python heap explains under half of the growth (``native``), so the heap's own steps
        # (in-flight buffers at the sample instants) are left out rather than subtracted.
        inner = rows[rows < len(ts) - 1]
        fits["native RSS"] = increment_fit(x[inner], floors[inner + 1] - floors[inner], keys)
    named = None
    for what, fit in fits.items():
        if fit.identifiable and fit.top is not None:
            other = fits.get("native RSS") if what == "open fds" else None
            if other is not None and other.intervals and other.high[fit.top] <= 0 and other.identifiable:
                notes.append(f"open fds name {' '.join(keys[fit.top])} but the native RSS steps name "
                             f"{' '.join(keys[other.top]) if other.top is not None else 'none'}: not named")
                return []
            named = (what, fit)
            break
    if named is None:
        for what, fit in fits.items():
            notes.append(f"{what} per interval cannot tell the endpoints apart: {fit.reason}")
        return []
    what, fit = named
    assert fit.top is not None
    key = keys[fit.top]
    counts = _call_counts(s, sid)
    if key not in counts:
        return []
    growth = fit_growth(_calls_at(counts[key], ts), floors, float(_calls_at(counts[key], warm_ts)))
    per_call = growth.slope if growth is not None and growth.slope > 0 else 0.0
    if what == "open fds":
        notes.append(f"{key[0]} {key[1]} keeps ≈{fit.per_call[fit.top]:.2f} open file descriptors per call "
                     f"(per-interval fd steps against calls per endpoint, {fit.intervals} intervals, "
                     f"{fit.top_agreement:.0%} of resamples agree)")
    evidence = f"per-interval {what} steps"
    naive = _naive_deltas(s, sid)
    out = []
    for i, k in enumerate(keys):
        if k not in counts:
            continue
        mine = i == fit.top
        out.append(EndpointAttribution(
            method=k[0], route=k[1], calls=int(counts[k][1][-1]),
            retained_bytes_per_call=per_call if mine else 0.0,
            low_bytes_per_call=(growth.low if growth is not None else 0.0) if mine else 0.0,
            high_bytes_per_call=(growth.high if growth is not None else 0.0) if mine else 0.0,
            naive_avg_delta_bytes=naive.get(k, math.nan), share_of_growth=1.0 if mine else 0.0,
            significant=mine, evidence=evidence))
    out.sort(key=lambda e: (e.significant, e.calls), reverse=True)
    return out


def _scale_tagged_to_rss(s: Sessions, sid: str, samples: pd.DataFrame, warm_ts: float,
                         endpoints: list[EndpointAttribution], rss: Trend, notes: list[str]) -> None:
    """Tagged samples say how many live Python bytes each call keeps; a leak of small
    objects costs more RSS than that (allocator pools, fragmentation around the kept
    objects). The RSS floor against the suspect's own cumulative calls says how much RSS
    each call costs; its share of the tagged growth gives the suspect's part. The ratio
    of that to the heap figure (within 1..4x) scales every tagged row; the heap figure
    stays beside.

    Never-finished asyncio tasks are the clearest case (the tasks scenario of
    ``tests/diagnosis/unseen``: 2.7-2.8 bytes of RSS per sampled live byte in the 30 s
    steady runs). Nothing they keep escapes the sampler: since 3.11 a suspended
    coroutine's frame lives inside the coroutine object (``PyObject_GC_NewVar``, the
    OBJ domain the engine wraps), unlike a running function's frame on the thread's
    data stack. What the heap figure misses is the allocator's cost: the kept task,
    coroutine, frame and locals are small objects scattered through pymalloc pools
    that the requests' freed garbage shared, so those pools and arenas cannot be
    returned. Scaling by the RSS floor against the suspect's own calls measures
    that cost instead of guessing it."""
    significant = [e for e in endpoints if e.significant and e.evidence == "tagged heap samples"]
    if not significant or significant[0].retained_bytes_per_call <= 0:
        return
    suspect = significant[0]
    counts = _call_counts(s, sid).get((suspect.method, suspect.route))
    if counts is None or not len(samples):
        return
    ts = samples["ts"].to_numpy(dtype=float, na_value=np.nan)
    fit = fit_growth(_calls_at(counts, ts), _floors(s, sid, samples, "rss_bytes"), float(_calls_at(counts, warm_ts)))
    if fit is None or fit.slope <= 0 or fit.low <= 0:  # RSS must rise with the suspect's calls
        return
    share = suspect.share_of_growth / max(sum(e.share_of_growth for e in significant), 1e-12)
    ratio = fit.slope * share / suspect.retained_bytes_per_call
    if not 1.0 < ratio <= 4.0:
        return
    for e in endpoints:
        if e.evidence == "tagged heap samples":
            e.heap_bytes_per_call = e.retained_bytes_per_call
            e.retained_bytes_per_call *= ratio
            e.low_bytes_per_call *= ratio
            e.high_bytes_per_call *= ratio
    notes.append(f"per-call figures are RSS: each byte of the growing live heap cost {ratio:.2f} bytes of RSS "
                 "(allocator pools and fragmentation around the kept objects)")


def _explained_share(s: Sessions, sid: str, endpoints: list[EndpointAttribution], rss: Trend, warm_ts: float,
                     duration_s: float) -> float:
    """Share of the RSS growth after warm-up that the significant endpoints account for."""
    growth = rss.slope_bytes_per_s * duration_s * (1 - _WARMUP_FRACTION) if rss.slope_bytes_per_s > 0 else 0.0
    if growth <= 0:
        return 1.0
    counts = _call_counts(s, sid)
    total = 0.0
    for e in endpoints:
        if e.significant and (e.method, e.route) in counts:
            times, cum = counts[(e.method, e.route)]
            total += e.retained_bytes_per_call * float(cum[-1] - _calls_at((times, cum), warm_ts))
    return total / growth


def _collinear(s: Sessions, sid: str, samples: pd.DataFrame, warm_ts: float, key: tuple[str, str]) -> bool:
    """True when ``key``'s share of the traffic barely varied after warm-up: its cumulative
    calls are a straight line in the others' calls, as under a steady mix, so no
    regression over time can tell which of them grows memory."""
    x, keys, ts = _interval_matrix(s, sid, samples)
    if key not in keys or len(keys) < 2:
        return False
    keep = ts > warm_ts
    cumulative = np.cumsum(x, axis=0)[keep]
    j = keys.index(key)
    target = cumulative[:, j]
    others = np.delete(cumulative, j, axis=1).sum(axis=1)
    if len(target) < 4 or target[-1] <= target[0]:
        return True
    # against the other endpoints' calls, not time: a throughput that varies moves every
    # endpoint together, and only a share that varies tells them apart
    trend = np.column_stack([others, np.ones(len(others))])
    detrended = target - trend @ np.linalg.lstsq(trend, target, rcond=None)[0]
    return float(np.std(detrended)) < _STEADY_SHARE * float(target[-1] - target[0])


def _routes_of(s: Sessions, sid: str) -> pd.DataFrame:
    return s.routes[s.routes["session_id"] == sid] if len(s.routes) else s.routes


def _endpoint_of_site(routes: pd.DataFrame, file: str, line: int) -> tuple[str, str] | None:
    """The endpoint whose function body holds ``file:line`` (recorded once per route at capture)."""
    if not len(routes):
        return None
    hit = routes[(routes["file"].astype(str) == file) & (routes["first_line"] <= line) & (routes["last_line"] >= line)]
    if not len(hit):
        return None
    row = hit.iloc[0]
    return str(row["method"]), str(row["route"])


def _tagged_sites(s: Sessions, sid: str, warm_ts: float) -> list[GrowingSite]:
    """Allocation sites whose tagged live bytes keep growing with their endpoint's calls."""
    ts, series, rows = tagged_site_series(s, sid)
    if not series:
        return []
    counts = _call_counts(s, sid)
    floor = max(256 * 1024, 2 * _sample_bytes(s, sid))
    meta = rows.drop_duplicates(["site"]).set_index("site")
    out = []
    start = float(ts[0]) if len(ts) else 0.0
    for (method, route, site, app_site), y in series.items():
        key = (method, route)
        if key in counts:
            x = _calls_at(counts[key], ts)
            warm_x = float(_calls_at(counts[key], warm_ts))
        else:
            x, warm_x = ts - start, warm_ts - start
        late = y[ts >= warm_ts]
        tenth = max(2, len(late) // 10)
        if len(late) >= 2 * tenth and float(np.median(late[-tenth:]) - np.median(late[:tenth])) < floor / 2:
            continue  # has not grown by half the floor: skip the fit (a day has hundreds of such rows)
        fit = fit_growth(x, y, warm_x)
        if fit is None or fit.growth < floor or fit.low <= 0 or not fit.keeps_growing:
            continue
        diffs = np.diff(y[ts >= warm_ts]) if (ts >= warm_ts).sum() >= 3 else np.diff(y)
        span_s = float(ts[-1] - ts[0]) or math.nan
        info = meta.loc[site] if site in meta.index else None
        file = str(info["file"]) if info is not None else site.rsplit(":", 1)[0]
        line = int(info["line"]) if info is not None and pd.notna(info["line"]) else 0
        function = str(info["function"]) if info is not None and pd.notna(info["function"]) else None
        per_call_route = f"{method} {route}".strip() if key in counts else None
        out.append(GrowingSite(
            site=site, file=file, line=line, first_size_bytes=int(fit.first), last_size_bytes=int(fit.last),
            growth_bytes=int(fit.growth), growth_per_snapshot_bytes=fit.growth / max(1, fit.points - 1),
            growth_per_hour_bytes=fit.growth / span_s * 3600 if span_s == span_s else math.nan,
            rising_fraction=round(float((diffs > 0).mean()) if len(diffs) else 0.0, 3), count_growth=0,
            bytes_per_call=fit.slope if key in counts else None, per_call_route=per_call_route,
            function=function, app_site=app_site, evidence="tagged heap samples"))
    out.sort(key=lambda g: g.growth_bytes, reverse=True)
    return out[:15]


# ---------------------------------------------------------------- sites
def _sites(s: Sessions, sid: str, candidates: Sequence[EndpointAttribution], warm_ts: float) -> list[GrowingSite]:
    sites = s.sites[s.sites["session_id"] == sid] if len(s.sites) else s.sites
    sites = sites[sites["snapshot_seq"].notna() & sites["ts"].notna()] if len(sites) else sites
    if not len(sites):
        return []
    snaps = sorted(sites["snapshot_seq"].unique())
    snap_ts = sites.groupby("snapshot_seq")["ts"].first()
    after = [q for q in snaps if snap_ts[q] >= warm_ts]
    if len(after) >= 2:
        sites = sites[sites["snapshot_seq"].isin(after)]
        snaps = after
    if len(snaps) < 2:
        return []
    pivot = sites.pivot_table(index="site", columns="snapshot_seq", values="size_bytes", aggfunc="sum")
    counts = sites.pivot_table(index="site", columns="snapshot_seq", values="count", aggfunc="sum")
    # Cumulative calls of each leaking endpoint, to tie each growing site to the
    # endpoint whose calls track its size best (several leaks can run at once).
    calls_by_endpoint = _call_counts(s, sid)
    cumulative = {f"{e.method} {e.route}": calls_by_endpoint[(e.method, e.route)] for e in candidates
                  if (e.method, e.route) in calls_by_endpoint}
    meta = sites.drop_duplicates("site").set_index("site")[["file", "line"]]
    out = []
    for site, row in pivot.iterrows():
        seen = row.dropna()
        if len(seen) < 2:
            continue
        first, last = float(seen.iloc[0]), float(seen.iloc[-1])
        growth = last - first
        if growth <= 0:
            continue
        diffs = np.diff(seen.to_numpy())
        rising = float((diffs > 0).mean()) if len(diffs) else 0.0
        if rising < 0.5:
            continue
        seqs = list(seen.index)
        span_s = float(snap_ts[seqs[-1]] - snap_ts[seqs[0]]) or math.nan
        count_row = counts.loc[site].dropna()
        count_growth = int(count_row.iloc[-1] - count_row.iloc[0]) if len(count_row) >= 2 else 0
        per_call, per_route = None, None
        seen_ts = np.array([float(snap_ts[q]) for q in seqs])
        best = -2.0
        for name, endpoint_counts in cumulative.items():
            calls_at = _calls_at(endpoint_counts, seen_ts)
            made = calls_at[-1] - calls_at[0]
            if made <= 0:
                continue
            sizes_seen = seen.to_numpy(dtype=float)
            fit = 0.0
            if len(seen) >= 3 and calls_at.std() > 0 and sizes_seen.std() > 0:
                fit = float(np.corrcoef(calls_at, sizes_seen)[0, 1])
            if fit > best:
                best, per_call, per_route = fit, growth / made, name
        out.append(GrowingSite(
            site=str(site), file=str(meta.loc[site, "file"]), line=int(meta.loc[site, "line"]),
            first_size_bytes=int(first), last_size_bytes=int(last), growth_bytes=int(growth),
            growth_per_snapshot_bytes=growth / max(1, len(seen) - 1),
            growth_per_hour_bytes=growth / span_s * 3600 if span_s == span_s else math.nan,
            rising_fraction=round(rising, 3), count_growth=count_growth,
            bytes_per_call=per_call, per_call_route=per_route,
        ))
    out.sort(key=lambda g: g.growth_bytes, reverse=True)
    return out[:15]


# ---------------------------------------------------------------- kinds
def _series_trend(samples: pd.DataFrame, column: str) -> tuple[float, float, float]:
    """Growth (last - first after warm-up, by medians of tenths) and Theil-Sen band of a count series."""
    if column not in samples or samples[column].isna().all():
        return math.nan, math.nan, math.nan
    frame = samples[["elapsed_s", column]].dropna()
    if len(frame) < _MIN_SAMPLES:
        return math.nan, math.nan, math.nan
    t = frame["elapsed_s"].to_numpy(dtype=float, na_value=np.nan)
    y = frame[column].to_numpy(dtype=float, na_value=np.nan)
    start = max(1, int(len(t) * _WARMUP_FRACTION))
    t, y = t[start:], y[start:]
    tenth = max(1, len(y) // 10)
    growth = float(np.median(y[-tenth:]) - np.median(y[:tenth]))
    lo = trend_line(t, y, 0.0).low
    return growth, lo, float(np.median(y[:tenth]))


#: Counted resources that leak on their own: (sample column, kind, label,
#: minimum growth, evidence key, remedies).
_COUNTED_RESOURCES = (
    ("open_fds", "file_descriptors", "open file descriptors", 20, "fd_growth",
     ("Close connections, files and clients: use `async with` / `with`, or close them in a finally.",
      "Create HTTP clients and DB pools once (on lifespan startup) and reuse them; close them on shutdown.",
      "Check `ls -l /proc/<pid>/fd` to see what kind of descriptors pile up.")),
    ("threads", "threads", "threads", 5, "thread_growth",
     ("Reuse one ThreadPoolExecutor instead of creating one per request, and shut it down.",
      "Look for libraries started per request that spawn background threads.")),
)


def _kinds(s: Sessions, sid: str, samples: pd.DataFrame, rss: Trend, traced: Trend | None) -> list[LeakKind]:
    kinds: list[LeakKind] = []
    growth, lo, first = _series_trend(samples, "asyncio_tasks")
    if lo > 0 and growth >= max(20, 0.5 * first):  # NaN (no data) fails the comparisons
        tasks = s.tasks[s.tasks["session_id"] == sid] if len(s.tasks) else s.tasks
        names: dict[str, float] = {}
        if len(tasks):
            first_ts, last_ts = tasks["ts"].min(), tasks["ts"].max()
            a = tasks[tasks["ts"] == first_ts].set_index("coro")["tasks"]
            b = tasks[tasks["ts"] == last_ts].set_index("coro")["tasks"]
            diff = b.sub(a, fill_value=0).sort_values(ascending=False)
            names = {str(k): float(v) for k, v in diff.head(5).items() if v > 0}
        top = ", ".join(f"{k} (+{int(v)})" for k, v in names.items()) or "unknown coroutines"
        kinds.append(LeakKind(
            "asyncio_tasks", f"asyncio tasks keep piling up: +{int(growth)} unfinished tasks; growing: {top}",
            {"task_growth": growth, "growing_coroutines": names},
            ["Await or cancel the tasks you create (keep a reference and cancel on shutdown).",
             "Use asyncio.TaskGroup or a bounded queue with a fixed number of workers instead of fire-and-forget create_task.",
             "Add timeouts (asyncio.timeout) to awaits that can hang forever."]))
    for column, kind, label, minimum, key, remedies in _COUNTED_RESOURCES:
        growth, lo, first = _series_trend(samples, column)
        if lo > 0 and growth >= minimum:
            kinds.append(LeakKind(kind, f"{label} keep growing: +{int(growth)} (from {int(first)})",
                                  {key: growth}, list(remedies)))
    if "gc_garbage" in samples:
        g = samples["gc_garbage"].dropna()
        unc = samples[[c for c in samples.columns if c.startswith("gc_uncollectable_")]].sum(axis=1) if any(
            c.startswith("gc_uncollectable_") for c in samples.columns) else pd.Series(dtype=float)
        growth_g = float(g.iloc[-1] - g.iloc[0]) if len(g) >= 2 else 0.0
        growth_u = float(unc.iloc[-1] - unc.iloc[0]) if len(unc) >= 2 else 0.0
        if max(growth_g, growth_u) > 0:
            kinds.append(LeakKind(
                "gc_uncollectable", f"the garbage collector found uncollectable objects: +{int(max(growth_g, growth_u))}",
                {"gc_garbage_growth": growth_g, "uncollectable_growth": growth_u},
                ["Objects with __del__ in reference cycles, or gc.DEBUG_SAVEALL: inspect gc.garbage.",
                 "Break the cycles (weakref) or remove the finalizer."]))
    sampled = traced is not None and traced.metric == "heap_live_bytes"
    seen = "the sampled live heap" if sampled else "traced memory"
    engine = "the heap sampler" if sampled else "tracemalloc"
    if rss.status == "leaking":
        rss_growth = rss.slope_bytes_per_s
        if traced is not None and traced.status != "not enough data":
            ratio = traced.slope_bytes_per_s / rss_growth if rss_growth > 0 else math.nan
            evidence = {"rss_mb_per_hour": rss.mb_per_hour, "traced_mb_per_hour": traced.mb_per_hour,
                        "traced_share_of_rss_growth": ratio}
            if ratio >= 0.5:
                kinds.append(LeakKind(
                    "python_heap", f"Python heap: {seen} grows with RSS ({ratio:.0%} of the RSS growth)",
                    evidence,
                    ["Follow the growing allocation sites below to the object that is kept alive.",
                     "Typical culprits: module-level lists/dicts, caches without a size bound (use functools.lru_cache(maxsize=...)), objects stored on app.state or in closures."]))
            elif ratio < 0.25:
                kinds.append(LeakKind(
                    "native", f"native or allocator memory: RSS grows but traced Python memory does not "
                    f"({ratio:.0%} of the growth is visible to {engine})", evidence,
                    ["A native extension may hold memory (image libraries, numpy/torch buffers, C clients): release or reuse those objects.",
                     "glibc malloc arenas fragment under threads: try MALLOC_ARENA_MAX=2 in the environment.",
                     "Try jemalloc (LD_PRELOAD=libjemalloc.so.2) or call malloc_trim(0) periodically to return freed memory.",
                     "Memory from ctypes/cffi or mmap never passes through the Python allocator."]))
            else:
                kinds.append(LeakKind(
                    "python_heap", f"mixed: traced Python memory explains {ratio:.0%} of the RSS growth; "
                    "the rest is native or allocator overhead", evidence,
                    ["Start with the growing allocation sites; then look at native buffers and MALLOC_ARENA_MAX=2."]))
        else:
            kinds.append(LeakKind(
                "unknown", "RSS grows, but without allocation data (level basic) Python heap and native memory cannot be told apart",
                {"rss_mb_per_hour": rss.mb_per_hour},
                ["Run with level='auto' or level='mid' to see whether traced Python memory grows with RSS."]))
    elif traced is not None and traced.status == "leaking":
        kinds.append(LeakKind(
            "python_heap", f"Python heap grows ({seen}) although RSS has not caught up yet",
            {"traced_mb_per_hour": traced.mb_per_hour},
            ["Follow the growing allocation sites below."]))
    return kinds


# ---------------------------------------------------------------- verdict
def _pick(sessions: Sessions, session_id: str | None) -> str:
    ids = sessions.session_ids
    if session_id is not None:
        if session_id not in ids:
            raise ValueError(f"no session {session_id!r}; sessions here: {', '.join(ids) or 'none'}")
        return session_id
    if len(ids) != 1:
        raise ValueError(f"{len(ids)} sessions loaded; pass session_id, one of: {', '.join(ids)}")
    return ids[0]


def _fmt_bytes(n: float | None, signed: bool = False) -> str:
    return format_bytes(n, signed=signed)


def diagnose(sessions: Sessions, session_id: str | None = None) -> Verdict:
    """The verdict for one session (the only one loaded, or ``session_id``)."""
    sid = _pick(sessions, session_id)
    token = _MEMO.set({})
    try:
        return _diagnose(sessions, sid)
    finally:
        _MEMO.reset(token)


def _diagnose(sessions: Sessions, sid: str) -> Verdict:
    samples = sessions.samples[sessions.samples["session_id"] == sid].sort_values("ts")
    info = sessions.sessions[sessions.sessions["session_id"] == sid].iloc[0]
    t = samples["elapsed_s"].to_numpy(dtype=float, na_value=np.nan)
    duration = float(info["duration_s"]) if pd.notna(info.get("duration_s")) else (float(t[-1]) if len(t) else 0.0)
    warm_elapsed = (t[0] + _WARMUP_FRACTION * (t[-1] - t[0])) if len(t) else 0.0
    start_ts = float(info["start_ts"]) if pd.notna(info.get("start_ts")) else 0.0
    warm_ts = start_ts + warm_elapsed
    counts = [c for c in _call_counts(sessions, sid).values() if len(c[1])]
    n_requests = int(sum(cum[-1] for _, cum in counts))
    req_after = int(sum(cum[-1] - _calls_at((times, cum), warm_ts) for times, cum in counts))
    rss = _trend("rss_bytes", t, samples["rss_bytes"].to_numpy(dtype=float, na_value=np.nan), req_after)
    traced = None
    for heap_metric in ("traced_bytes", "heap_live_bytes"):
        if heap_metric in samples and samples[heap_metric].notna().sum() >= _MIN_SAMPLES:
            tr = samples[["elapsed_s", heap_metric]].dropna()
            traced = _trend(heap_metric, tr["elapsed_s"].to_numpy(dtype=float, na_value=np.nan),
                            tr[heap_metric].to_numpy(dtype=float, na_value=np.nan), req_after)
            break
    # Attribute on traced memory when it carries the growth (far less noisy), else on RSS.
    basis = "rss_bytes"
    if (traced is not None and traced.metric == "traced_bytes" and traced.status == "leaking"
            and samples["traced_bytes"].notna().all()
            and (rss.slope_bytes_per_s <= 0 or traced.slope_bytes_per_s >= 0.5 * rss.slope_bytes_per_s)):
        basis = "traced_bytes"
    notes: list[str] = []
    reasons: list[str] = []
    tagged, background_growth = _tagged_attribution(sessions, sid, warm_ts, start_ts)
    regression = _attribute(sessions, sid, samples, basis, warm_ts) if len(samples) else []
    kinds = _kinds(sessions, sid, samples, rss, traced)
    # RSS growth the Python heap does not explain is native: only per-request RSS deltas see it
    heap_explains = (traced is not None and traced.status != "not enough data" and rss.slope_bytes_per_s > 0
                     and traced.slope_bytes_per_s >= 0.5 * rss.slope_bytes_per_s)
    deltas = (_delta_attribution(sessions, sid, samples, warm_ts, rss)
              if rss.status == "leaking" and not heap_explains else [])
    suspect_regression = next((e for e in regression if e.significant), None)
    if suspect_regression is not None and _collinear(sessions, sid, samples, warm_ts,
                                                     (suspect_regression.method, suspect_regression.route)):
        for e in regression:
            e.significant = False
        notes.append("the traffic mix was too steady for a regression over time to tell endpoints apart "
                     "(their calls rose in proportion)")
    native = rss.status == "leaking" and not heap_explains
    steps = _increment_attribution(sessions, sid, samples, warm_ts, native, kinds, notes) if len(samples) else []
    step_name = steps[0].evidence if steps else "per-interval steps"
    # exact fd counts outrank RSS deltas; the native RSS steps alone come after them
    sources = [("tagged heap samples", tagged), *([(step_name, steps)] if "fds" in step_name else []),
               ("request RSS deltas", deltas), *([(step_name, steps)] if "fds" not in step_name else []),
               ("regression on calls", regression)]
    endpoints: list[EndpointAttribution] = []
    attribution = ""
    for name, rows in sources:
        if any(e.significant for e in rows):
            attribution = name
            endpoints = list(rows)
            break
    if not endpoints:
        endpoints = list(tagged or deltas or regression)
    if deltas and not attribution:
        notes.append("native memory grows, but no endpoint's own requests grow RSS consistently: the allocator "
                     "reuses memory others freed, so the growth shows in whichever request next needs fresh "
                     "pages; RSS alone cannot name the endpoint here")
    if attribution == "tagged heap samples":
        _scale_tagged_to_rss(sessions, sid, samples, warm_ts, endpoints, rss, notes)
    # a second leak of another kind shows beside the first, unless the first explains the growth
    named = {(e.method, e.route) for e in endpoints if e.significant}
    explained = _explained_share(sessions, sid, endpoints, rss, warm_ts, duration)
    for name, rows in sources:
        if name != attribution and explained < 0.6:
            extra = [e for e in rows if e.significant and (e.method, e.route) not in named]
            endpoints += extra
            named |= {(e.method, e.route) for e in extra}
    endpoints.sort(key=lambda e: (e.significant, e.share_of_growth * (e.significant or 0)), reverse=True)

    sites = _tagged_sites(sessions, sid, warm_ts) if tagged else []
    if not sites:
        candidates = [e for e in endpoints if e.significant] or ([endpoints[0]] if endpoints else [])
        sites = _sites(sessions, sid, candidates, warm_ts)
        routes = _routes_of(sessions, sid)
        for g in sites:  # a site inside an endpoint's own function belongs to that endpoint
            owner = _endpoint_of_site(routes, g.file, g.line)
            if owner is not None:
                calls = _call_counts(sessions, sid).get(owner)
                made = float(calls[1][-1] - _calls_at(calls, warm_ts)) if calls is not None else 0.0
                g.per_call_route = f"{owner[0]} {owner[1]}".strip()
                g.bytes_per_call = g.growth_bytes / made if made > 0 else None
        if not attribution and sites and sites[0].per_call_route and routes is not None and len(routes):
            owner = _endpoint_of_site(routes, sites[0].file, sites[0].line)
            if owner is not None:
                for e in endpoints:
                    if (e.method, e.route) == owner:
                        e.significant, e.evidence = True, "site in endpoint code"
                        if sites[0].bytes_per_call:
                            e.retained_bytes_per_call = float(sites[0].bytes_per_call)
                        attribution = "site in endpoint code"
                endpoints.sort(key=lambda e: e.significant, reverse=True)

    resource_leak = any(k.kind in ("asyncio_tasks", "file_descriptors", "threads", "gc_uncollectable") for k in kinds)
    tagged_leak = attribution == "tagged heap samples"
    memory_leak = rss.status == "leaking" or (traced is not None and traced.status == "leaking") or tagged_leak
    leaking = memory_leak or resource_leak
    if tagged_leak and not any(k.kind == "python_heap" for k in kinds):
        kinds.insert(0, LeakKind(
            "python_heap", "Python heap: an endpoint's own sampled allocations keep growing with its calls",
            {"endpoint": f"{endpoints[0].method} {endpoints[0].route}"},
            ["Follow the growing allocation sites below to the object that is kept alive.",
             "Typical culprits: module-level lists/dicts, caches without a size bound (use functools.lru_cache(maxsize=...)), objects stored on app.state or in closures."]))
    growing_lines = [g for g in sites if g.growth_bytes > 0]
    status: VerdictStatus
    if leaking:
        status = "leaking"
    elif growing_lines and rss.status != "plateau":
        status = "possible leak"
    elif rss.status in ("plateau", "sawtooth", "not enough data"):
        status = rss.status
    else:
        status = "no leak"
    if not leaking:  # endpoints stay in the table; none is called a leaker
        for e in endpoints:
            e.significant = False
        attribution = ""
    suspect = next((e for e in endpoints if e.significant), None)
    if background_growth > 0:
        notes.append(f"memory allocated outside any request grows {background_growth * 3600 / _MB:.1f} MB/hour")
    if attribution:
        notes.append(f"the suspect was named by {attribution}")
    notes.append(f"attribution basis: {basis}")
    dropped = info.get("requests_dropped")
    if pd.notna(dropped) and float(dropped) > 0:
        notes.append(f"{int(info['requests_dropped'])} request records were dropped (buffer full)")
    confidence = _confidence(rss, traced, attribution, suspect, len(samples), duration, reasons)
    headline = _headline(status, rss, traced, suspect, sites, kinds)
    return Verdict(session_id=sid, status=status, leaking=leaking, headline=headline, rss=rss, traced=traced,
                   endpoints=endpoints, sites=sites, kinds=kinds, requests=n_requests,
                   duration_s=duration, notes=notes, attribution=attribution, confidence=confidence,
                   confidence_reasons=reasons)


def _confidence(rss: Trend, traced: Trend | None, attribution: str, suspect: EndpointAttribution | None,
                n_samples: int, duration_s: float, reasons: list[str]) -> str:
    """How far the evidence goes, with the reasons a reader can act on."""
    if n_samples < 20:
        reasons.append(f"only {n_samples} samples: run longer for a firmer verdict")
    if duration_s < 60:
        reasons.append(f"a short session ({duration_s:.0f} s)")
    if attribution == "regression on calls":
        reasons.append("the endpoint was named by a regression over time, which needs traffic that varies")
    if suspect is None and rss.status == "leaking":
        reasons.append("memory grows but no endpoint could be named")
    if traced is None:
        reasons.append("no allocation data (level basic): the kind and the line cannot be told")
    if attribution == "tagged heap samples" and n_samples >= 20:
        return "high" if duration_s >= 60 or suspect is not None else "medium"
    if attribution in ("request RSS deltas", "tagged heap samples", "site in endpoint code"):
        return "medium"
    return "low" if reasons else "medium"


def _headline(status: str, rss: Trend, traced: Trend | None, suspect: EndpointAttribution | None,
              sites: Sequence[GrowingSite], kinds: Sequence[LeakKind]) -> str:
    if status == "not enough data":
        return "Not enough data yet: let the session run for more sampling intervals."
    if status == "possible leak":
        top = sites[0]
        where = f" ({top.per_call_route})" if top.per_call_route else ""
        return (f"Possible leak: {short_site(top.site)}{where} grew {_fmt_bytes(top.growth_bytes, True)} across the session, "
                "but process memory does not show lasting growth yet: run longer to confirm.")
    if status == "plateau":
        return ("No leak: memory rose during warm-up and then levelled off "
                f"({_fmt_bytes(rss.end_bytes)} RSS at the end), as bounded caches and pools do.")
    if status == "sawtooth":
        return "No leak: memory rises and falls back again (sawtooth), with no lasting growth."
    if status == "no leak":
        return f"No leak: RSS is flat after warm-up ({rss.mb_per_hour:+.1f} MB/hour)."
    parts = []
    if rss.status == "leaking":
        per = f" ({_fmt_bytes(rss.bytes_per_1k_requests)} per 1k requests)" if rss.bytes_per_1k_requests else ""
        parts.append(f"Leaking: RSS grows {rss.mb_per_hour:.1f} MB/hour{per} after warm-up")
    elif traced is not None and traced.status == "leaking":
        parts.append(f"Leaking: traced Python memory grows {traced.mb_per_hour:.1f} MB/hour after warm-up")
    elif suspect is not None and suspect.evidence == "tagged heap samples":
        parts.append("Leaking: the Python heap grows with each call of one endpoint")
    else:
        parts.append("Leaking resources")
    if suspect is not None:
        heap = (f"{_fmt_bytes(suspect.heap_bytes_per_call)} of live Python objects; "
                if suspect.heap_bytes_per_call is not None else "")
        parts.append(f"{suspect.method} {suspect.route} retains ≈{_fmt_bytes(suspect.retained_bytes_per_call)} per call"
                     f" ({heap}{suspect.evidence})")
    if sites:
        caused = (f", caused by {short_site(sites[0].app_site)}"
                  if sites[0].app_site and sites[0].app_site != sites[0].site else "")
        parts.append(f"top growing site {short_site(sites[0].site)} ({_fmt_bytes(sites[0].growth_bytes, True)}{caused})")
    if kinds:
        parts.append(f"kind: {kinds[0].kind.replace('_', ' ')}")
    return "; ".join(parts) + "."


def diagnose_all(sessions: Sessions) -> list[Verdict]:
    """One verdict per loaded session, in session order."""
    return [diagnose(sessions, sid) for sid in sessions.session_ids]


# ---------------------------------------------------------------- fix check
def compare(before: Sessions, after: Sessions | None = None, *, before_id: str | None = None,
            after_id: str | None = None) -> FixCheck:
    """Did the growth go away? Two loaded sets, or two session ids of one set."""
    if after is None:
        ids = before.session_ids
        if before_id is None or after_id is None:
            if len(ids) != 2:
                raise ValueError(f"compare needs two sessions; got {len(ids)}: pass before_id and after_id")
            before_id, after_id = ids
        after = before
    vb = diagnose(before, before_id)
    va = diagnose(after, after_id)
    b_rate = vb.rss.mb_per_hour if vb.rss.mb_per_hour == vb.rss.mb_per_hour else 0.0
    a_rate = va.rss.mb_per_hour if va.rss.mb_per_hour == va.rss.mb_per_hour else 0.0
    fixed = vb.leaking and not va.leaking
    if fixed:
        change = f" ({(a_rate - b_rate) / b_rate:+.0%})" if b_rate > 0 else ""
        headline = f"Fixed: RSS growth went from {b_rate:.1f} MB/hour to {a_rate:.1f} MB/hour{change}; after is '{va.status}'."
    elif vb.leaking and va.leaking:
        headline = (f"Not fixed: still leaking after ({a_rate:.1f} MB/hour, before {b_rate:.1f} MB/hour). "
                    + va.headline)
    elif not vb.leaking and va.leaking:
        headline = f"Regression: before was '{vb.status}', after is leaking ({a_rate:.1f} MB/hour)."
    else:
        headline = f"Neither session leaks (before '{vb.status}', after '{va.status}')."
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for label, verdict in (("before", vb), ("after", va)):
        for e in verdict.endpoints:
            row = rows.setdefault((e.method, e.route), {"method": e.method, "route": e.route})
            row[f"{label}_retained_bytes_per_call"] = e.retained_bytes_per_call
            row[f"{label}_calls"] = e.calls
            row[f"{label}_significant"] = e.significant
    outcome = ("FIXED" if fixed else "NOT FIXED" if vb.leaking else "REGRESSION" if va.leaking else "NO CHANGE")
    return FixCheck(before=vb.session_id, after=va.session_id, fixed=fixed, headline=headline,
                    before_mb_per_hour=b_rate, after_mb_per_hour=a_rate, before_status=vb.status,
                    after_status=va.status, endpoints=list(rows.values()), outcome=outcome)


# ---------------------------------------------------------------- text
def format_verdict(v: Verdict) -> str:
    """The verdict in plain words with its evidence, for a terminal."""
    lines = [f"session {v.session_id}: {v.status.upper()} (confidence {v.confidence})", "", v.headline, ""]
    if v.confidence_reasons:
        lines += ["Why not more certain: " + "; ".join(v.confidence_reasons) + ".", ""]
    r = v.rss
    lines.append("Memory trend after warm-up (Theil-Sen, 90% band):")
    for trend in (r, v.traced):
        if trend is None:
            continue
        if trend.status == "not enough data":
            lines.append(f"  {trend.metric:<15} not enough data ({trend.samples} samples)")
            continue
        per = f", {_fmt_bytes(trend.bytes_per_1k_requests)} per 1k requests" if trend.bytes_per_1k_requests is not None else ""
        lines.append(
            f"  {trend.metric:<15} {trend.status:<8} {trend.mb_per_hour:+8.1f} MB/hour "
            f"[{trend.slope_low_bytes_per_s * 3600 / _MB:+.1f} .. {trend.slope_high_bytes_per_s * 3600 / _MB:+.1f}]"
            f"{per}; {_fmt_bytes(trend.start_bytes)} -> {_fmt_bytes(trend.end_bytes)}; confidence {trend.confidence:.2f}")
    if v.endpoints:
        evidence = v.attribution or v.endpoints[0].evidence
        lines += ["", f"Retained bytes per call (from {evidence}; naive = mean request delta):",
                  f"  {'endpoint':<40} {'calls':>7} {'retained/call':>14} {'90% band':>22} {'naive avg':>11}"]
        for e in v.endpoints[:10]:
            mark = " <- leaks" if e.significant else ""
            band = f"{_fmt_bytes(e.low_bytes_per_call)}..{_fmt_bytes(e.high_bytes_per_call)}"
            name = f"{e.method} {e.route}"
            lines.append(f"  {name[:40]:<40} {e.calls:>7} {_fmt_bytes(e.retained_bytes_per_call):>14} "
                         f"{band:>22} {_fmt_bytes(e.naive_avg_delta_bytes, True):>11}{mark}")
    if v.sites:
        lines += ["", f"Growing allocation sites ({v.sites[0].evidence}, size keeps rising across snapshots):"]
        for g in v.sites[:8]:
            per = f", {_fmt_bytes(g.bytes_per_call)} per call of {g.per_call_route}" if g.bytes_per_call else ""
            blocks = f"+{g.count_growth} blocks, " if g.count_growth else ""
            lines.append(f"  {_fmt_bytes(g.growth_bytes, True):>10}  {short_site(g.site)}  ({blocks}"
                         f"rising in {g.rising_fraction:.0%} of snapshots{per})")
            if g.app_site and g.app_site != g.site:
                lines.append(f"{'':14}caused by {short_site(g.app_site)}")
    if v.kinds:
        lines += ["", "Kind of leak:"]
        for k in v.kinds:
            lines.append(f"  [{k.kind}] {k.summary}")
            for remedy in k.remedies:
                lines.append(f"      - {remedy}")
    if v.notes:
        lines += ["", "Notes: " + "; ".join(v.notes)]
    return "\n".join(lines)


def format_fix_check(c: FixCheck) -> str:
    """Before/after in plain words."""
    lines = [f"{c.outcome}: {c.headline}",
             f"  before {c.before}: {c.before_status}, {c.before_mb_per_hour:+.1f} MB/hour",
             f"  after  {c.after}: {c.after_status}, {c.after_mb_per_hour:+.1f} MB/hour"]
    shown = [r for r in c.endpoints if r.get("before_significant") or r.get("after_significant")]
    for r in shown:
        lines.append(f"  {r['method']} {r['route']}: {_fmt_bytes(r.get('before_retained_bytes_per_call'))}/call -> "
                     f"{_fmt_bytes(r.get('after_retained_bytes_per_call'))}/call")
    return "\n".join(lines)
