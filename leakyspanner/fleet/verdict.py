"""The fleet verdict: which routes leak on most hosts, which hosts or releases stand out.

Per session, three small aggregates answer it: RSS growth (least-squares
slope of the samples after a warm-up), per route the RSS retained over its
measured requests, and per route the slope of the sampled heap engine's live
bytes. On a dataset DuckDB computes them from the Parquet files, reading only
the columns they need, so 50M request rows become a few thousand rows before
pandas sees them; on loaded :class:`~leakyspanner.analysis.load.Sessions`
pandas computes the same three. The decision is the same code either way.

A session leaks when its RSS grows faster than ``growth_threshold_bytes_per_h``.
A route leaks in a leaking session when it holds at least ``share`` of the
session's retained RSS or of its heap growth. Hosts and releases are outliers
when their median growth is more than 3.5 robust z-scores (median absolute
deviation) above the fleet's and above the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import errors
from ._deps import require_fleet

require_fleet()

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..analysis.load import Sessions  # noqa: E402
from .parquet import dataset_files, open_dataset  # noqa: E402

__all__ = ["BY", "FleetVerdict", "fleet_verdict"]

#: What the groups of a verdict can be.
BY = ("host", "release")
_MB = 1024 * 1024
_OUTLIER_Z = 3.5


@dataclass(frozen=True, eq=False)
class FleetVerdict:
    """The fleet's answer. Frames, small: one row per session, per route, per group."""

    by: str
    growth_threshold_bytes_per_h: float
    sessions: pd.DataFrame  # session_id, host, release, start_ts, growth_bytes_per_h, samples, leaking
    routes: pd.DataFrame  # method, route, hosts_serving, hosts_leaking, sessions_leaking, bytes_per_call
    groups: pd.DataFrame  # <by>, sessions, sessions_leaking, median_growth_bytes_per_h, robust_z, outlier

    @property
    def leaking_routes(self) -> pd.DataFrame:
        return self.routes[self.routes["hosts_leaking"] > 0].reset_index(drop=True)

    @property
    def outliers(self) -> pd.DataFrame:
        return self.groups[self.groups["outlier"]].reset_index(drop=True)

    def lines(self, top: int = 10) -> list[str]:
        """The verdict in plain words (callers escape them before a terminal sees them)."""
        hosts = int(self.sessions["host"].nunique())
        leaking = int(self.sessions["leaking"].sum())
        out = [f"{len(self.sessions)} sessions on {hosts} hosts; {leaking} grow faster than "
               f"{_size(self.growth_threshold_bytes_per_h)}/h after warm-up."]
        routes = self.leaking_routes.head(top)
        if routes.empty:
            out.append("No route leaks on any host.")
        for r in routes.itertuples(index=False):
            per_call = f", about {_size(r.bytes_per_call)} retained per call" if _finite(r.bytes_per_call) else ""
            out.append(f"{r.method} {r.route} leaks on {r.hosts_leaking} of {r.hosts_serving} hosts serving it "
                       f"({r.sessions_leaking} sessions){per_call}.")
        median = float(self.sessions["growth_bytes_per_h"].median()) if len(self.sessions) else float("nan")
        for g in self.outliers.itertuples(index=False):
            out.append(f"{self.by} {getattr(g, self.by)} stands out: median growth "
                       f"{_size(g.median_growth_bytes_per_h)}/h against the fleet's {_size(median)}/h "
                       f"({g.sessions_leaking} of {g.sessions} sessions leaking).")
        if self.by == "release":
            out.append("Growth per release (median, sessions leaking):")
            for g in self.groups.sort_values("release").itertuples(index=False):
                out.append(f"  {g.release}: {_size(g.median_growth_bytes_per_h)}/h, "
                           f"{g.sessions_leaking} of {g.sessions}")
        return out

    def to_dict(self) -> dict[str, Any]:
        def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return [{k: (None if isinstance(v, float) and not math.isfinite(v) else
                         v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
                    for row in frame.astype(object).where(frame.notna(), None).to_dict("records")]
        return {"by": self.by, "growth_threshold_bytes_per_h": self.growth_threshold_bytes_per_h,
                "routes": rows(self.routes), "groups": rows(self.groups), "sessions": len(self.sessions),
                "sessions_leaking": int(self.sessions["leaking"].sum())}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and math.isfinite(float(x))


def _size(n: float) -> str:
    if not _finite(n):
        return "?"
    a = abs(float(n))
    for unit, scale in (("GB", 1024 ** 3), ("MB", _MB), ("KB", 1024)):
        if a >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


# ---------------------------------------------------------------- aggregates

_SESSIONS, _GROWTH, _ROUTES, _HEAP = "sessions", "growth", "routes", "heap"


def _duckdb_aggregates(url: str, hosts: Any, storage_options: Any, warmup: float) -> dict[str, pd.DataFrame]:
    fs, root, _ = open_dataset(url, storage_options)
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 2")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        local = protocol in ("file", "local")
        if not local:
            con.register_filesystem(fs)

        def source(table: str) -> str | None:
            files = dataset_files(fs, root, table, hosts)
            if not files:
                return None
            paths = [p if local else f"{protocol}://{p}" for p in files]
            listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            return f"read_parquet([{listed}], union_by_name = true)"

        sessions = source("sessions")
        if sessions is None:
            raise errors.NotALogError(f"no session in {url}" + (f" on hosts {', '.join(hosts)}" if hosts else ""))
        out = {_SESSIONS: con.sql(
            f"SELECT session_id, host, release, start_ts FROM {sessions}").df()}
        samples = source("samples")
        out[_GROWTH] = con.sql(f"""
            SELECT session_id, regr_slope(rss_bytes, ts) * 3600 AS growth_bytes_per_h, count(*) AS samples
            FROM (SELECT session_id, ts, rss_bytes, elapsed_s,
                         max(elapsed_s) OVER (PARTITION BY session_id) AS span
                  FROM {samples} WHERE rss_bytes IS NOT NULL AND ts IS NOT NULL)
            WHERE elapsed_s >= {float(warmup)} * span GROUP BY session_id""").df() if samples else None
        requests = source("requests")
        out[_ROUTES] = con.sql(f"""
            SELECT session_id, CAST(method AS VARCHAR) AS method, CAST(route AS VARCHAR) AS route,
                   count(*) AS calls, count(rss_delta_bytes) AS measured,
                   sum(rss_delta_bytes)::DOUBLE AS retained_bytes
            FROM {requests} GROUP BY ALL""").df() if requests else None
        heap = source("heap_endpoints")
        out[_HEAP] = con.sql(f"""
            SELECT session_id, CAST(method AS VARCHAR) AS method, CAST(route AS VARCHAR) AS route,
                   regr_slope(size_bytes, ts) * 3600 AS heap_growth_bytes_per_h
            FROM {heap} GROUP BY ALL""").df() if heap else None
        return out
    finally:
        con.close()


def _slope(frame: pd.DataFrame, keys: list[str], y: str) -> pd.Series:
    """Least-squares slope of ``y`` against ``ts`` per group, vectorised."""
    ts = frame["ts"].astype(float)
    t = ts - ts.groupby([frame[k] for k in keys], observed=True, sort=False).transform("min")  # ts**2 would cancel
    v = frame[y].astype(float)
    g = frame.assign(_t=t, _v=v, _tt=t * t, _tv=t * v).groupby(keys, observed=True, sort=False)
    n, st, sv, stt, stv = g.size(), g["_t"].sum(), g["_v"].sum(), g["_tt"].sum(), g["_tv"].sum()
    var = stt - st * st / n
    return ((stv - st * sv / n) / var.where(var > 0)).astype(float)


def _pandas_aggregates(sessions: Sessions, warmup: float) -> dict[str, pd.DataFrame]:
    frame = sessions.sessions
    out = {_SESSIONS: pd.DataFrame({
        "session_id": frame["session_id"].astype(str), "host": frame["host"],
        "release": frame["release"] if "release" in frame.columns else None, "start_ts": frame["start_ts"]})}
    samples = sessions.samples.dropna(subset=["rss_bytes", "ts"])
    span = samples.groupby("session_id")["elapsed_s"].transform("max")
    kept = samples[(samples["elapsed_s"] >= warmup * span).to_numpy()]
    slope = _slope(kept, ["session_id"], "rss_bytes") * 3600
    out[_GROWTH] = pd.DataFrame({"session_id": slope.index.astype(str), "growth_bytes_per_h": slope.to_numpy(),
                                 "samples": kept.groupby("session_id").size().reindex(slope.index).to_numpy()})
    requests = sessions.requests
    g = requests.groupby(["session_id", "method", "route"], observed=True, sort=False)["rss_delta_bytes"]
    routes = pd.DataFrame({"calls": g.size(), "measured": g.count(), "retained_bytes": g.sum().astype(float)})
    out[_ROUTES] = routes.reset_index().astype({"method": str, "route": str})
    heap = sessions.heap_endpoints.dropna(subset=["size_bytes", "ts"])
    if len(heap):
        hs = (_slope(heap, ["session_id", "method", "route"], "size_bytes") * 3600).rename("heap_growth_bytes_per_h")
        out[_HEAP] = hs.reset_index().astype({"method": str, "route": str})
    else:
        out[_HEAP] = None
    return out


# ------------------------------------------------------------------ decision

def _robust_z(values: pd.Series) -> pd.Series:
    median = values.median()
    mad = (values - median).abs().median() * 1.4826
    if not mad > 0:
        mad = max(abs(median), 1.0) * 0.1  # identical groups: only a clear departure counts
    return (values - median) / mad


def _decide(agg: dict[str, pd.DataFrame | None], by: str, threshold: float, share: float) -> FleetVerdict:
    sessions = agg[_SESSIONS]
    assert sessions is not None
    sessions = sessions.assign(session_id=sessions["session_id"].astype(str),
                               host=sessions["host"].astype(object).where(sessions["host"].notna(), "unknown"),
                               release=sessions["release"].astype(object).where(sessions["release"].notna(),
                                                                                "unknown"))
    growth = agg[_GROWTH]
    if growth is not None and len(growth):
        sessions = sessions.merge(growth.astype({"session_id": str}), on="session_id", how="left")
    else:
        sessions = sessions.assign(growth_bytes_per_h=np.nan, samples=0)
    sessions["leaking"] = (sessions["growth_bytes_per_h"] > threshold).fillna(False).astype(bool)
    routes = agg[_ROUTES]
    if routes is None or routes.empty:
        routes = pd.DataFrame(columns=["session_id", "method", "route", "calls", "measured", "retained_bytes"])
    routes = routes.astype({"session_id": str})
    heap = agg[_HEAP]
    if heap is not None and len(heap):
        routes = routes.merge(heap.astype({"session_id": str}), on=["session_id", "method", "route"], how="outer")
    else:
        routes = routes.assign(heap_growth_bytes_per_h=np.nan)
    retained = routes["retained_bytes"].astype(float)
    heap_growth = routes["heap_growth_bytes_per_h"].astype(float)
    pos = retained.clip(lower=0).fillna(0)
    hpos = heap_growth.clip(lower=0).fillna(0)
    total = pos.groupby(routes["session_id"]).transform("sum")
    htotal = hpos.groupby(routes["session_id"]).transform("sum")
    routes = routes.merge(sessions[["session_id", "host", "release", "leaking"]], on="session_id", how="inner")
    by_rss = (pos / total.where(total > 0)).reindex(routes.index).fillna(0) >= share
    by_heap = (hpos / htotal.where(htotal > 0)).reindex(routes.index).fillna(0) >= share
    routes["route_leaks"] = routes["leaking"].astype(bool) & (by_rss | by_heap)
    routes["bytes_per_call"] = routes["retained_bytes"].astype(float) / routes["measured"].astype(float).where(
        routes["measured"].astype(float) > 0)
    g = routes.groupby(["method", "route"], sort=False)
    leak_rows = routes[routes["route_leaks"]]
    summary = pd.DataFrame({
        "hosts_serving": g["host"].nunique(),
        "hosts_leaking": leak_rows.groupby(["method", "route"])["host"].nunique(),
        "sessions_leaking": leak_rows.groupby(["method", "route"]).size(),
        "bytes_per_call": leak_rows.groupby(["method", "route"])["bytes_per_call"].median(),
    }).fillna({"hosts_leaking": 0, "sessions_leaking": 0}).reset_index()
    summary = summary.astype({"hosts_leaking": int, "sessions_leaking": int, "hosts_serving": int})
    summary = summary.sort_values(["hosts_leaking", "sessions_leaking", "route"],
                                  ascending=[False, False, True]).reset_index(drop=True)
    groups = sessions.groupby(by, sort=True).agg(
        sessions=("session_id", "size"), sessions_leaking=("leaking", "sum"),
        median_growth_bytes_per_h=("growth_bytes_per_h", "median")).reset_index()
    groups["robust_z"] = _robust_z(groups["median_growth_bytes_per_h"].astype(float))
    groups["outlier"] = ((groups["robust_z"] > _OUTLIER_Z)
                         & (groups["median_growth_bytes_per_h"] > threshold)).fillna(False).astype(bool)
    groups = groups.astype({"sessions_leaking": int})
    return FleetVerdict(by=by, growth_threshold_bytes_per_h=float(threshold),
                        sessions=sessions.reset_index(drop=True), routes=summary, groups=groups)


def fleet_verdict(source: str | Sessions, *, by: str = "host", growth_threshold_bytes_per_h: float = _MB,
                  share: float = 0.25, warmup: float = 0.1, hosts: list[str] | None = None,
                  storage_options: dict[str, Any] | None = None) -> FleetVerdict:
    """The fleet verdict of a Parquet dataset (path or fsspec URL; DuckDB) or of loaded Sessions (pandas)."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(map(repr, BY))}, got {by!r}")
    if not (0 < share <= 1):
        raise ValueError(f"share must be a fraction in (0, 1], got {share!r}")
    if not (0 <= warmup < 1):
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    if not (isinstance(growth_threshold_bytes_per_h, (int, float)) and growth_threshold_bytes_per_h >= 0):
        raise ValueError(f"growth_threshold_bytes_per_h must be a number >= 0, got {growth_threshold_bytes_per_h!r}")
    if isinstance(source, Sessions):
        if hosts:
            source = source.select(*[s for s, h in zip(source.session_ids, source.sessions["host"]) if h in hosts])
        agg = _pandas_aggregates(source, warmup)
    else:
        agg = _duckdb_aggregates(str(source), hosts, storage_options, warmup)
    return _decide(agg, by, growth_threshold_bytes_per_h, share)
