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
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .load import Sessions
from .verdict import EndpointAttribution, FixCheck, GrowingSite, LeakKind, Trend, Verdict

__all__ = ["compare", "diagnose", "diagnose_all", "format_fix_check", "format_verdict", "nnls"]

_MB = 1024 * 1024
_WARMUP_FRACTION = 0.2
_MIN_SAMPLES = 6
_MAX_TREND_POINTS = 400
_Z90 = 1.645
_BOOTSTRAP = 120
_MAX_LEVEL_POINTS = 600


# ---------------------------------------------------------------- statistics
def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Lawson-Hanson non-negative least squares: argmin ||a x - b|| subject to x >= 0."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    tol = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(m, n)
    for _ in range(max_iter or 3 * n + 10):
        if passive.all() or (w[~passive] <= tol).all():
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (s[passive] > tol).all():
                x = s
                break
            mask = passive & (s <= tol)
            denom = x[mask] - s[mask]
            alpha = np.min(np.where(denom > 0, x[mask] / np.where(denom > 0, denom, 1), np.inf))
            alpha = 0.0 if not np.isfinite(alpha) else alpha
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                break
        w = a.T @ (b - a @ x)
    return x


def _bucket(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Median per bucket so long series stay cheap and spikes do not dominate."""
    if len(x) <= max_points:
        return x, y
    edges = np.linspace(0, len(x), max_points + 1).astype(int)
    xs = np.array([np.median(x[a:b]) for a, b in zip(edges[:-1], edges[1:]) if b > a])
    ys = np.array([np.median(y[a:b]) for a, b in zip(edges[:-1], edges[1:]) if b > a])
    return xs, ys


def _theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Slope, 90% Sen confidence band and Mann-Kendall confidence that it is rising."""
    n = len(x)
    if n < 3:
        return math.nan, math.nan, math.nan, 0.0
    i, j = np.triu_indices(n, k=1)
    dx = x[j] - x[i]
    ok = dx > 0
    slopes = np.sort((y[j] - y[i])[ok] / dx[ok])
    if len(slopes) == 0:
        return math.nan, math.nan, math.nan, 0.0
    var_s = n * (n - 1) * (2 * n + 5) / 18.0
    c = _Z90 * math.sqrt(var_s)
    total = len(slopes)
    lo = slopes[max(0, int((total - c) / 2))]
    hi = slopes[min(total - 1, int((total + c) / 2))]
    s = float(np.sign(y[j] - y[i]).sum())
    z = (s - 1) / math.sqrt(var_s) if s > 0 else (s + 1) / math.sqrt(var_s) if s < 0 else 0.0
    confidence = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    return float(np.median(slopes)), float(lo), float(hi), confidence


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
    warm_until = t[0] + _WARMUP_FRACTION * (t[-1] - t[0])
    start = max(2, int(np.searchsorted(t, warm_until)))
    tw, yw = t[start:], y[start:]
    if len(tw) < 4:
        return empty
    bx, by = _bucket(tw, yw, _MAX_TREND_POINTS)
    slope, lo, hi, confidence = _theil_sen(bx, by)
    span = float(tw[-1] - tw[0])
    level = float(np.median(yw))
    growth = slope * span
    material = _material(metric, level)
    half = len(bx) // 2
    late_slope = _theil_sen(bx[half:], by[half:])[0] if len(bx) - half >= 3 else slope
    value_range = float(yw.max() - yw.min())
    drops = int((np.diff(yw) < -0.25 * value_range).sum()) if value_range > material else 0
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
def _interval_matrix(s: Sessions, sid: str, samples: pd.DataFrame
                     ) -> tuple[np.ndarray, list[tuple[str, str]], np.ndarray]:
    """Calls per endpoint per sampling interval, and the interval end times."""
    ts = samples["ts"].to_numpy(dtype=float, na_value=np.nan)
    intervals = s.intervals[s.intervals["session_id"] == sid] if len(s.intervals) else s.intervals
    if len(intervals):
        frame = pd.DataFrame({"seq": intervals["seq"].astype("int64"),
                              "key": list(zip(intervals["method"].astype(str), intervals["route"].astype(str))),
                              "calls": intervals["calls"].astype("float64")})
        table = frame.pivot_table(index="seq", columns="key", values="calls", aggfunc="sum", fill_value=0.0)
        seqs = samples["seq"].to_numpy()
        table = table.reindex(seqs, fill_value=0.0)
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
    floors = values.copy()
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
    coef = nnls(design, y)
    for _ in range(iterations):
        resid = y - design @ coef
        scale = 1.4826 * np.median(np.abs(resid - np.median(resid))) or 1.0
        weights = np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(resid), 1e-12))
        root = np.sqrt(weights)
        coef = nnls(design * root[:, None], y * root)
    return coef


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


# ---------------------------------------------------------------- sites
def _sites(s: Sessions, sid: str, candidates: Sequence[EndpointAttribution], warm_ts: float) -> list[GrowingSite]:
    sites = s.sites[s.sites["session_id"] == sid] if len(s.sites) else s.sites
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
    bx, by = _bucket(t, y, _MAX_TREND_POINTS)
    _, lo, _, _ = _theil_sen(bx, by)
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
    if rss.status == "leaking":
        rss_growth = rss.slope_bytes_per_s
        if traced is not None and traced.status != "not enough data":
            ratio = traced.slope_bytes_per_s / rss_growth if rss_growth > 0 else math.nan
            evidence = {"rss_mb_per_hour": rss.mb_per_hour, "traced_mb_per_hour": traced.mb_per_hour,
                        "traced_share_of_rss_growth": ratio}
            if ratio >= 0.5:
                kinds.append(LeakKind(
                    "python_heap", f"Python heap: traced memory grows with RSS ({ratio:.0%} of the RSS growth)",
                    evidence,
                    ["Follow the growing allocation sites below to the object that is kept alive.",
                     "Typical culprits: module-level lists/dicts, caches without a size bound (use functools.lru_cache(maxsize=...)), objects stored on app.state or in closures."]))
            elif ratio < 0.25:
                kinds.append(LeakKind(
                    "native", f"native or allocator memory: RSS grows but traced Python memory does not "
                    f"({ratio:.0%} of the growth is visible to tracemalloc)", evidence,
                    ["A native extension may hold memory (image libraries, numpy/torch buffers, C clients): release or reuse those objects.",
                     "glibc malloc arenas fragment under threads: try MALLOC_ARENA_MAX=2 in the environment.",
                     "Try jemalloc (LD_PRELOAD=libjemalloc.so.2) or call malloc_trim(0) periodically to return freed memory.",
                     "Memory from ctypes/cffi or mmap is invisible to tracemalloc."]))
            else:
                kinds.append(LeakKind(
                    "python_heap", f"mixed: traced Python memory explains {ratio:.0%} of the RSS growth; "
                    "the rest is native or allocator overhead", evidence,
                    ["Start with the growing allocation sites; then look at native buffers and MALLOC_ARENA_MAX=2."]))
        else:
            kinds.append(LeakKind(
                "unknown", "RSS grows, but without tracemalloc data Python heap and native memory cannot be told apart",
                {"rss_mb_per_hour": rss.mb_per_hour},
                ["Run with level='auto' or level='mid' to see whether traced Python memory grows with RSS."]))
    elif traced is not None and traced.status == "leaking":
        kinds.append(LeakKind(
            "python_heap", "Python heap grows (traced memory) although RSS has not caught up yet",
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
    if n is None or n != n:
        return "n/a"
    sign = "+" if signed and n > 0 else ""
    a = abs(n)
    if a >= _MB:
        return f"{sign}{n / _MB:.1f} MB"
    if a >= 1024:
        return f"{sign}{n / 1024:.1f} KB"
    return f"{sign}{n:.0f} B"


def diagnose(sessions: Sessions, session_id: str | None = None) -> Verdict:
    """The verdict for one session (the only one loaded, or ``session_id``)."""
    sid = _pick(sessions, session_id)
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
    if "traced_bytes" in samples and samples["traced_bytes"].notna().sum() >= _MIN_SAMPLES:
        tr = samples[["elapsed_s", "traced_bytes"]].dropna()
        traced = _trend("traced_bytes", tr["elapsed_s"].to_numpy(dtype=float, na_value=np.nan),
                        tr["traced_bytes"].to_numpy(dtype=float, na_value=np.nan), req_after)
    # Attribute on traced memory when it carries the growth (far less noisy), else on RSS.
    basis = "rss_bytes"
    if (traced is not None and traced.status == "leaking" and samples["traced_bytes"].notna().all()
            and (rss.slope_bytes_per_s <= 0 or traced.slope_bytes_per_s >= 0.5 * rss.slope_bytes_per_s)):
        basis = "traced_bytes"
    endpoints = _attribute(sessions, sid, samples, basis, warm_ts) if len(samples) else []
    kinds = _kinds(sessions, sid, samples, rss, traced)
    resource_leak = any(k.kind in ("asyncio_tasks", "file_descriptors", "threads", "gc_uncollectable") for k in kinds)
    memory_leak = rss.status == "leaking" or (traced is not None and traced.status == "leaking")
    leaking = memory_leak or resource_leak
    if leaking:
        status = "leaking"
    elif rss.status in ("plateau", "sawtooth", "not enough data"):
        status = rss.status
    else:
        status = "no leak"
    if not leaking:  # endpoints stay in the table; none is called a leaker
        for e in endpoints:
            e.significant = False
    suspect = next((e for e in endpoints if e.significant), None)
    candidates = [e for e in endpoints if e.significant] or ([endpoints[0]] if endpoints else [])
    sites = _sites(sessions, sid, candidates, warm_ts) if leaking else []
    notes = [f"attribution basis: {basis}"]
    dropped = info.get("requests_dropped")
    if pd.notna(dropped) and float(dropped) > 0:
        notes.append(f"{int(info['requests_dropped'])} request records were dropped (buffer full)")
    headline = _headline(status, rss, traced, suspect, sites, kinds)
    return Verdict(session_id=sid, status=status, leaking=leaking, headline=headline, rss=rss, traced=traced,
                   endpoints=endpoints, sites=sites, kinds=kinds, requests=n_requests,
                   duration_s=duration, notes=notes)


def _headline(status: str, rss: Trend, traced: Trend | None, suspect: EndpointAttribution | None,
              sites: Sequence[GrowingSite], kinds: Sequence[LeakKind]) -> str:
    if status == "not enough data":
        return "Not enough data yet: let the session run for more sampling intervals."
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
    else:
        parts.append("Leaking resources")
    if suspect is not None:
        parts.append(f"{suspect.method} {suspect.route} retains ≈{_fmt_bytes(suspect.retained_bytes_per_call)} per call")
    if sites:
        parts.append(f"top growing site {sites[0].site} ({_fmt_bytes(sites[0].growth_bytes, True)})")
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
    return FixCheck(before=vb.session_id, after=va.session_id, fixed=fixed, headline=headline,
                    before_mb_per_hour=b_rate, after_mb_per_hour=a_rate, before_status=vb.status,
                    after_status=va.status, endpoints=list(rows.values()))


# ---------------------------------------------------------------- text
def format_verdict(v: Verdict) -> str:
    """The verdict in plain words with its evidence, for a terminal."""
    lines = [f"session {v.session_id}: {v.status.upper()}", "", v.headline, ""]
    r = v.rss
    lines.append("Memory trend after warm-up (Theil-Sen, 90% band):")
    for trend in (r, v.traced):
        if trend is None:
            continue
        if trend.status == "not enough data":
            lines.append(f"  {trend.metric:<12} not enough data ({trend.samples} samples)")
            continue
        per = f", {_fmt_bytes(trend.bytes_per_1k_requests)} per 1k requests" if trend.bytes_per_1k_requests is not None else ""
        lines.append(
            f"  {trend.metric:<12} {trend.status:<8} {trend.mb_per_hour:+8.1f} MB/hour "
            f"[{trend.slope_low_bytes_per_s * 3600 / _MB:+.1f} .. {trend.slope_high_bytes_per_s * 3600 / _MB:+.1f}]"
            f"{per}; {_fmt_bytes(trend.start_bytes)} -> {_fmt_bytes(trend.end_bytes)}; confidence {trend.confidence:.2f}")
    if v.endpoints:
        lines += ["", "Retained bytes per call (regression of growth per interval on calls; naive = mean request delta):",
                  f"  {'endpoint':<40} {'calls':>7} {'retained/call':>14} {'90% band':>22} {'naive avg':>11}"]
        for e in v.endpoints[:10]:
            mark = " <- leaks" if e.significant else ""
            band = f"{_fmt_bytes(e.low_bytes_per_call)}..{_fmt_bytes(e.high_bytes_per_call)}"
            name = f"{e.method} {e.route}"
            lines.append(f"  {name[:40]:<40} {e.calls:>7} {_fmt_bytes(e.retained_bytes_per_call):>14} "
                         f"{band:>22} {_fmt_bytes(e.naive_avg_delta_bytes, True):>11}{mark}")
    if v.sites:
        lines += ["", "Growing allocation sites (tracemalloc, size keeps rising across snapshots):"]
        for g in v.sites[:8]:
            per = f", {_fmt_bytes(g.bytes_per_call)} per call of {g.per_call_route}" if g.bytes_per_call else ""
            lines.append(f"  {_fmt_bytes(g.growth_bytes, True):>10}  {g.site}  (+{g.count_growth} blocks, "
                         f"rising in {g.rising_fraction:.0%} of snapshots{per})")
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
    lines = [f"{'FIXED' if c.fixed else 'NOT FIXED' if c.before_status == 'leaking' else 'NO CHANGE'}: {c.headline}",
             f"  before {c.before}: {c.before_status}, {c.before_mb_per_hour:+.1f} MB/hour",
             f"  after  {c.after}: {c.after_status}, {c.after_mb_per_hour:+.1f} MB/hour"]
    shown = [r for r in c.endpoints if r.get("before_significant") or r.get("after_significant")]
    for r in shown:
        lines.append(f"  {r['method']} {r['route']}: {_fmt_bytes(r.get('before_retained_bytes_per_call'))}/call -> "
                     f"{_fmt_bytes(r.get('after_retained_bytes_per_call'))}/call")
    return "\n".join(lines)
