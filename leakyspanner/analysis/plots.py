"""Matplotlib pictures of loaded sessions: one function per question, each returning its Axes.

Every function takes :class:`~leakyspanner.analysis.Sessions` and keyword
options, draws on ``ax`` (a new figure when ``None``) and returns the Axes,
with a "no data" note when there is nothing to draw. The numbers come from
:mod:`leakyspanner.analysis.stats`; memory axes are in MB (MiB, as the logs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import matplotlib
import numpy as np
import pandas as pd

from leakyspanner import schema
from leakyspanner.analysis import stats

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from leakyspanner.analysis.load import Sessions

__all__ = ["plot_endpoint_deltas", "plot_rss_trend", "plot_session_comparison", "plot_site_diff"]

_MB = 1024 * 1024
_KINDS = ("box", "violin", "hist")
_SCALES = ("symlog", "linear")
_LINEAR_WITHIN_MB = 0.01  # symlog: linear within +-10 KB, about two pages, logarithmic beyond
_MAX_POINTS = 2000        # per session and line: enough for a screen, small enough to stay fast
_KDE_SAMPLE = 5000        # requests per endpoint fed to a violin's density estimate
_NO_DATA = "no data"
# Axes.boxplot/violinplot took ``orientation`` in 3.10 and deprecated ``vert``.
_HORIZONTAL = ({"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
               else {"vert": False})


#: Docstring pieces the plot functions share, as ``%(name)s`` in their docstrings
#: (the way seaborn shares its parameter documentation).
_DOCS = {
    "sessions": """sessions : Sessions
        Loaded sessions (:func:`leakyspanner.analysis.load`).
    session_ids : str or sequence of str, optional
        The sessions to draw; all of them by default.""",
    "returns": """Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on (with a "no data" note when there is nothing to draw).""",
}
_F = TypeVar("_F", bound=Callable[..., Any])


def _shared_doc(fn: _F) -> _F:
    doc = fn.__doc__ or ""
    for name, text in _DOCS.items():
        doc = doc.replace(f"%({name})s", text)
    fn.__doc__ = doc
    return fn


def _style(defaults: dict[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Our styling with the caller's matplotlib keywords on top (theirs win)."""
    return {**defaults, **kwargs}


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt  # only here: a caller passing ``ax`` never touches pyplot

    _, new = plt.subplots(figsize=figsize, layout="constrained")
    return new


def _no_data(ax: Axes, message: str = _NO_DATA) -> Axes:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.4")
    return ax


def _session_ids(sessions: Sessions, session_ids: str | Sequence[str] | None) -> list[str]:
    """The sessions asked for, in load order of the request; all of them for ``None``."""
    if session_ids is None:
        return sessions.session_ids
    wanted = [session_ids] if isinstance(session_ids, str) else list(session_ids)
    unknown = [s for s in wanted if s not in sessions.session_ids]
    if unknown:
        raise ValueError(f"session_ids must name loaded sessions ({', '.join(sessions.session_ids)}), "
                         f"unknown: {', '.join(map(str, unknown))}")
    return wanted


def _label(session_id: str, labels: Mapping[str, str] | None) -> str:
    if labels and session_id in labels:
        return labels[session_id]
    return session_id.removeprefix(schema.STEM_PREFIX)


def _short_site(site: str) -> str:
    """``.../package/module.py:12`` from a full path: the last directory, file and line."""
    path, _, line = site.rpartition(":")
    parts = path.replace("\\", "/").split("/")
    return f"{'/'.join(parts[-2:])}:{line}" if path else site


def _bytes(n: float) -> str:
    """Signed size with a unit that keeps 3 significant figures readable."""
    for unit, size in (("MB", _MB), ("KB", 1024)):
        if abs(n) >= size:
            return f"{n / size:+,.1f} {unit}"
    return f"{n:+,.0f} B"


def _session_value(sessions: Sessions, session_id: str, column: str) -> float:
    row = sessions.sessions[sessions.sessions["session_id"] == session_id]
    values = pd.to_numeric(row[column], errors="coerce").astype("float64")
    return float(values.iloc[0]) if len(values) else float("nan")


@_shared_doc
def plot_rss_trend(sessions: Sessions, *, session_ids: str | Sequence[str] | None = None, traced: bool = True,
                   smooth_window: int | None = None, show_baseline: bool = True, show_threshold: bool = True,
                   show_alerts: bool = True, time_range: tuple[float | None, float | None] | None = None,
                   labels: Mapping[str, str] | None = None, ax: Axes | None = None, **kwargs: Any) -> Axes:
    """RSS (solid) and tracemalloc traced memory (dashed) over elapsed seconds.

    Several sessions are overlaid on one elapsed-time axis, each in its own
    colour. Dotted lines mark each session's baseline RSS and dash-dotted ones
    the alert threshold (baseline + ``leak_threshold_mb``); triangles mark
    alerts.

    Parameters
    ----------
    %(sessions)s
    traced : bool, default True
        Draw traced memory (dashed) where the session recorded it.
    smooth_window : int, optional
        Average this many samples (a rolling mean); no smoothing by default.
    show_baseline, show_threshold, show_alerts : bool, default True
        Draw each session's baseline RSS, alert threshold and alerts.
    time_range : (float or None, float or None), optional
        ``(start_s, end_s)`` in elapsed seconds; either end may be None.
    labels : mapping of str to str, optional
        Legend names by session id.
    ax : matplotlib.axes.Axes, optional
        The Axes to draw on; a new figure when None.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` for the RSS lines
        (``lw``, ``alpha``, ``color``...), over leakyspanner's own styling.

    %(returns)s

    See Also
    --------
    plot_session_comparison : growth from each session's baseline, with fitted rates.
    """
    ax = _axes(ax, (9, 4.5))
    ids = _session_ids(sessions, session_ids)
    aligned = stats.align_elapsed(sessions)
    aligned = aligned[aligned["session_id"].isin(ids)]
    start, end = time_range if time_range is not None else (None, None)
    if start is not None:
        aligned = aligned[aligned["elapsed_s"] >= start]
    if end is not None:
        aligned = aligned[aligned["elapsed_s"] <= end]
    title = "Memory over time" + (f": {_label(ids[0], labels)}" if len(ids) == 1 else "")
    ax.set(title=title, xlabel="elapsed (s)", ylabel="memory (MB)")
    if aligned.empty:
        return _no_data(ax)

    several = len(ids) > 1
    alerted = False
    for i, sid in enumerate(ids):
        part = aligned[aligned["session_id"] == sid]
        if part.empty:
            continue
        color, name = f"C{i % 10}", _label(sid, labels)
        prefix = f"{name} " if several else ""
        part = part.assign(rss_bytes=stats.smooth(part["rss_bytes"], smooth_window),
                           traced_bytes=stats.smooth(part["traced_bytes"], smooth_window))
        part = stats.downsample(part, _MAX_POINTS, y=["rss_bytes", "traced_bytes"])
        ax.plot(part["elapsed_s"], part["rss_bytes"] / _MB, **_style({"color": color, "label": f"{prefix}RSS"}, kwargs))
        if traced and part["traced_bytes"].notna().any():
            ax.plot(part["elapsed_s"], part["traced_bytes"] / _MB, color=color, ls="--", lw=1.2,
                    label=f"{prefix}traced (tracemalloc)")
        baseline = _session_value(sessions, sid, "baseline_rss_bytes")
        if show_baseline and np.isfinite(baseline):
            ax.axhline(baseline / _MB, color=color, ls=":", lw=1, label=f"{prefix}baseline")
        threshold_mb = _session_value(sessions, sid, "leak_threshold_mb")
        if show_threshold and np.isfinite(baseline) and np.isfinite(threshold_mb):
            ax.axhline(baseline / _MB + threshold_mb, color=color, ls="-.", lw=1, label=f"{prefix}alert threshold")
        if show_alerts:
            alerts = sessions.alerts[sessions.alerts["session_id"] == sid]
            x = pd.to_numeric(alerts["elapsed_s"], errors="coerce").astype("float64")
            keep = x.between(part["elapsed_s"].min(), part["elapsed_s"].max())
            if keep.any():
                rss = pd.to_numeric(alerts["rss_bytes"], errors="coerce").astype("float64")
                ax.scatter(x[keep], rss[keep] / _MB, marker="v", s=60, color="crimson", zorder=3,
                           label="_alert" if alerted else "alert")
                alerted = True
    ax.legend(loc="upper left", fontsize="small")
    return ax


def _endpoint_values(sessions: Sessions, session_id: str | None, table: pd.DataFrame) -> list[np.ndarray]:
    """Per-request RSS change in MB for each endpoint row of ``table``, in its order."""
    requests = sessions.requests
    if session_id is not None:
        requests = requests[requests["session_id"] == session_id]
    keys = requests["method"].astype("str") + " " + requests["route"].astype("str")
    deltas = pd.to_numeric(requests["rss_delta_bytes"], errors="coerce").astype("float64") / _MB
    by_endpoint = {name: group.dropna().to_numpy() for name, group in deltas.groupby(keys.to_numpy())}
    return [by_endpoint.get(name, np.array([])) for name in table["endpoint"]]


def _violins(ax: Axes, values: list[np.ndarray], positions: list[int], kwargs: Mapping[str, Any]) -> None:
    """Violins where a density exists; a single mark where an endpoint has one distinct value."""
    rng = np.random.default_rng(0)
    spread = [(v if len(v) <= _KDE_SAMPLE else rng.choice(v, _KDE_SAMPLE, replace=False), p)
              for v, p in zip(values, positions) if len(np.unique(v)) > 1]
    if spread:
        ax.violinplot([v for v, _ in spread], positions=[p for _, p in spread], **_HORIZONTAL,
                      **_style({"widths": 0.8, "showextrema": False, "showmedians": True}, kwargs))
    for v, p in zip(values, positions):
        if 0 < len(np.unique(v)) <= 1:
            ax.plot([v[0]], [p], marker="|", markersize=20, color="C0")


@_shared_doc
def plot_endpoint_deltas(sessions: Sessions, *, session_id: str | None = None, routes: Sequence[str] | None = None,
                         kind: str = "box", max_endpoints: int = 12, scale: str = "symlog",
                         ax: Axes | None = None, **kwargs: Any) -> Axes:
    """Distribution of per-request RSS change for each endpoint, most suspicious first.

    Suspicion is the average change, as in
    :func:`~leakyspanner.analysis.stats.endpoint_table`.

    Parameters
    ----------
    sessions : Sessions
        Loaded sessions (:func:`leakyspanner.analysis.load`).
    session_id : str, optional
        One session; None pools every session.
    routes : sequence of str, optional
        Keep only these routes (``"/items/{item_id}"`` or ``"GET /items/{item_id}"``).
    kind : {"box", "violin", "hist"}, default "box"
        One row per endpoint, the most suspicious at the top, calls in the
        label (box, violin); or overlaid step histograms, calls in the legend.
    max_endpoints : int, default 12
        The most suspicious endpoints drawn.
    scale : {"symlog", "linear"}, default "symlog"
        ``symlog`` (linear within 10 KB, logarithmic beyond) keeps the many
        small changes and the rare page-sized jumps both visible.
    ax : matplotlib.axes.Axes, optional
        The Axes to draw on; a new figure when None.
    **kwargs
        Passed to :meth:`~matplotlib.axes.Axes.boxplot`,
        :meth:`~matplotlib.axes.Axes.violinplot` or :meth:`~matplotlib.axes.Axes.hist`
        (by ``kind``), over leakyspanner's own styling.

    %(returns)s

    Raises
    ------
    ValueError
        For an unknown ``kind`` or ``scale``, or ``max_endpoints`` below 1.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {', '.join(_SCALES)}, got {scale!r}")
    if max_endpoints < 1:
        raise ValueError(f"max_endpoints must be at least 1, got {max_endpoints!r}")
    ax = _axes(ax, (9, 5))
    table = stats.endpoint_table(sessions, session_id)
    if routes is not None:
        wanted = set(routes)
        table = table[table["route"].isin(wanted) | table["endpoint"].isin(wanted)]
    table = table.head(max_endpoints)
    title = "Per-request RSS change by endpoint" + (f": {_label(session_id, None)}" if session_id else "")
    ax.set_title(title)
    if table.empty:
        ax.set(xlabel="RSS change per request (MB)")
        return _no_data(ax)

    values = _endpoint_values(sessions, session_id, table)
    if scale == "symlog":
        ax.set_xscale("symlog", linthresh=_LINEAR_WITHIN_MB)
    names = [f"{e}  ({c:,} calls)" for e, c in zip(table["endpoint"], table["calls"])]
    if kind == "hist":
        edges = np.histogram_bin_edges(np.concatenate(values), bins=40).tolist()
        for i, (v, name) in enumerate(zip(values, names)):
            ax.hist(v, **_style({"bins": edges, "histtype": "step", "lw": 1.5, "color": f"C{i % 10}", "label": name},
                                kwargs))
        ax.set_yscale("log")
        ax.set(xlabel="RSS change per request (MB)", ylabel="requests")
        ax.axvline(0, color="0.5", lw=0.8)
        ax.legend(fontsize="small")
        return ax
    positions = list(range(len(values), 0, -1))  # the most suspicious at the top
    if kind == "box":
        ax.boxplot(values, positions=positions, manage_ticks=False, **_HORIZONTAL,
                   **_style({"widths": 0.6, "flierprops": {"markersize": 3, "alpha": 0.4}}, kwargs))
    else:
        _violins(ax, values, positions, kwargs)
    ax.set_yticks(positions, names)
    ax.set_ylim(0.4, len(values) + 0.6)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_xlabel("RSS change per request (MB)")
    return ax


def plot_site_diff(sessions: Sessions, snapshot_a: int, snapshot_b: int, *, session_id: str | None = None,
                   top: int = 15, ax: Axes | None = None, **kwargs: Any) -> Axes:
    """Horizontal bars of the allocation sites that grew most between two tracemalloc snapshots.

    Each bar is labelled with the bytes and blocks it gained.

    Parameters
    ----------
    sessions : Sessions
        Loaded sessions (:func:`leakyspanner.analysis.load`).
    snapshot_a, snapshot_b : int
        Snapshot ``seq`` numbers; negative ones count from the last
        (``0, -1`` is first against last).
    session_id : str, optional
        The session; None takes the first session with snapshots.
    top : int, default 15
        The sites that grew most, drawn.
    ax : matplotlib.axes.Axes, optional
        The Axes to draw on; a new figure when None.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.barh` (``color``, ``alpha``...),
        over leakyspanner's own styling.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on (with a note when no snapshot or no site grew).

    See Also
    --------
    leakyspanner.analysis.stats.site_diff : the same numbers as a DataFrame.
    """
    ax = _axes(ax, (9, 5))
    diff = stats.site_diff(sessions, snapshot_a, snapshot_b, session_id=session_id, top=None)
    ax.set_xlabel("growth between snapshots (MB)")
    if diff.empty:
        ax.set_title("Allocation growth")
        return _no_data(ax, "no tracemalloc snapshots")
    seq_a, seq_b, sid = diff.attrs["snapshot_a"], diff.attrs["snapshot_b"], diff.attrs["session_id"]
    snaps = sessions.snapshots[sessions.snapshots["session_id"] == sid]
    when = dict(zip(snaps["seq"].astype("int64"), pd.to_numeric(snaps["elapsed_s"]).astype("float64")))
    ax.set_title(f"Allocation growth: snapshot #{seq_a} ({when.get(seq_a, np.nan):.0f} s)"
                 f" \u2192 #{seq_b} ({when.get(seq_b, np.nan):.0f} s)")
    grew = diff[diff["size_diff_bytes"] > 0].head(top)
    if grew.empty:
        return _no_data(ax, "no site grew between these snapshots")
    positions = np.arange(len(grew))[::-1]  # the largest growth at the top
    bars = ax.barh(positions, grew["size_diff_bytes"] / _MB, **_style({"color": "C3"}, kwargs))
    ax.bar_label(bars, padding=3, fontsize="small",
                 labels=[f"{_bytes(b)}, {c:+,} blocks" for b, c in zip(grew["size_diff_bytes"], grew["count_diff"])])
    ax.set_yticks(positions, [_short_site(s) for s in grew["site"]])
    ax.margins(x=0.35)  # room for the labels right of the bars
    ax.set_xlim(left=0)
    return ax


@_shared_doc
def plot_session_comparison(sessions: Sessions, *, session_ids: str | Sequence[str] | None = None,
                            metric: str = "rss_bytes", labels: Mapping[str, str] | None = None,
                            ax: Axes | None = None, **kwargs: Any) -> Axes:
    """Memory growth of several sessions from their own baselines, on one elapsed-time axis.

    For before/after a fix, or worker against worker. Each session gets its
    growth curve and a dashed line fitted after warm-up (see
    :func:`~leakyspanner.analysis.stats.session_growth`); the legend gives its
    MB/hour.

    Parameters
    ----------
    %(sessions)s
    metric : {"rss_bytes", "traced_bytes", "vms_bytes"}, default "rss_bytes"
        RSS above the header's baseline, or traced memory or VMS above the first sample.
    labels : mapping of str to str, optional
        Legend names by session id.
    ax : matplotlib.axes.Axes, optional
        The Axes to draw on; a new figure when None.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` for the growth curves
        (``lw``, ``alpha``...), over leakyspanner's own styling.

    %(returns)s

    See Also
    --------
    plot_rss_trend : absolute memory over time, with baselines and alerts.
    """
    ax = _axes(ax, (9, 4.5))
    ids = _session_ids(sessions, session_ids)
    growth = stats.session_growth(sessions, metric).set_index("session_id")
    aligned = stats.align_elapsed(sessions)
    column = metric.replace("_bytes", "_growth_bytes")
    what = {"rss_bytes": "RSS", "traced_bytes": "Traced memory", "vms_bytes": "VMS"}[metric]
    ax.set(title=f"{what} growth from baseline", xlabel="elapsed (s)", ylabel="growth (MB)")
    drawn = False
    for i, sid in enumerate(ids):
        part = aligned[aligned["session_id"] == sid].dropna(subset=["elapsed_s", column])
        if part.empty:
            continue
        color, fit = f"C{i % 10}", growth.loc[sid]
        part = stats.downsample(part, _MAX_POINTS, y=column)
        rate = f"{fit['mb_per_hour']:+,.1f} MB/h" if np.isfinite(fit["mb_per_hour"]) else "rate n/a"
        ax.plot(part["elapsed_s"], part[column] / _MB,
                **_style({"color": color, "label": f"{_label(sid, labels)}: {rate}"}, kwargs))
        if np.isfinite(fit["slope_bytes_per_s"]):
            xs = np.array([fit["fit_start_s"], part["elapsed_s"].max()])
            ax.plot(xs, (fit["intercept_bytes"] + fit["slope_bytes_per_s"] * xs) / _MB, color=color,
                    ls="--", lw=1, label="_fit")
        drawn = True
    if not drawn:
        return _no_data(ax)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.legend(loc="upper left", fontsize="small")
    return ax
