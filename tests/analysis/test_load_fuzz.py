"""Property-based fuzzing of the loader's door: arbitrary JSON in any field of any record.

Each example starts from a small valid session (every record kind of the schema
present), puts arbitrary JSON values into one to three fields, writes the file
and loads it. What must hold: a loaded ``Sessions`` (or a ``LeakyspannerError``
naming the path), every value of the wrong shape reported with its file and
line, and no column holding a number outside its field's range.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakyspanner import errors, schema
from leakyspanner.analysis import LoadWarning, Sessions, load
from leakyspanner.analysis.diagnose import diagnose


def _session_builders() -> Any:
    """This directory's conftest by path: ``import conftest`` finds whichever conftest pytest loaded last."""
    spec = importlib.util.spec_from_file_location("_analysis_builders", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_builders = _session_builders()
blank, synthetic_session, write_records = _builders.blank, _builders.synthetic_session, _builders.write_records

_EDGE_NUMBERS = [0, -1, 2 ** 53 + 1, 2 ** 63, -(2 ** 63) - 1, 10 ** 30, 1e30, -1e30, 1.5, 253402300799.0, 1e308,
                 math.inf, -math.inf, math.nan]
_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
            | st.floats() | st.sampled_from(_EDGE_NUMBERS) | st.text(max_size=6)
            | st.sampled_from(["123", "1e30", "GET", "", "header", "\x1b[2J"]))
JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
_SIGNED = ("delta", "diff", "growth")


def _base_session() -> list[Any]:
    """The smallest session that still has a record of every kind the schema knows."""
    records = synthetic_session(samples=2, requests_per_sample=2, alert_after=0)
    present = {r["kind"] for r in records if isinstance(r, dict)}
    summary = records.pop()
    for kind in schema.FIELDS:
        if kind not in present:  # kinds the synthetic session does not write yet
            records.append(blank(kind, ts=records[0]["start_ts"] + 3))
    records.append(summary)
    return records


BASE = _base_session()


def _head(kind: str, name: str) -> str:
    return schema.FIELDS[kind][name].type


def _obviously_wrong(head: str, name: str, value: Any) -> bool:
    """A value no reading of the field's schema description admits (the test's own oracle)."""
    if value is None:
        return False
    if head.startswith(("int", "float")):
        if isinstance(value, (list, dict, str, bool)):
            return True
        if not math.isfinite(value):
            return True
        signed = any(word in name for word in _SIGNED)
        return abs(value) >= 2 ** 63 or (value < 0 and not signed and head.startswith("int"))
    if head.startswith(("str", '"')):
        return not isinstance(value, str)
    if head.startswith("bool"):
        return not isinstance(value, bool)
    if head.startswith(("list", "object")):
        return not isinstance(value, (list, dict))
    return False


def _request_head(name: str) -> str:
    return "str" if name in ("method", "route") else "float" if name == "ts" or name.endswith("_s") else "int"


_FIELD_NAMES = {kind: sorted(fields) for kind, fields in schema.FIELDS.items()}
#: (record, field or request position, value) triples; drawn at once, cheaper than a draw per choice.
CHANGES = st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 63), JSON), min_size=1, max_size=3)


def _mutate(records: list[Any], changes: list[tuple[int, int, Any]]) -> list[tuple[int, str, Any]]:
    """Put arbitrary JSON into 1-3 fields; (line, field, value) of each, last write wins."""
    changed: dict[tuple[int, str], Any] = {}
    for index, choice, value in changes:
        record = records[index]
        if isinstance(record, list):
            position = 1 + choice % (len(record) - 1)
            record[position] = value
            changed[(index, schema.REQUEST_FIELDS[position - 1])] = value
        else:
            names = _FIELD_NAMES[BASE[index]["kind"]]
            name = names[choice % len(names)]
            record[name] = value
            changed[(index, name)] = value
    return [(index + 1, name, value) for (index, name), value in changed.items()]


def _expected_reports(records: list[Any], changes: list[tuple[int, str, Any]]) -> list[tuple[int, str]]:
    """(line, field) of changes the loader must report, leaving out those whose meaning moved."""
    moved = {line for line, name, _ in changes if name == "kind"}  # the record is another kind now
    request_fields_changed = any(name == "request_fields" for _, name, _ in changes)
    expected = []
    for line, name, value in changes:
        record = records[line - 1]
        if line in moved or name in ("kind", "format", "schema_version", "request_fields", "site_fields",
                                     "endpoint_fields"):
            continue
        if isinstance(record, list):
            if not request_fields_changed and _obviously_wrong(_request_head(name), name, value):
                expected.append((line, name))
        elif _obviously_wrong(_head(BASE[line - 1]["kind"], name), name, value):
            expected.append((line, name))
    return expected


def _check_ranges(sessions: Sessions) -> None:
    """No integer beyond +-2**53 (int64 holds it exactly), no negative byte count unless a difference."""
    for frame_name, frame in vars(sessions).items():
        if not isinstance(frame, pd.DataFrame) or not len(frame):
            continue
        for column, dtype in frame.dtypes.items():
            if dtype == "Int64":
                values = frame[column].array.to_numpy(dtype=np.float64, na_value=np.nan)
                assert not (np.abs(values) > 2 ** 53).any(), (frame_name, column, values)
                if "_bytes" in column and not any(word in column for word in _SIGNED):
                    assert not (values < 0).any(), (frame_name, column, values)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _load_mutated(drawn: list[tuple[int, int, Any]], directory: Path
                  ) -> tuple[Path, list[Any], list[tuple[int, str, Any]], Sessions | None, list[str]]:
    records = [list(r) if isinstance(r, list) else dict(r) for r in BASE]
    changes = _mutate(records, drawn)
    path = write_records(directory / "leakyspanner_20240101_000000_p1.jsonl", records)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sessions: Sessions | None = load(path)
        except errors.LeakyspannerError as exc:
            assert str(path) in str(exc)  # a clear error names the file
            sessions = None
    messages = [str(w.message) for w in caught if issubclass(w.category, LoadWarning)]
    assert len(messages) <= 1
    assert all(str(path) in m for m in messages)
    return path, records, changes, sessions, messages


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=CHANGES)
def test_arbitrary_json_in_any_field_loads_or_fails_clearly(drawn: list[tuple[int, int, Any]], fuzz_dir: Path) -> None:
    path, records, changes, sessions, messages = _load_mutated(drawn, fuzz_dir)
    if sessions is None:
        return
    reported = {(line, reason) for file, line, reason in sessions.skipped if file == str(path)}
    assert all(file == str(path) for file, _, _ in sessions.skipped)
    for line, name in _expected_reports(records, changes):
        assert any(number == line and (f" {name}: " in reason or reason == "not valid JSON")  # NaN, Infinity
                   for number, reason in reported), (line, name, reported)
    if sessions.skipped:
        assert messages and "line" in messages[0]
    _check_ranges(sessions)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=CHANGES)
def test_diagnose_takes_whatever_the_loader_lets_through(drawn: list[tuple[int, int, Any]], fuzz_dir: Path) -> None:
    _, _, _, sessions, _ = _load_mutated(drawn, fuzz_dir)
    if sessions is None:
        return
    for session_id in sessions.session_ids:
        verdict = diagnose(sessions, session_id)
        assert verdict.status
