"""The loader's door: values of the wrong shape are left out and reported by line, never a crash
or a wrong number; damaged headers and concatenated sessions are clear."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from leakyspanner import errors, schema
from leakyspanner.analysis import LoadWarning, Sessions, load

YEAR_9999 = 253402300799.0


def _kind_at(records: list[Any], kind: str, nth: int = 0) -> int:
    return [i for i, r in enumerate(records) if isinstance(r, dict) and r.get("kind") == kind][nth]


def _request_at(records: list[Any], nth: int = 0) -> int:
    return [i for i, r in enumerate(records) if isinstance(r, list)][nth]


def _load_warned(path: Path) -> tuple[Sessions, str]:
    with pytest.warns(LoadWarning) as caught:
        loaded = load(path)
    assert len(caught) == 1
    return loaded, str(caught[0].message)


@pytest.mark.parametrize(("kind", "field", "value"), [
    ("endpoint_interval", "route", ["/a"]), ("endpoint_interval", "method", {"GET": 1}),
    ("summary", "endpoints", 5), ("snapshot", "sites", 5), ("snapshot", "traces", 5),
    ("sample", "gc_count", 5), ("sample", "asyncio_tasks_by_coro", [1, 2]), ("header", "config", "fast"),
    ("sample", "rss_bytes", "123"), ("sample", "rss_bytes", True), ("sample", "rss_bytes", -4096),
    ("sample", "ts", YEAR_9999), ("endpoint_interval", "calls", 1.5), ("alert", "growth_bytes", [1]),
])
def test_a_value_of_the_wrong_shape_is_left_out_and_reported_by_line(synth, tmp_path, kind, field, value):
    records = synth.session(alert_after=0)
    at = _kind_at(records, kind)
    records[at][field] = value
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_shape.jsonl", records))
    assert f"line {at + 1} ({kind} {field}: " in message and str(tmp_path) in message
    assert len(loaded.samples) == 4 and len(loaded.requests) == 12  # the rest of the file is there


@pytest.mark.parametrize(("position", "value"), [
    (schema.REQUEST_FIELDS.index("route") + 1, ["/nested"]),
    (schema.REQUEST_FIELDS.index("method") + 1, {"m": 1}),
    (schema.REQUEST_FIELDS.index("rss_after_bytes") + 1, [[1, 2]]),
    (schema.REQUEST_FIELDS.index("status") + 1, "200"),
    (schema.REQUEST_FIELDS.index("ts") + 1, YEAR_9999),
])
def test_a_request_value_of_the_wrong_shape_is_null_and_reported(synth, tmp_path, position, value):
    records = synth.session()
    at = _request_at(records, 1)
    records[at][position] = value
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_request.jsonl", records))
    name = schema.REQUEST_FIELDS[position - 1]
    assert f"line {at + 1} (request {name}: " in message
    assert len(loaded.requests) == 12 and loaded.requests[name].isna().sum() >= 1


def test_an_rss_of_1e30_is_null_not_int64_min(synth, tmp_path):
    records = synth.session()
    records[_kind_at(records, "sample", 1)]["rss_bytes"] = 1e30
    records[_kind_at(records, "sample", 2)]["rss_bytes"] = 2 ** 63
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_huge.jsonl", records))
    rss = loaded.samples["rss_bytes"]
    assert rss.isna().tolist() == [False, True, True, False]
    assert (rss.dropna() > 0).all()
    assert "1e+30 is not a whole number" in message


def test_numbers_written_as_strings_are_reported_not_silently_dropped(synth, tmp_path):
    records = synth.session()
    for i in range(4):
        records[_kind_at(records, "sample", i)]["rss_bytes"] = str(records[_kind_at(records, "sample", i)]["rss_bytes"])
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_strings.jsonl", records))
    assert message.count("sample rss_bytes: '") == 4
    assert loaded.samples["rss_bytes"].isna().all()


def test_a_timestamp_in_year_9999_loads_as_null(synth, tmp_path):
    records = synth.session()
    records[0]["start_ts"] = YEAR_9999
    records[_kind_at(records, "event")]["ts"] = YEAR_9999
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_9999.jsonl", records))
    assert "lines 1 (header start_ts: " in message
    assert loaded.sessions["start"].isna().all() and loaded.events["time"].isna().all()


def test_header_fields_of_the_wrong_type_are_reported_and_the_session_still_loads(synth, tmp_path):
    records = synth.session()
    records[0].update(session_id=["x"], pid={"a": 1}, host=5, start_ts="yesterday", level=None)
    path = synth.write(tmp_path / "leakyspanner_header.jsonl", records)
    loaded, message = _load_warned(path)
    assert loaded.session_ids == [path.stem]  # the file name stands in for the bad id
    for field in ("session_id", "pid", "host", "start_ts"):
        assert f"(header {field}: " in message
    assert pd.isna(loaded.sessions["pid"].iloc[0]) and pd.isna(loaded.sessions["host"].iloc[0])


def test_a_record_without_a_kind_is_skipped(synth, tmp_path):
    records = synth.session()
    records.insert(2, {"ts": 1.0})
    records.insert(3, {"kind": ["sample"], "ts": 1.0})
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_kindless.jsonl", records))
    assert "lines 3 (not a record: no kind), 4 (not a record: no kind)" in message
    assert len(loaded.samples) == 4


def test_a_bad_site_row_is_dropped_and_the_others_kept(synth, tmp_path):
    records = synth.session(samples=1)
    at = _kind_at(records, "snapshot")
    records[at]["sites"].insert(0, ["app/x.py", "twelve", 1, 1, 0, 0])
    records[at]["sites"].append("not a row")
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_sites.jsonl", records))
    assert f"line {at + 1} (snapshot sites: entry 0: line 'twelve' is not a whole number" in message
    assert "(2 of 4 entries)" in message
    assert loaded.sites["site"].tolist() == ["app/leak.py:12", "app/ok.py:3"]


def test_a_trace_with_bad_frames_is_dropped(synth, tmp_path):
    records = synth.session(samples=1)
    at = _kind_at(records, "snapshot")
    records[at]["traces"].append({"size_bytes": 10, "count": 1, "frames": [["a.py", [1]]]})
    records[at]["traces"].append({"size_bytes": -10, "count": 1, "frames": []})
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_traces.jsonl", records))
    assert f"line {at + 1} (snapshot traces: entry 1: frames entry 0: " in message
    assert loaded.traces["size_bytes"].tolist() == [4096]


@pytest.mark.parametrize("version", ["99", 4.0, True, -1, [3]])
def test_a_schema_version_that_is_not_a_whole_number_is_a_clear_error(synth, tmp_path, version):
    records = synth.session()
    records[0]["schema_version"] = version
    path = synth.write(tmp_path / "leakyspanner_version.jsonl", records)
    with pytest.raises(errors.NotALogError, match="invalid header on line 1: schema_version") as info:
        load(path)
    assert str(path) in str(info.value)


def test_a_newer_version_in_a_second_header_is_refused(synth, tmp_path):
    first, second = synth.session(), synth.session(start_ts=synth.START_TS + 100)
    second[0]["schema_version"] = schema.SCHEMA_VERSION + 1
    path = synth.write(tmp_path / "leakyspanner_newer.jsonl", first + second)
    with pytest.raises(errors.SchemaVersionError, match=str(path)):
        load(path)


def test_two_sessions_concatenated_in_one_file_load_as_two(synth, tmp_path):
    leaking = synth.session(pid=1, growth_per_sample_bytes=synth.MB)
    flat = synth.session(pid=2, start_ts=synth.START_TS + 3600, growth_per_sample_bytes=0,
                         request_fields=list(reversed(schema.REQUEST_FIELDS)), requests_per_sample=5)
    path = synth.write(tmp_path / "leakyspanner_two.jsonl", leaking + flat)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load(path)
    assert loaded.session_ids == [leaking[0]["session_id"], flat[0]["session_id"]]
    by_session = loaded.requests.groupby("session_id").size().to_dict()
    assert by_session == {leaking[0]["session_id"]: 12, flat[0]["session_id"]: 20}
    samples = loaded.samples.groupby("session_id")["rss_bytes"].agg(["min", "max"])
    assert samples.loc[flat[0]["session_id"]].tolist() == [100 * synth.MB, 100 * synth.MB]
    assert loaded.sessions["complete"].tolist() == [True, True]
    second = loaded.requests[loaded.requests["session_id"] == flat[0]["session_id"]]
    assert second["route"].notna().all() and (second["status"] >= 200).all()  # read by its own header's order


def test_a_second_header_of_another_format_is_a_corrupt_line(synth, tmp_path):
    records = synth.session()
    records.insert(3, {"kind": "header", "format": "something-else"})
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_foreign.jsonl", records))
    assert len(loaded) == 1 and "line 4 (a header without format" in message


def test_a_utf8_byte_order_mark_is_accepted(write_session):
    path = write_session()
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load(path)
    assert len(loaded.requests) == 12 and len(loaded.samples) == 4


def test_one_line_holding_two_request_arrays_is_a_corrupt_line(synth, tmp_path):
    records = synth.session()
    at = _request_at(records)
    lines = [json.dumps(r, separators=(",", ":")) for r in records]
    lines[at] = lines[at] + "," + lines[at]
    path = tmp_path / "leakyspanner_two_values.jsonl"
    path.write_text("\n".join(lines) + "\n")
    loaded, message = _load_warned(path)
    assert f"line {at + 1} (not valid JSON)" in message
    assert len(loaded.requests) == 11


def test_one_line_holding_two_objects_is_a_corrupt_line(synth, tmp_path):
    records = synth.session()
    at = _kind_at(records, "sample")
    lines = [json.dumps(r) for r in records]
    lines[at] = lines[at] + " " + lines[at]
    path = tmp_path / "leakyspanner_two_objects.jsonl"
    path.write_text("\n".join(lines) + "\n")
    loaded, message = _load_warned(path)
    assert f"line {at + 1} (not valid JSON)" in message and len(loaded.samples) == 3


def test_config_values_of_the_wrong_type_are_reported(synth, tmp_path):
    records = synth.session()
    records[0]["config"] = {"interval_seconds": "5", "leak_threshold_mb": -1.0, "level": "mid"}
    loaded, message = _load_warned(synth.write(tmp_path / "leakyspanner_config.jsonl", records))
    assert "(header config: key 'interval_seconds': '5' is not seconds" in message
    assert loaded.sessions[["interval_seconds", "leak_threshold_mb"]].isna().all(axis=None)


def test_the_field_types_cover_every_field_of_every_kind():
    import importlib

    load_module = importlib.import_module("leakyspanner.analysis.load")
    for kind, fields in schema.FIELDS.items():
        assert set(load_module._FIELD_TYPES[kind]) == set(fields), kind
    assert set(schema.REQUEST_FIELDS) <= set(load_module._FIELD_TYPES["request"])
    assert load_module._FIELD_TYPES["sample"]["rss_bytes"] == "count"
    assert load_module._FIELD_TYPES["sample"]["rss_delta_bytes"] == "int"
    sites = load_module._FIELD_TYPES["snapshot"]["sites"]
    assert sites[:2] == ("rows", "site_fields") and tuple(sites[2]) == schema.SITE_FIELDS
    assert sites[2]["size_diff_bytes"] == "int" and sites[2]["size_bytes"] == "count"  # signed only if a diff


def test_heap_rows_of_the_wrong_shape_are_nulled_not_fatal(tmp_path):
    """A heap record's nested rows: a number where text belongs, negative or huge numbers."""
    import json as _json

    from leakyspanner import schema as _schema
    from leakyspanner.analysis import load as _load

    lines = [
        {"kind": "header", "format": _schema.FORMAT_NAME, "schema_version": _schema.SCHEMA_VERSION,
         "session_id": "s", "start_ts": 1_700_000_000.0},
        {"kind": "heap", "ts": 1_700_000_001.0, "seq": 0, "engine": "sampler",
         "endpoints": [["GET", 7, 10, 1, 1], ["GET", "/b", 5, 2, 1]],
         "sites": [["GET", "/b", 3, 3, "f", None, None, 100, 1, 1]]},
        {"kind": "routes", "ts": 1_700_000_001.0, "routes": [{"method": 5, "route": "/b", "first_line": True}]},
    ]
    path = tmp_path / "leakyspanner_20231114_221320.jsonl"
    path.write_text("".join(_json.dumps(line) + "\n" for line in lines))
    sessions = _load(path, warn=False)
    rows = sessions.heap_endpoints
    assert list(rows["route"].astype(str)) == ["/b"] and rows["size_bytes"].iloc[0] == 5  # the bad row is gone
    assert sessions.heap_sites["file"].isna().all() or not len(sessions.heap_sites)
    assert sessions.routes["method"].isna().all() and sessions.routes["first_line"].isna().all()
    assert sessions.skipped or sessions.heap_sites["file"].isna().all()
