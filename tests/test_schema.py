"""The schema describes every field as data, and the human log's lines as one table."""

from __future__ import annotations

import importlib
import string
from pathlib import Path
from typing import get_args

import pytest

from leakyspanner import schema

# The on-disk format of schema version 4, as released: field names are JSON keys and must not move.
_VERSION_4_KEYS = {
    "header": "kind format schema_version session_id leakyspanner_version pid host python platform level config "
              "start_ts baseline_rss_bytes baseline_vms_bytes cgroup_memory_limit_bytes memory_reader "
              "request_fields request_records heap_engine heap_engine_note sample_bytes",
    "sample": "kind ts seq rss_bytes vms_bytes rss_delta_bytes gc_count gc_collections gc_collected gc_uncollectable "
              "gc_garbage tracing traced_bytes traced_peak_bytes threads open_fds asyncio_tasks "
              "asyncio_tasks_by_coro inflight requests_total requests_dropped internal_errors cgroup_memory_bytes "
              "heap_live_bytes",
    "endpoint_interval": "kind ts_start ts seq method route calls errors duration_s_sum duration_s_max rss_measured "
                         "rss_delta_bytes_sum rss_delta_bytes_max traced_delta_bytes_sum",
    "snapshot": "kind ts seq traced_bytes blocks sites_total frames cost_s take_s stall_s mode engine site_fields "
                "sites traces",
    "heap": "kind ts seq engine sample_bytes max_frames live_bytes live_samples samples_total samples_dropped "
            "engine_bytes cost_s endpoint_fields endpoints site_fields sites",
    "routes": "kind ts routes",
    "alert": "kind ts alert rss_bytes baseline_rss_bytes growth_bytes threshold_bytes",
    "event": "kind ts event detail",
    "summary": "kind ts duration_s baseline_rss_bytes peak_rss_bytes final_rss_bytes net_growth_bytes samples "
               "requests_total request_records requests_dropped internal_errors endpoints",
}
_SIGNED_WORDS = ("delta", "diff", "growth")


def _all_fields():
    """(where, name, field) for every field, nested row and object fields included."""
    groups = {f"{kind} record": fields for kind, fields in schema.FIELDS.items()}
    groups.update({"request": schema.REQUEST, "snapshot site": schema.SITE, "heap endpoint": schema.HEAP_ENDPOINT,
                   "heap site": schema.HEAP_SITE, "trace": schema.TRACE, "route": schema.ROUTE,
                   "summary endpoint": schema.SUMMARY_ENDPOINT})
    return [(where, name, f) for where, fields in groups.items() for name, f in fields.items()]


def test_the_json_keys_of_version_4_are_all_still_there():
    assert schema.SCHEMA_VERSION == 4
    for kind, keys in _VERSION_4_KEYS.items():  # keys may be added (readers ignore unknown ones), never renamed
        assert [name for name in schema.FIELDS[kind] if name in keys.split()] == keys.split(), kind
    assert schema.REQUEST_FIELDS == ("ts", "method", "route", "status", "duration_s", "rss_before_bytes",
                                     "rss_after_bytes", "traced_before_bytes", "traced_after_bytes",
                                     "inflight_start", "inflight_end")
    assert schema.SITE_FIELDS == ("file", "line", "size_bytes", "count", "size_diff_bytes", "count_diff")
    assert schema.KINDS[-1] == "request" and set(schema.KINDS[:-1]) == set(_VERSION_4_KEYS)


def test_every_field_is_described_by_data_that_fits_together():
    for where, name, f in _all_fields():
        assert isinstance(f, schema.Field), (where, name)
        assert f.type in get_args(schema.FieldType), (where, name)
        assert f.unit is None or f.unit in get_args(schema.Unit), (where, name)
        assert (f.items is not None) == (f.type == "list" or (f.type == "object" and f.items is not None)), name
        assert f.length is None or (f.type == "list" and f.items == "int"), (where, name)
        assert (f.keys is not None) == (f.items in ("row", "object")), (where, name)
        assert not f.choices or f.type == "str", (where, name)
        assert 1 <= f.since <= schema.SCHEMA_VERSION, (where, name)


def test_a_rows_columns_are_named_by_a_list_field_of_the_same_record():
    rows = [(kind, name, f) for kind, fields in schema.FIELDS.items() for name, f in fields.items() if f.items == "row"]
    assert len(rows) == 3
    for kind, name, f in rows:
        names = schema.FIELDS[kind][f.row_names]
        assert names.type == "list" and names.items == "str", (kind, name)


def test_units_and_signs_agree_with_the_names():
    """Units live in names (``*_bytes``, ``*_s``, ``ts``); only differences may be negative."""
    for where, name, f in _all_fields():
        assert (f.unit == "bytes") == ("_bytes" in name), (where, name)
        assert (f.unit == "unix_s") == (name in ("ts", "ts_start") or name.endswith("_ts")), (where, name)
        seconds = name.endswith("_s") or "_s_" in name
        assert (f.unit == "s") == (seconds and f.unit != "unix_s" and f.type == "float"), (where, name)
        if f.type == "int" or (f.type == "list" and f.items == "int"):
            assert f.signed == any(word in name for word in _SIGNED_WORDS), (where, name)
        else:
            assert not f.signed, (where, name)


def test_editing_the_documentation_of_a_field_never_changes_what_the_loader_checks(monkeypatch):
    load = importlib.import_module("leakyspanner.analysis.load")
    before = load._field_types(), {kind: load._record_spec(kind) for kind in schema.FIELDS}
    prose = "int|null, list[int] of 9, the; per: object -> str"  # what types were once parsed from
    monkeypatch.setattr(schema, "FIELDS", {kind: {name: f._replace(doc=prose) for name, f in fields.items()}
                                           for kind, fields in schema.FIELDS.items()})
    assert (load._field_types(), {kind: load._record_spec(kind) for kind in schema.FIELDS}) == before


def test_a_fields_type_and_sign_decide_the_loaders_check(monkeypatch):
    load = importlib.import_module("leakyspanner.analysis.load")
    assert load._FIELD_TYPES["sample"]["rss_bytes"] == "count"
    assert load._FIELD_TYPES["sample"]["rss_delta_bytes"] == "int"
    assert load._FIELD_TYPES["endpoint_interval"]["duration_s_sum"] == "seconds"
    assert load._FIELD_TYPES["sample"]["ts"] == "ts"
    assert load._FIELD_TYPES["sample"]["gc_count"] == ("list", "count")
    assert load._FIELD_TYPES["routes"]["routes"] == ("records", {"method": "str", "route": "str", "file": "str",
                                                                 "first_line": "count", "last_line": "count",
                                                                 "function": "str"})
    fields = {**schema.FIELDS, "sample": {**schema.FIELDS["sample"],
                                          "rss_bytes": schema.FIELDS["sample"]["rss_bytes"]._replace(signed=True)}}
    monkeypatch.setattr(schema, "FIELDS", fields)
    assert load._field_types()["sample"]["rss_bytes"] == "int"


# ------------------------------------------------------------------ the human log's table

def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@pytest.mark.parametrize("kind", list(schema.LOG_LINES))
def test_every_log_line_names_the_shape_of_each_of_its_values(kind):
    line = schema.LOG_LINES[kind]
    named = _placeholders(line.template).union(*map(_placeholders, line.tails.values()))
    assert named == set(line.values), kind
    assert set(line.tails) <= set(line.values), kind
    assert set(line.values.values()) <= set(schema.LOG_VALUES), kind
    assert line.record is None or line.record in schema.KINDS, kind


def test_the_writer_and_the_reader_cover_every_line_kind_of_the_table():
    from leakyspanner.analysis import legacy
    from leakyspanner.capture import humanlog

    read = {kind for kind in schema.LOG_LINES if callable(getattr(legacy._Reader, f"_on_{kind}", None))}
    assert read == set(schema.LOG_LINES)
    assert set(legacy._HEADER_KINDS + legacy._BODY_KINDS + legacy._SUMMARY_KINDS + ("allocation",)) == read
    source = Path(humanlog.__file__).read_text(encoding="utf-8")
    written = {kind for kind in schema.LOG_LINES if f'_format("{kind}"' in source}
    assert written == set(schema.LOG_LINES)

