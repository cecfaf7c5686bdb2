"""What each plot draws: lines, labels, bars and notes on the Axes it returns."""

from __future__ import annotations

import re

import numpy as np
import plot_fixtures
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from plot_fixtures import BASELINE, INTERVAL_S, MB, SAMPLES, THRESHOLD_MB

from leakyspanner.analysis import plots, stats

pair = plot_fixtures.pair
leaky = plot_fixtures.leaky
bare = plot_fixtures.bare


def labels(ax: Axes) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def line(ax: Axes, label: str):
    return next(ln for ln in ax.get_lines() if ln.get_label() == label)


def notes(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def yticks_top_down(ax: Axes) -> list[str]:
    ticks = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())), reverse=True)
    return [text for _, text in ticks]


# ------------------------------------------------------------ plot_rss_trend

def test_rss_trend_draws_rss_traced_baseline_threshold_and_alert(leaky):
    ax = plots.plot_rss_trend(leaky)
    assert labels(ax) == ["RSS", "traced (tracemalloc)", "baseline", "alert threshold"]
    assert line(ax, "baseline").get_ydata()[0] == pytest.approx(BASELINE / MB)
    assert line(ax, "alert threshold").get_ydata()[0] == pytest.approx(BASELINE / MB + THRESHOLD_MB)
    rss = line(ax, "RSS")
    assert len(rss.get_xdata()) == SAMPLES and rss.get_xdata()[0] == pytest.approx(INTERVAL_S)
    alerts = [c for c in ax.collections if c.get_label() == "alert"]
    assert len(alerts) == 1 and len(alerts[0].get_offsets()) == 1
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("elapsed (s)", "memory (MB)")
    assert ax.get_title().startswith("Memory over time: ")
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "alert"


def test_rss_trend_options_turn_parts_off(leaky):
    ax = plots.plot_rss_trend(leaky, traced=False, show_baseline=False, show_threshold=False, show_alerts=False)
    assert labels(ax) == ["RSS"]
    assert not ax.collections


def test_rss_trend_overlays_sessions_with_their_labels(pair):
    names = dict(zip(pair.session_ids, ["before", "after"]))
    ax = plots.plot_rss_trend(pair, labels=names, show_baseline=False, show_threshold=False)
    assert [label for label in labels(ax) if label.endswith("RSS")] == ["before RSS", "after RSS"]
    assert line(ax, "before RSS").get_color() != line(ax, "after RSS").get_color()
    assert ax.get_title() == "Memory over time"


def test_rss_trend_limits_time_and_smooths(leaky):
    ax = plots.plot_rss_trend(leaky, time_range=(10, 20), smooth_window=3)
    xs = line(ax, "RSS").get_xdata()
    assert min(xs) >= 10 and max(xs) <= 20 and len(xs) == 6
    raw = stats.align_elapsed(leaky)
    raw = raw[raw["elapsed_s"].between(10, 20)]
    expected = raw["rss_bytes"].rolling(3, center=True, min_periods=1).mean() / MB
    assert np.allclose(line(ax, "RSS").get_ydata(), expected)


def test_rss_trend_draws_on_the_axes_given(leaky):
    ax = Figure().add_subplot()
    assert plots.plot_rss_trend(leaky, ax=ax) is ax


def test_rss_trend_of_no_samples_says_so(bare):
    ax = plots.plot_rss_trend(bare)
    assert isinstance(ax, Axes) and "no data" in notes(ax) and not ax.get_lines()


def test_rss_trend_rejects_an_unknown_session(pair):
    with pytest.raises(ValueError, match="unknown: nope"):
        plots.plot_rss_trend(pair, session_ids=["nope"])


# ------------------------------------------------------ plot_endpoint_deltas

def test_endpoint_box_rows_are_sorted_by_suspicion_with_calls(leaky):
    ax = plots.plot_endpoint_deltas(leaky)
    assert yticks_top_down(ax) == [f"POST /leak  ({SAMPLES} calls)", f"GET /ok  ({SAMPLES} calls)",
                                   f"GET /fail  ({SAMPLES} calls)"]
    assert ax.get_xlabel() == "RSS change per request (MB)"
    assert ax.get_xscale() == "symlog"


def test_endpoint_deltas_keep_the_routes_asked_for(pair):
    ax = plots.plot_endpoint_deltas(pair, routes=["/ok", "GET /fail"], scale="linear")
    assert yticks_top_down(ax) == [f"GET /ok  ({2 * SAMPLES} calls)", f"GET /fail  ({2 * SAMPLES} calls)"]
    assert ax.get_xscale() == "linear"


def test_endpoint_hist_has_one_legend_entry_per_endpoint(leaky):
    ax = plots.plot_endpoint_deltas(leaky, kind="hist", max_endpoints=2)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"POST /leak  ({SAMPLES} calls)",
                                                                   f"GET /ok  ({SAMPLES} calls)"]
    assert len(ax.patches) == 2


def test_endpoint_violin_marks_an_endpoint_with_one_value(leaky):
    ax = plots.plot_endpoint_deltas(leaky, kind="violin")
    assert ax.collections  # the violins of /leak and /ok
    assert [ln.get_marker() for ln in ax.get_lines()].count("|") == 1  # /fail: always 0


def test_endpoint_deltas_reject_an_unknown_kind(leaky):
    with pytest.raises(ValueError, match="kind must be one of box, violin, hist"):
        plots.plot_endpoint_deltas(leaky, kind="pie")


def test_endpoint_deltas_of_no_requests_say_so(bare):
    assert "no data" in notes(plots.plot_endpoint_deltas(bare))


def test_endpoint_deltas_for_an_unknown_route_say_so(leaky):
    assert "no data" in notes(plots.plot_endpoint_deltas(leaky, routes=["/missing"]))


# ------------------------------------------------------------ plot_site_diff

def test_site_diff_bars_show_sites_that_grew_with_bytes_and_blocks(leaky):
    ax = plots.plot_site_diff(leaky, 0, -1)
    assert yticks_top_down(ax) == ["app/leak.py:12", "app/new.py:9"]
    widths = sorted((p.get_width() for p in ax.patches), reverse=True)
    assert widths == pytest.approx([200 * 1024 / MB, 2048 / MB])
    assert "+200.0 KB, +20 blocks" in notes(ax) and "+2.0 KB, +2 blocks" in notes(ax)
    assert ax.get_title() == "Allocation growth: snapshot #0 (2 s) \u2192 #2 (42 s)"


def test_site_diff_shows_at_most_top_bars(leaky):
    assert len(plots.plot_site_diff(leaky, 0, 2, top=1).patches) == 1


def test_site_diff_without_growth_says_so(leaky):
    ax = plots.plot_site_diff(leaky, 1, 1)
    assert not ax.patches and "no site grew between these snapshots" in notes(ax)


def test_site_diff_without_snapshots_says_so(bare):
    assert "no tracemalloc snapshots" in notes(plots.plot_site_diff(bare, 0, -1))


# --------------------------------------------------- plot_session_comparison

def test_session_comparison_legend_gives_fitted_mb_per_hour(pair):
    names = dict(zip(pair.session_ids, ["leaking", "fixed"]))
    ax = plots.plot_session_comparison(pair, labels=names)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 2
    leaking = re.fullmatch(r"leaking: \+([\d,.]+) MB/h", legend[0])
    assert leaking and float(leaking.group(1).replace(",", "")) == pytest.approx(1800, rel=0.02)
    assert legend[1].startswith("fixed: ")
    assert len([ln for ln in ax.get_lines() if ln.get_label() == "_fit"]) == 2
    growth = line(ax, legend[0]).get_ydata()
    assert growth[-1] == pytest.approx(SAMPLES, abs=0.3)  # MB above the baseline
    assert ax.get_ylabel() == "growth (MB)" and ax.get_title() == "RSS growth from baseline"


def test_session_comparison_of_traced_memory(pair):
    ax = plots.plot_session_comparison(pair, session_ids=pair.session_ids[:1], metric="traced_bytes")
    assert ax.get_title() == "Traced memory growth from baseline"
    assert len(ax.get_legend().get_texts()) == 1


def test_session_comparison_rejects_an_unknown_metric(pair):
    with pytest.raises(ValueError, match="metric"):
        plots.plot_session_comparison(pair, metric="cpu")


def test_session_comparison_of_no_samples_says_so(bare):
    assert "no data" in notes(plots.plot_session_comparison(bare))


def test_public_names_are_sorted_and_exported():
    assert plots.__all__ == sorted(plots.__all__)
    for name in plots.__all__:
        assert callable(getattr(plots, name))
