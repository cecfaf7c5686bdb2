"""The numbers behind the plots, checked against sessions whose every value is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plot_fixtures
import pytest
from plot_fixtures import BASELINE, INTERVAL_S, KB, LEAK_DELTAS, MB, SAMPLES

from leakyspanner import schema
from leakyspanner.analysis import load, stats

pair = plot_fixtures.pair
leaky = plot_fixtures.leaky
bare = plot_fixtures.bare


# ------------------------------------------------------------ endpoint_table

def test_endpoint_table_sorts_by_average_rss_change(leaky):
    table = stats.endpoint_table(leaky)
    assert list(table["endpoint"]) == ["POST /leak", "GET /ok", "GET /fail"]
    leak = table.iloc[0]
    assert leak["calls"] == SAMPLES and leak["errors"] == 0
    assert leak["avg_delta_bytes"] == pytest.approx(96 * KB)
    assert leak["p50_delta_bytes"] == pytest.approx(96 * KB)
    assert leak["p95_delta_bytes"] == pytest.approx(max(LEAK_DELTAS))
    assert leak["max_delta_bytes"] == max(LEAK_DELTAS)
    assert leak["avg_duration_s"] == pytest.approx(0.02)
    assert table.iloc[1]["avg_delta_bytes"] == pytest.approx(2 * KB)


def test_endpoint_table_counts_server_errors(leaky):
    table = stats.endpoint_table(leaky).set_index("endpoint")
    assert table.loc["GET /fail", "errors"] == SAMPLES
    assert table.loc["GET /ok", "errors"] == 0


def test_endpoint_table_pools_sessions_unless_one_is_named(pair):
    assert set(stats.endpoint_table(pair)["calls"]) == {2 * SAMPLES}
    second = pair.session_ids[1]
    assert set(stats.endpoint_table(pair, second)["calls"]) == {SAMPLES}


def test_endpoint_table_of_no_requests_is_empty_with_columns(bare):
    table = stats.endpoint_table(bare)
    assert table.empty
    assert {"endpoint", "calls", "avg_delta_bytes", "p95_duration_s"} <= set(table.columns)


def test_endpoint_table_rejects_an_unknown_session(pair):
    with pytest.raises(ValueError, match="nope"):
        stats.endpoint_table(pair, "nope")


def test_endpoint_comparison_puts_sessions_side_by_side(pair):
    before, after = pair.session_ids
    table = stats.endpoint_comparison(pair, before, after).set_index("endpoint")
    assert table.loc["POST /leak", "calls_before"] == SAMPLES == table.loc["POST /leak", "calls_after"]
    assert table.loc["POST /leak", "change_bytes"] == pytest.approx(0)
    assert table.index[0] == "POST /leak"


# ----------------------------------------------------------------- site_diff

def test_site_diff_first_against_last_snapshot(leaky):
    diff = stats.site_diff(leaky, 0, -1)
    assert list(diff["site"]) == ["app/leak.py:12", "app/new.py:9", "app/ok.py:3", "app/gone.py:7"]
    leak = diff.iloc[0]
    assert (leak["size_a"], leak["size_b"], leak["size_diff_bytes"]) == (100 * KB, 300 * KB, 200 * KB)
    assert (leak["count_a"], leak["count_b"], leak["count_diff"]) == (10, 30, 20)
    assert diff.attrs["snapshot_b"] == 2


def test_site_diff_counts_a_missing_site_as_zero(leaky):
    diff = stats.site_diff(leaky, 0, 2).set_index("site")
    assert (diff.loc["app/new.py:9", "size_a"], diff.loc["app/new.py:9", "size_b"]) == (0, 2048)
    assert diff.loc["app/gone.py:7", "size_diff_bytes"] == -3000
    assert diff.loc["app/gone.py:7", "count_b"] == 0


def test_site_diff_keeps_the_top_rows(leaky):
    assert list(stats.site_diff(leaky, 0, 1, top=1)["site"]) == ["app/leak.py:12"]


def test_site_diff_rejects_a_snapshot_the_session_lacks(leaky):
    with pytest.raises(ValueError, match="snapshot_b.*0, 1, 2"):
        stats.site_diff(leaky, 0, 7)


def test_site_diff_without_snapshots_is_empty(bare):
    diff = stats.site_diff(bare, 0, -1)
    assert diff.empty and "size_diff_bytes" in diff.columns


# ------------------------------------------------- smooth, downsample, growth

def test_smooth_is_a_centred_rolling_mean():
    smoothed = stats.smooth(pd.Series([0.0, 3.0, 6.0, 9.0]), 3)
    assert list(smoothed) == [1.5, 3.0, 6.0, 7.5]
    series = pd.Series([1, 2])
    assert stats.smooth(series, None) is series


def test_downsample_keeps_spikes_and_ends():
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"elapsed_s": np.arange(10_000.0), "rss_bytes": rng.normal(100, 1, 10_000)})
    frame.loc[4321, "rss_bytes"] = 1e6
    frame.loc[8765, "rss_bytes"] = -1e6
    small = stats.downsample(frame, 100)
    assert len(small) <= 100
    assert {0, 4321, 8765, 9999} <= set(small.index)
    assert small["elapsed_s"].is_monotonic_increasing


def test_downsample_leaves_a_small_frame_alone():
    frame = pd.DataFrame({"elapsed_s": [0.0, 1.0], "v": [1, 2]})
    assert stats.downsample(frame, 10) is frame
    with pytest.raises(ValueError, match="max_points"):
        stats.downsample(frame, 1)


def test_align_elapsed_measures_growth_from_each_baseline(pair):
    aligned = stats.align_elapsed(pair)
    assert list(pd.unique(aligned["session_id"])) == pair.session_ids
    first = aligned[aligned["session_id"] == pair.session_ids[0]]
    assert list(first["elapsed_s"][:3]) == pytest.approx([INTERVAL_S, 2 * INTERVAL_S, 3 * INTERVAL_S])
    assert (first["baseline_rss_bytes"] == BASELINE).all()
    assert first["rss_growth_bytes"].iloc[-1] == pytest.approx(SAMPLES * MB, abs=0.3 * MB)
    assert first["traced_growth_bytes"].iloc[0] == 0


def test_session_growth_fits_mb_per_hour(pair):
    growth = stats.session_growth(pair).set_index("session_id")
    leaking, flat = pair.session_ids
    assert growth.loc[leaking, "mb_per_hour"] == pytest.approx(3600 / INTERVAL_S, rel=0.02)
    assert abs(growth.loc[flat, "mb_per_hour"]) < 30
    assert growth.loc[leaking, "samples"] == SAMPLES
    traced = stats.session_growth(pair, "traced_bytes").set_index("session_id")
    assert traced.loc[leaking, "mb_per_hour"] == pytest.approx(3600 / INTERVAL_S / 2, rel=0.01)


def test_session_growth_without_samples_is_nan(bare):
    row = stats.session_growth(bare).iloc[0]
    assert row["samples"] == 0 and np.isnan(row["mb_per_hour"])


def test_session_growth_rejects_an_unknown_metric(pair):
    with pytest.raises(ValueError, match="metric"):
        stats.session_growth(pair, "cpu")


def test_public_names_are_sorted_and_exported():
    assert stats.__all__ == sorted(stats.__all__)
    for name in stats.__all__:
        assert callable(getattr(stats, name))


def test_endpoint_table_rss_statistics_cover_only_the_measured_requests(tmp_path, synth):
    records = synth.session(samples=2, requests_per_sample=4, routes=("/a",))
    before = 1 + schema.REQUEST_FIELDS.index("rss_before_bytes")
    for record in records:
        # capture under load: the third request of each interval (GET, +12 KiB) was not measured
        if isinstance(record, list) and record[before + 1] - record[before] == 3 * 4096:
            record[before] = record[before + 1] = None
    path = synth.write(tmp_path / f"{records[0]['session_id']}{schema.JSONL_SUFFIX}", records)
    table = stats.endpoint_table(load(path)).set_index("endpoint")
    get = table.loc["GET /a"]
    assert (get["calls"], get["rss_measured"]) == (4, 2), "every call counted, only measured ones in RSS stats"
    assert get["avg_delta_bytes"] == pytest.approx(4096) and get["max_delta_bytes"] == 4096
    assert (table.loc["POST /a", "calls"], table.loc["POST /a", "rss_measured"]) == (4, 4)


def test_endpoint_table_counts_every_call_from_intervals_when_records_are_only_the_measured_sample(tmp_path, synth):
    records = synth.session(samples=2, requests_per_sample=4, routes=("/a",))
    before = 1 + schema.REQUEST_FIELDS.index("rss_before_bytes")
    # schema 3 under load: the unmeasured third request of each interval (GET, +12 KiB, 30 ms) left no record
    kept = [r for r in records if not (isinstance(r, list) and r[before + 1] - r[before] == 3 * 4096)]
    assert len(kept) == len(records) - 2
    path = synth.write(tmp_path / f"{records[0]['session_id']}{schema.JSONL_SUFFIX}", kept)
    table = stats.endpoint_table(load(path)).set_index("endpoint")
    get = table.loc["GET /a"]
    assert (get["calls"], get["errors"], get["rss_measured"]) == (4, 2, 2)
    assert get["avg_duration_s"] == pytest.approx((0.01 + 0.03) / 2), "over every call, the unmeasured included"
    assert get["avg_delta_bytes"] == pytest.approx(4096)
