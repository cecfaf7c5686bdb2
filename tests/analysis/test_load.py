from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

import leakyspanner.analysis as analysis
from leakyspanner import errors, schema
from leakyspanner.analysis import LoadWarning, Sessions, load

load_module = importlib.import_module("leakyspanner.analysis.load")  # the package attribute is the function

FRAMES = ("sessions", "samples", "tasks", "requests", "intervals", "snapshots", "sites", "traces",
          "alerts", "events", "endpoints")
UTC_NS = pd.DatetimeTZDtype("ns", "UTC")


def frames(sessions: Sessions) -> dict[str, pd.DataFrame]:
    return {name: getattr(sessions, name) for name in FRAMES}


def dtype_names(frame: pd.DataFrame) -> dict[str, str]:
    """Dtypes by name: a categorical is "category" whatever its categories."""
    return {column: str(dtype) for column, dtype in frame.dtypes.items()}


def load_quietly(source: object) -> Sessions:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load(source)  # type: ignore[arg-type]


# ------------------------------------------------------------------ columns and dtypes

def test_every_frame_starts_with_session_id(write_session):
    loaded = load_quietly(write_session(alert_after=1))
    for name, frame in frames(loaded).items():
        assert frame.columns[0] == "session_id", name
        assert len(frame) > 0, name


def test_columns_have_the_documented_dtypes(write_session):
    loaded = load_quietly(write_session(alert_after=1))
    requests = loaded.requests
    assert list(requests.columns) == ["session_id", *schema.REQUEST_FIELDS, "time", "elapsed_s",
                                      "rss_delta_bytes", "traced_delta_bytes"]
    assert isinstance(requests["method"].dtype, pd.CategoricalDtype)
    assert isinstance(requests["route"].dtype, pd.CategoricalDtype)
    assert requests["status"].dtype == "Int64"
    assert requests["traced_before_bytes"].dtype == "Int64"
    assert requests["duration_s"].dtype == "float64"
    assert requests["time"].dtype == UTC_NS
    assert pd.api.types.is_string_dtype(requests["session_id"])

    samples = loaded.samples
    assert samples["rss_bytes"].dtype == "Int64"
    assert [c for c in samples.columns if c.startswith("gc_")] == [
        f"gc_{name}_{i}" for name in ("count", "collections", "collected", "uncollectable") for i in range(3)
    ] + ["gc_garbage"]
    assert samples["tracing"].dtype == "boolean"
    assert samples["time"].dtype == UTC_NS
    assert "asyncio_tasks_by_coro" not in samples.columns

    sessions = loaded.sessions
    assert sessions["complete"].dtype == bool
    assert sessions["start"].dtype == UTC_NS
    assert sessions["peak_rss_bytes"].dtype == "Int64"
    assert sessions["interval_seconds"].dtype == "float64"
    assert loaded.sites["line"].dtype == "Int64"
    assert loaded.intervals["route"].dtype == "category"


def test_empty_frames_keep_the_columns_and_dtypes_of_full_ones(write_session, tmp_path):
    full = load_quietly(write_session(alert_after=0))
    bare = load_quietly(write_session(directory=tmp_path / "bare", samples=0, snapshots=False, complete=False))
    for name in ("samples", "tasks", "requests", "intervals", "snapshots", "sites", "traces", "alerts",
                 "endpoints"):
        assert len(getattr(bare, name)) == 0, name
        assert dtype_names(getattr(bare, name)) == dtype_names(getattr(full, name)), name


def test_time_is_utc_and_elapsed_counts_from_session_start(write_session, synth):
    loaded = load_quietly(write_session(interval_s=5.0))
    samples = loaded.samples
    assert samples["elapsed_s"].tolist() == [5.0, 10.0, 15.0, 20.0]
    assert samples["time"].iloc[0] == pd.Timestamp(synth.START_TS + 5.0, unit="s", tz="UTC")
    assert loaded.sessions["start"].iloc[0] == pd.Timestamp(synth.START_TS, unit="s", tz="UTC")


def test_request_deltas_are_after_minus_before_and_null_when_either_is(write_session):
    requests = load_quietly(write_session()).requests
    assert (requests["rss_delta_bytes"] == requests["rss_after_bytes"] - requests["rss_before_bytes"]).all()
    untraced = requests["traced_before_bytes"].isna()
    assert untraced.any() and requests.loc[untraced, "traced_delta_bytes"].isna().all()
    assert (requests.loc[~untraced, "traced_delta_bytes"] == 500).all()


def test_request_columns_follow_the_header_order_not_the_schema_order(synth, tmp_path):
    reordered = list(reversed(schema.REQUEST_FIELDS))
    path = synth.write(tmp_path / "leakyspanner_reordered.jsonl", synth.session(request_fields=reordered))
    straight = synth.write(tmp_path / "straight" / "leakyspanner_straight.jsonl", synth.session())
    got = load_quietly(path).requests.drop(columns="session_id")
    expected = load_quietly(straight).requests.drop(columns="session_id")
    pd.testing.assert_frame_equal(got, expected)


def test_tasks_sites_and_traces_are_tidy(write_session):
    loaded = load_quietly(write_session(samples=2))
    tasks = loaded.tasks
    assert list(tasks.columns) == ["session_id", "ts", "elapsed_s", "coro", "tasks"]
    assert tasks.loc[tasks["coro"] == "worker", "tasks"].tolist() == [1, 2]

    sites = loaded.sites
    assert list(sites.columns) == ["session_id", "snapshot_seq", "ts", "elapsed_s", "file", "line", "site",
                                   "size_bytes", "count", "size_diff_bytes", "count_diff"]
    leak = sites[sites["site"] == "app/leak.py:12"]
    assert leak["snapshot_seq"].tolist() == [0, 1]
    assert leak["size_bytes"].tolist() == [4096, 8192]

    traces = loaded.traces
    assert traces["rank"].tolist() == [1, 1]
    assert traces["site"].iloc[0] == "app/leak.py:12"
    assert traces["traceback"].iloc[0] == "app/leak.py:12 <- app/main.py:40"
    assert "sites" not in loaded.snapshots.columns and "traces" not in loaded.snapshots.columns


def test_site_columns_follow_the_snapshots_site_fields(synth, tmp_path):
    records = synth.session(samples=1)
    snapshot = next(r for r in records if isinstance(r, dict) and r["kind"] == "snapshot")
    order = list(reversed(schema.SITE_FIELDS))
    snapshot["site_fields"] = order
    snapshot["sites"] = [list(reversed(site)) for site in snapshot["sites"]]
    sites = load_quietly(synth.write(tmp_path / "leakyspanner_sites.jsonl", records)).sites
    assert sites["site"].tolist() == ["app/leak.py:12", "app/ok.py:3"]
    assert sites["size_bytes"].tolist() == [4096, 100]


def test_unknown_kinds_keys_and_tags_are_ignored(synth, tmp_path):
    records = synth.session(samples=1)
    records.insert(1, {"kind": "future_kind", "ts": 1.0})
    records.insert(2, ["future-tag", 1, 2])
    sample = next(r for r in records if isinstance(r, dict) and r["kind"] == "sample")
    sample["future_key"] = 1
    loaded = load_quietly(synth.write(tmp_path / "leakyspanner_future.jsonl", records))
    assert len(loaded.samples) == 1 and len(loaded.requests) == 3 and loaded.skipped == []
    assert "future_key" not in loaded.samples.columns


def test_interval_and_threshold_come_from_the_header_config(write_session):
    sessions = load_quietly(write_session(interval_s=2.5)).sessions
    assert sessions["interval_seconds"].iloc[0] == 2.5
    assert sessions["leak_threshold_mb"].iloc[0] == 50.0


# ------------------------------------------------------------------ sources

def test_directory_loads_every_session_with_its_id_on_every_row(write_session, tmp_path):
    first = write_session(start_ts=1_700_000_000.0, pid=1)
    second = write_session(start_ts=1_700_003_600.0, pid=2)
    loaded = load_quietly(tmp_path)
    ids = [p.stem for p in (first, second)]
    assert loaded.session_ids == ids
    assert len(loaded) == 2
    for name in ("samples", "requests", "sites"):
        assert set(getattr(loaded, name)["session_id"]) == set(ids), name
    assert loaded.requests.groupby("session_id").size().tolist() == [12, 12]
    assert isinstance(loaded.requests["route"].dtype, pd.CategoricalDtype)


def test_glob_and_list_sources_load_the_same_sessions_as_the_directory(write_session, tmp_path):
    paths = [write_session(pid=1), write_session(start_ts=1_700_000_100.0, pid=2)]
    by_dir = load_quietly(tmp_path)
    by_glob = load_quietly(str(tmp_path / "*.jsonl"))
    by_list = load_quietly([str(paths[0]), paths[1]])
    for other in (by_glob, by_list):
        assert other.session_ids == by_dir.session_ids
        pd.testing.assert_frame_equal(other.requests, by_dir.requests)


def test_sessions_one_directory_down_are_found(write_session, tmp_path):
    write_session(directory=tmp_path / "run1")
    assert len(load_quietly(tmp_path)) == 1


def test_a_log_beside_a_jsonl_of_the_same_stem_is_not_read(write_session):
    path = write_session()
    path.with_suffix(schema.LOG_SUFFIX).write_text("  LeakySpanner v0.2.0\n[12:00:00] RSS=1.0MB  VMS=2.0MB  "
                                                   "delta=+0.0MB  GC=(0, 0, 0)\n")
    loaded = load_quietly(path.parent)
    assert len(loaded) == 1
    assert loaded.sessions["format"].tolist() == ["jsonl"]


def test_unrelated_files_in_a_log_directory_are_passed_over_silently(write_session, tmp_path):
    write_session()
    (tmp_path / "app.log").write_text("INFO uvicorn started\n")
    (tmp_path / "data.jsonl").write_text('{"a": 1}\n')
    assert len(load_quietly(tmp_path)) == 1


def test_same_session_copied_twice_gets_two_distinct_ids(write_session, tmp_path):
    original = write_session()
    copy = tmp_path / "backup" / original.name
    copy.parent.mkdir()
    copy.write_bytes(original.read_bytes())
    loaded = load_quietly(tmp_path)
    assert len(set(loaded.session_ids)) == 2


# ------------------------------------------------------------------ damaged input

def test_torn_last_line_loads_the_rest_and_warns_once(write_session):
    path = write_session()
    with path.open("a") as f:
        f.write('["r",1700000099.5,"GET","/us')
    lines = path.read_text().count("\n") + 1
    with pytest.warns(LoadWarning) as record:
        loaded = load(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert str(path) in message and f"line {lines} (torn last line)" in message
    assert len(loaded.requests) == 12
    assert loaded.skipped == [(str(path), lines, "torn last line")]


def test_corrupt_middle_lines_are_skipped_and_named_by_line_number(synth, tmp_path):
    records = synth.session()
    path = tmp_path / "leakyspanner_corrupt.jsonl"
    lines = [json.dumps(r) for r in records]
    request_at = next(i for i, r in enumerate(records) if isinstance(r, list))
    sample_at = next(i for i, r in enumerate(records) if isinstance(r, dict) and r["kind"] == "sample")
    lines[request_at] = lines[request_at][:25]  # a request cut short mid-file
    lines[sample_at] = "\x00\x00garbage"
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(LoadWarning) as record:
        loaded = load(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert f"{request_at + 1} (not valid JSON)" in message and f"{sample_at + 1} (not valid JSON)" in message
    assert len(loaded.requests) == 11
    assert len(loaded.samples) == 3
    assert sorted(n for _, n, _ in loaded.skipped) == [request_at + 1, sample_at + 1]


def test_request_with_the_wrong_number_of_values_is_skipped(synth, tmp_path):
    records = synth.session()
    request_at = next(i for i, r in enumerate(records) if isinstance(r, list))
    records[request_at] = records[request_at][:-2]
    path = synth.write(tmp_path / "leakyspanner_short.jsonl", records)
    with pytest.warns(LoadWarning, match=rf"line {request_at + 1} \(request record has"):
        loaded = load(path)
    assert len(loaded.requests) == 11


def test_warnings_from_several_files_come_as_one(write_session, tmp_path):
    for pid in (1, 2):
        with write_session(pid=pid, start_ts=1_700_000_000.0 + pid).open("a") as f:
            f.write('{"kind":"sam')
    with pytest.warns(LoadWarning) as record:
        load(tmp_path)
    assert len(record) == 1
    assert str(record[0].message).count("torn last line") == 2


def test_warn_false_stays_silent_but_still_lists_what_was_skipped(write_session):
    path = write_session()
    with path.open("a") as f:
        f.write("[")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load(path, warn=False)
    assert len(loaded.skipped) == 1


def test_newer_schema_version_is_refused_naming_both_versions(write_session):
    path = write_session(schema_version=schema.SCHEMA_VERSION + 1)
    with pytest.raises(errors.SchemaVersionError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    assert f"version {schema.SCHEMA_VERSION + 1}" in message and f"version {schema.SCHEMA_VERSION}" in message


def test_a_file_that_is_not_a_log_raises_naming_the_path(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"hello": "world"}\n')
    with pytest.raises(errors.NotALogError, match=str(path)):
        load(path)


def test_a_missing_path_raises_naming_it(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(errors.NotALogError, match=str(missing)):
        load(missing)


def test_an_empty_directory_raises_naming_it(tmp_path):
    with pytest.raises(errors.NotALogError, match=str(tmp_path)):
        load(tmp_path)


def test_a_directory_without_any_session_raises_naming_it(tmp_path):
    (tmp_path / "app.log").write_text("INFO nothing to see\n")
    with pytest.raises(errors.NotALogError, match=str(tmp_path)):
        load(tmp_path)


def test_a_glob_matching_nothing_raises_naming_the_pattern(tmp_path):
    pattern = str(tmp_path / "*.jsonl")
    with pytest.raises(errors.NotALogError, match=pattern.replace("*", r"\*")):
        load(pattern)


def test_an_unreadable_file_named_like_ours_is_reported_not_fatal_in_a_directory(write_session, tmp_path):
    write_session()
    broken = tmp_path / "leakyspanner_20240101_000000.jsonl"
    broken.write_text('{"kind":"hea')
    with pytest.warns(LoadWarning, match=broken.name):
        loaded = load(tmp_path)
    assert len(loaded) == 1


def test_a_source_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="int"):
        load(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------ session totals

def test_complete_session_takes_its_totals_from_the_summary(write_session, synth):
    sessions = load_quietly(write_session(samples=4, growth_per_sample_bytes=synth.MB)).sessions
    row = sessions.iloc[0]
    assert bool(row["complete"])
    assert row["peak_rss_bytes"] == 105 * synth.MB  # the summary's, above every sample
    assert row["final_rss_bytes"] == 104 * synth.MB
    assert row["requests_total"] == 12
    assert row["duration_s"] == 21.0
    assert row["pid"] == 4242 and row["host"] == "testhost" and row["format"] == "jsonl"


def test_incomplete_session_loads_with_totals_from_its_samples(write_session, synth):
    sessions = load_quietly(write_session(samples=3, complete=False)).sessions
    row = sessions.iloc[0]
    assert not bool(row["complete"])
    assert row["peak_rss_bytes"] == 103 * synth.MB
    assert row["final_rss_bytes"] == 103 * synth.MB
    assert row["net_growth_bytes"] == 3 * synth.MB
    assert row["requests_total"] == 9
    assert row["end_ts"] == synth.START_TS + 15.0
    assert row["duration_s"] == 15.0


def test_summary_endpoints_become_a_frame(write_session):
    endpoints = load_quietly(write_session()).endpoints
    assert endpoints["route"].tolist() == ["/items/{item_id}"]
    assert endpoints["calls"].tolist() == [12]
    assert endpoints["avg_duration_s"].tolist() == [0.02]


# ------------------------------------------------------------------ Sessions helpers

def test_select_keeps_only_the_named_sessions_in_every_frame(write_session, tmp_path):
    keep = write_session(pid=1, routes=("/a",))
    write_session(start_ts=1_700_000_100.0, pid=2, routes=("/b",))
    selected = load_quietly(tmp_path).select(keep.stem)
    assert selected.session_ids == [keep.stem]
    for name, frame in frames(selected).items():
        assert set(frame["session_id"]) <= {keep.stem}, name
    assert len(selected.requests) == 12 and len(selected.samples) == 4
    assert list(selected.requests["route"].cat.categories) == ["/a"]


def test_select_of_an_unknown_session_names_it(write_session):
    loaded = load_quietly(write_session())
    with pytest.raises(ValueError, match="nope"):
        loaded.select("nope")
    with pytest.raises(ValueError):
        loaded.select()


def test_between_keeps_rows_inside_the_elapsed_window_in_every_timed_frame(write_session):
    loaded = load_quietly(write_session(samples=4, interval_s=5.0))
    window = loaded.between(9.0, 15.0)
    assert window.samples["elapsed_s"].tolist() == [10.0, 15.0]
    assert window.sites["elapsed_s"].between(9.0, 15.0).all() and len(window.sites) == 4
    assert window.requests["elapsed_s"].between(9.0, 15.0).all() and len(window.requests) == 4
    assert len(window.sessions) == 1
    assert len(loaded.samples) == 4  # the original is untouched
    assert window.between(None, 10.0).samples["elapsed_s"].tolist() == [10.0]


def test_repr_is_one_line_summary(write_session):
    text = repr(load_quietly(write_session()))
    assert text.startswith("<Sessions 1 [") and "12 requests" in text and "\n" not in text


# ------------------------------------------------------------------ contracts

def test_every_field_name_the_loader_reads_is_in_the_schema():
    assert set(load_module._HEADER_COLUMNS) <= set(schema.FIELDS["header"])
    assert set(load_module._SUMMARY_COLUMNS) <= set(schema.FIELDS["summary"])
    for _, before, after in load_module._REQUEST_DELTAS:
        assert {before, after} <= set(schema.REQUEST_FIELDS)
    assert set(load_module._CATEGORICAL) <= set(schema.REQUEST_FIELDS)
    assert set(load_module._RECORD_FRAMES) <= set(schema.KINDS)


def test_public_names_are_sorted_and_exported():
    for module in (analysis, load_module):
        assert module.__all__ == sorted(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name)


def test_without_pandas_the_package_fails_with_the_install_line():
    code = ("import sys; sys.modules['pandas'] = None\n"
            "try:\n    import leakyspanner.analysis\n"
            "except ImportError as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MissingExtraError" in out and "pip install 'leakyspanner[analysis]'" in out


def test_bulk_and_line_by_line_parsing_give_the_same_requests(write_session, synth, tmp_path):
    clean = write_session()
    damaged = tmp_path / "damaged" / clean.name
    damaged.parent.mkdir()
    damaged.write_bytes(clean.read_bytes() + b'["r",oops]\n')  # forces the slow path
    with pytest.warns(LoadWarning):
        slow = load(damaged)
    pd.testing.assert_frame_equal(slow.requests, load_quietly(clean).requests)


def test_load_leaves_garbage_collection_as_it_found_it(write_session):
    import gc

    path = write_session()
    load_quietly(path)
    assert gc.isenabled()
    gc.disable()
    try:
        load_quietly(path)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_load_of_a_path_object_and_a_string_agree(write_session):
    path: Path = write_session()
    assert load_quietly(path).session_ids == load_quietly(str(path)).session_ids


def test_importing_the_package_pulls_in_no_plotting_library():
    code = "import sys, leakyspanner.analysis; print(sorted(m for m in ('matplotlib', 'ipywidgets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_jsonl_without_a_readable_header_falls_back_to_its_human_log(tmp_path):
    jsonl = tmp_path / "leakyspanner_20240301_120000.jsonl"
    jsonl.write_text('{"kind":"hea')
    jsonl.with_suffix(schema.LOG_SUFFIX).write_text(
        "  LeakySpanner v0.2.0\n  started  : 2024-03-01T12:00:00\n"
        "[12:00:05] RSS=101.0MB  VMS=300.0MB  delta=+1.0MB  GC=(1, 2, 3)\n")
    with pytest.warns(LoadWarning, match="read leakyspanner_20240301_120000.log instead"):
        loaded = load(tmp_path)
    assert loaded.sessions["format"].tolist() == ["legacy-log"]
    assert len(loaded.samples) == 1
