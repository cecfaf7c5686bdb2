"""Read leakyspanner sessions into tidy pandas DataFrames.

A session's ``.jsonl`` is the source of truth; its human ``.log`` is read only
when no ``.jsonl`` with the same stem sits next to it (sessions from 0.1.x left
nothing else). Bad lines never cost the rest of a file: they are skipped,
listed in :attr:`Sessions.skipped` and reported in one :class:`LoadWarning`.

What bad input gives: every value passes a typed check at the door (types
from :data:`leakyspanner.schema.FIELDS`), so a value of the wrong shape (a list
where a number belongs, a number written as a string, a bool for an int, a
non-finite or out-of-range number, a timestamp past 2242) is left out as null,
an entry of a nested list that is not of its type is dropped, and each is
reported with its file and line in the same warning. No integer column ever
holds a value beyond +-2**53, and fields that cannot be negative (sizes,
counts, durations) never are. A header that is not ours, or whose
``schema_version`` is not a whole number, is a :class:`~leakyspanner.errors.NotALogError`
naming the path; a newer version a :class:`~leakyspanner.errors.SchemaVersionError`.
A second header in one file (two sessions concatenated) starts a second
session: the file loads as two. A UTF-8 byte order mark is ignored.

Column types: integers are nullable ``Int64`` (a missing key is null), floats
``float64``, text ``str``, ``method``/``route`` categorical, ``time``/``start``
``datetime64[ns, UTC]``. ``ts`` stays Unix seconds and ``elapsed_s`` counts
from the session's ``start_ts``.
"""

from __future__ import annotations

import bisect
import codecs
import gc
import glob
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from itertools import chain, compress, repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leakyspanner import discovery, errors, schema
from leakyspanner.analysis import legacy
from leakyspanner.progress import progress

_loads: Callable[[bytes], Any]
try:  # orjson, when installed, parses the bulk of request records faster
    from orjson import loads as _loads
except ImportError:
    _loads = json.loads

__all__ = ["LoadWarning", "Sessions", "load"]

_Source = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]

#: a nested field's rows, checked: column name -> values (float64 for numbers), and each record's row count
_RowColumns = tuple[dict[str, Any], list[int]]
_STR = pd.Series([], dtype="str").dtype  # StringDtype on pandas 3, object on pandas 2
_MB = 1024 * 1024
_CHUNK_LINES = 4096
_SHOWN_LINES = 10
_REQUEST_PREFIX = b'["' + schema.REQUEST_TAG.encode() + b'"'
_JSONL, _LEGACY = "jsonl", "legacy-log"

# The few field names the loader gives meaning to; tests check each against the schema.
_HEADER_COLUMNS = ("schema_version", "pid", "host", "python", "platform", "level",
                   "leakyspanner_version", "baseline_rss_bytes", "cgroup_memory_limit_bytes")
_SUMMARY_COLUMNS = ("duration_s", "peak_rss_bytes", "final_rss_bytes", "net_growth_bytes",
                    "requests_total", "requests_dropped", "internal_errors")
_CATEGORICAL = ("method", "route")
_REQUEST_DELTAS = (("rss_delta_bytes", "rss_before_bytes", "rss_after_bytes"),
                   ("traced_delta_bytes", "traced_before_bytes", "traced_after_bytes"))


class LoadWarning(UserWarning):
    """Some lines of a session could not be read; the rest loaded."""


# ---------------------------------------------------------------- column specs
# A spec is a list of (column, type, key): ``key`` says where a record keeps the
# value (a field name, or (field, index) for lists expanded into columns).

def _column_type(name: str, f: schema.Field) -> str | None:
    """A scalar field's column type; None for lists and objects (they get frames of their own)."""
    if name in _CATEGORICAL:
        return "category"
    return f.type if f.type in ("int", "float", "bool", "str") else None


def _record_spec(kind: str) -> list[tuple[str, str, Any]]:
    """Columns for a record kind, from the schema's fields so new scalar fields just appear."""
    spec: list[tuple[str, str, Any]] = [("session_id", "str", None), ("ts", "float", "ts"),
                                        ("time", "time", None), ("elapsed_s", "float", None)]
    for name, f in schema.FIELDS[kind].items():
        if name in ("kind", "ts"):
            continue
        if f.type == "list" and f.items == "int" and f.length is not None:  # gc counts: a column each
            spec += [(f"{name}_{i}", "int", (name, i)) for i in range(f.length)]
        elif (column := _column_type(name, f)) is not None:
            spec.append((name, column, name))
    return spec


def _row_spec(fields: dict[str, schema.Field], skip: Sequence[str] = ()) -> list[tuple[str, str, Any]]:
    """Columns for the rows of a nested list, in the schema's order."""
    return [(name, _column_type(name, f) or "str", None) for name, f in fields.items() if name not in skip]


_TIMED = [("ts", "float", None), ("elapsed_s", "float", None)]
_SPECS: dict[str, list[tuple[str, str, Any]]] = {
    "sessions": [
        ("session_id", "str", None), ("path", "str", None), ("format", "str", None),
        ("schema_version", "int", None), ("pid", "int", None), ("host", "str", None),
        ("python", "str", None), ("platform", "str", None), ("level", "str", None),
        ("leakyspanner_version", "str", None), ("start", "time", None), ("start_ts", "float", None),
        ("end_ts", "float", None), ("duration_s", "float", None),
        *[(c, "int", None) for c in ("baseline_rss_bytes", "peak_rss_bytes", "final_rss_bytes",
                                     "net_growth_bytes", "requests_total", "requests_dropped",
                                     "internal_errors", "cgroup_memory_limit_bytes")],
        ("complete", "strictbool", None), ("interval_seconds", "float", None),
        ("leak_threshold_mb", "float", None),
    ],
    "samples": _record_spec("sample"),
    "tasks": [("session_id", "str", None), ("ts", "float", None), ("elapsed_s", "float", None),
              ("coro", "str", None), ("tasks", "int", None)],
    "intervals": _record_spec("endpoint_interval"),
    "snapshots": _record_spec("snapshot"),
    "sites": [("session_id", "str", None), ("snapshot_seq", "int", None), *_TIMED,
              ("file", "str", None), ("line", "int", None), ("site", "str", None),
              *_row_spec(schema.SITE, skip=("file", "line"))],
    "traces": [("session_id", "str", None), ("snapshot_seq", "int", None), ("ts", "float", None),
               ("elapsed_s", "float", None), ("rank", "int", None), ("size_bytes", "int", None),
               ("count", "int", None), ("site", "str", None), ("traceback", "str", None)],
    "alerts": _record_spec("alert"),
    "events": _record_spec("event"),
    "endpoints": [("session_id", "str", None), *_row_spec(schema.SUMMARY_ENDPOINT)],
    "heaps": _record_spec("heap"),
    "heap_endpoints": [("session_id", "str", None), ("heap_seq", "int", None), *_TIMED,
                       *_row_spec(schema.HEAP_ENDPOINT)],
    "heap_sites": [("session_id", "str", None), ("heap_seq", "int", None), *_TIMED,
                   *_row_spec(schema.HEAP_SITE), ("site", "str", None), ("app_site", "str", None)],
    # method and route stay text here: one row per route, nothing to group
    "routes": [("session_id", "str", None),
               *[(n, "str" if f.type == "str" else "int", None) for n, f in schema.ROUTE.items()]],
}
_REQUEST_SPEC = [("session_id", "str"), *[(n, _column_type(n, f) or "str") for n, f in schema.REQUEST.items()],
                 ("time", "time"), ("elapsed_s", "float"),
                 *[(delta, "int") for delta, _, _ in _REQUEST_DELTAS]]
# Record kind -> frame, for kinds that become one row per record.
_RECORD_FRAMES = {"sample": "samples", "endpoint_interval": "intervals", "snapshot": "snapshots",
                  "alert": "alerts", "event": "events", "heap": "heaps"}


# ------------------------------------------------------------- typed columns

def _floats(values: Sequence[Any]) -> np.ndarray:
    try:
        return np.array(values, dtype=np.float64)  # None becomes NaN
    except (TypeError, ValueError):
        coerced = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
        floats: np.ndarray = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
        return floats


@dataclass(frozen=True)
class _Coded:
    """A text column already factorized: ``labels[codes[i]]``, None where the code is -1."""

    codes: np.ndarray
    labels: list[str]

    def tolist(self) -> list[Any]:
        values: list[Any] = np.array([*self.labels, None], dtype=object)[self.codes].tolist()  # -1: the None
        return values


def _text_codes(values: Sequence[Any]) -> _Coded:
    """A column the door found to be text (or None), factorized."""
    factorized = _factorized_text(values)
    if factorized is None:
        raise ValueError("a checked text column holds something other than text or None")
    return _Coded(*factorized)


def _column(values: Any, kind: str) -> Any:
    """One typed column; values of the wrong type become null rather than failing the load."""
    if isinstance(values, _Coded):
        if kind == "category":
            return _category(values.codes, values.labels)
        if kind == "str":
            return pd.array(values.labels, dtype=_STR).take(values.codes, allow_fill=True)
        values = values.tolist()
    if kind == "float":
        return _floats(values)
    if kind == "int":
        # Through float64: exact below 2**53 bytes, and null-safe in one vectorised pass.
        as_float = _floats(values)
        missing = ~(np.abs(as_float) <= 2.0 ** 53)  # NaN, inf and what int64 cannot hold exactly
        return pd.arrays.IntegerArray(np.where(missing, 0, np.rint(as_float)).astype(np.int64), missing)
    if kind == "time":
        return _times(_floats(values))
    if kind == "bool":
        return pd.array([v if isinstance(v, bool) else None for v in values], dtype="boolean")
    if kind == "strictbool":
        return np.array(values, dtype=bool)
    if kind == "category":
        return _categorical(values)
    factorized = _factorized_text(values)
    if factorized is not None:  # text repeats (files, functions): convert each distinct value once
        codes, uniques = factorized
        return pd.array(uniques, dtype=_STR).take(codes, allow_fill=True)
    return pd.array([v if v is None or isinstance(v, str) else str(v) for v in values], dtype=_STR)


def _factorized_text(values: Sequence[Any]) -> tuple[np.ndarray, list[str]] | None:
    """(codes, distinct strings) with None as -1, or None when anything but text and None is there."""
    objects = np.empty(len(values), dtype=object)
    objects[:] = values
    try:
        codes, uniques = pd.factorize(objects)
    except TypeError:  # a list or an object: not hashable, so not text
        return None
    labels = list(uniques)
    # factorize also takes NaN as missing: only None may be, so the counts must agree
    if not all(type(v) is str for v in labels) or int((codes < 0).sum()) != _nones(values):
        return None
    return codes, labels


def _times(seconds: np.ndarray) -> Any:
    """UTC datetimes from Unix seconds, rounded to the microsecond so float noise never shows."""
    micros = np.round(seconds * 1e6)
    valid = np.isfinite(micros) & (np.abs(micros) < 9.2e15)  # datetime64[ns] spans +-9.2e15 microseconds
    stamps = np.where(valid, micros, 0).astype(np.int64)
    stamps[~valid] = np.iinfo(np.int64).min  # NaT
    return pd.DatetimeIndex(stamps.view("datetime64[us]")).tz_localize("UTC").as_unit("ns").array


def _nones(values: Sequence[Any]) -> int:
    return values.count(None) if isinstance(values, (list, tuple)) else sum(v is None for v in values)


def _category(codes: np.ndarray, labels: list[str]) -> pd.Categorical:
    """A categorical with sorted categories from factorized text (None as -1)."""
    ranked = np.argsort(np.array(labels, dtype=object), kind="stable")
    remap = np.full(len(labels) + 1, -1, dtype=np.int64)  # the last slot is None's (-1)
    remap[ranked] = np.arange(len(ranked))
    categories = pd.Index([labels[i] for i in ranked], dtype=_STR)
    return pd.Categorical.from_codes(remap[codes] if len(codes) else codes, categories=categories)


def _categorical(values: Sequence[Any]) -> pd.Categorical:
    """A categorical with sorted categories."""
    factorized = _factorized_text(values)
    if factorized is not None:
        return _category(*factorized)
    lookup: dict[Any, int] = {}
    codes = np.array([lookup.setdefault(v, len(lookup)) for v in values], dtype=np.int64)
    labels = list(lookup)
    if not all(isinstance(label, str) for label in labels if label is not None):
        return pd.Categorical([v if v is None or isinstance(v, str) else str(v) for v in values])
    order = sorted((label, code) for code, label in enumerate(labels) if label is not None)
    remap = np.full(len(labels) + 1, -1, dtype=np.int64)  # None, and an empty column, map to -1
    remap[[code for _, code in order]] = np.arange(len(order))
    categories = pd.Index([label for label, _ in order], dtype=_STR)
    return pd.Categorical.from_codes(remap[codes] if len(codes) else codes, categories=categories)


def _frame(spec: Sequence[tuple[str, str, Any]], raw: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    data = {}
    for name, kind, _ in spec:
        data[name] = _column(raw["ts"] if name == "time" else raw[name], kind)  # time is typed from ts
    return pd.DataFrame(data, columns=[name for name, _, _ in spec], copy=False)


def _minus(a: Any, b: Any) -> float | None:
    real = (int, float)
    if isinstance(a, real) and isinstance(b, real) and not isinstance(a, bool):
        return a - b
    return None


def _value(record: dict[str, Any], key: Any) -> Any:
    if isinstance(key, tuple):
        values = record.get(key[0])
        return values[key[1]] if isinstance(values, list) and len(values) > key[1] else None
    return record.get(key)


# ------------------------------------------------------------------ the door
# Every value is checked against its field's type before it reaches a column. A
# value of the wrong shape or outside its field's range is left out (null) and
# reported with its line; a record without a kind is skipped. Types and ranges
# come from the schema's fields: ``ts`` (unit unix_s) is Unix seconds before 2242
# (datetime64[ns] ends in 2262), durations (unit s) are never negative, integers
# stay exact in float64 (|n| <= 2**53: integer columns are typed through
# float64), and no integer is negative unless its field is signed (a difference).

_MAX_INT = 2 ** 53
_MAX_TS = 2.0 ** 33
_RANGES = {"count": (0, _MAX_INT), "int": (-_MAX_INT, _MAX_INT), "amount": (0, _MAX_INT),
           "float": (-_MAX_INT, _MAX_INT), "seconds": (0.0, _MAX_TS), "ts": (0.0, _MAX_TS)}
_EXPECTED = {"count": "a whole number >= 0 below 2^53", "int": "a whole number within +-2^53",
             "amount": "a number >= 0", "float": "a finite number", "seconds": "seconds >= 0 below 2^33",
             "ts": "Unix seconds between 1970 and 2242", "str": "text", "bool": "true or false"}
_NUMBER_TYPES = {int, float, type(None)}
#: Keys of object fields the loader reads, and their checks; their other keys are the writer's business.
_READ_KEYS = {"config": {"interval_seconds": "seconds", "interval_s": "seconds", "leak_threshold_mb": "amount",
                         "leak_threshold_bytes": "count"}}


def _scalar_check(f: schema.Field) -> str:
    """The door's check for a number, text or bool field."""
    if f.type == "int":
        return "int" if f.signed else "count"
    if f.type == "float":
        return {"unix_s": "ts", "s": "seconds"}.get(f.unit or "", "float")
    return f.type


def _check(name: str, f: schema.Field) -> Any:
    """The door's check for a field: a scalar check's name, or a tuple for lists and objects."""
    if f.type == "list":
        if f.items == "row":
            return ("rows", f.row_names, {key: _check(key, item) for key, item in (f.keys or {}).items()})
        if f.items == "object":
            return ("records", {key: _check(key, item) for key, item in (f.keys or {}).items()})
        if f.items == "frame":
            return ("frames",)
        return ("list", "str" if f.items == "str" else "int" if f.signed else "count")
    if f.type == "object":
        return ("map", "count") if f.items == "int" else ("object", _READ_KEYS.get(name, {}))
    return _scalar_check(f)


def _field_types() -> dict[str, dict[str, Any]]:
    """Record kind -> field -> check: the one table the door checks against."""
    types = {kind: {name: _check(name, f) for name, f in fields.items()} for kind, fields in schema.FIELDS.items()}
    types["request"] = {name: _check(name, f) for name, f in schema.REQUEST.items()}
    types["request"].update((delta, "int") for delta, _, _ in _REQUEST_DELTAS)
    return types


_FIELD_TYPES = _field_types()


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return repr(value if len(value) <= 24 else value[:24] + "...")
    if isinstance(value, int) and value.bit_length() > 64:
        return "an integer beyond 64 bits"
    return repr(value)


def _why(value: Any, kind: Any) -> str | None:
    """None when ``value`` (not null) is of scalar type ``kind``, else why not."""
    if kind == "str":
        ok = type(value) is str
    elif kind == "bool":
        ok = type(value) is bool
    elif kind in _RANGES:
        low, high = _RANGES[kind]
        ok = (type(value) in (int, float) and low <= value <= high
              and (kind not in ("count", "int") or type(value) is int or value.is_integer()))
    else:
        return None
    return None if ok else f"{_shown(value)} is not {_EXPECTED[kind]}"


def _checked(values: Sequence[Any], kind: str) -> tuple[Any, list[tuple[int, str]]]:
    """``values`` with every one not of scalar type ``kind`` nulled, and (index, why) of those.

    A numeric column comes back as float64 (null as NaN), which the typed
    columns take as it is: a million requests cost one pass for the set of
    types and one numpy comparison for the range per column.
    """
    types = set(map(type, values))
    if kind in _RANGES and types <= _NUMBER_TYPES:
        try:
            numbers = np.array(values, dtype=np.float64)  # None becomes NaN
        except OverflowError:  # an int beyond float64: look value by value below
            pass
        else:
            low, high = _RANGES[kind]
            with np.errstate(invalid="ignore"):
                fine = np.isnan(numbers) | ((numbers >= low) & (numbers <= high))
                if kind in ("count", "int") and float in types:
                    fine &= np.isnan(numbers) | (numbers == np.rint(numbers))
            if fine.all():
                return numbers, []
            bad = [(i, why) for i in np.flatnonzero(~fine).tolist() if (why := _why(values[i], kind)) is not None]
            numbers[[i for i, _ in bad]] = np.nan
            return numbers, bad
    elif kind not in _RANGES and (kind not in ("str", "bool") or types <= {str if kind == "str" else bool, type(None)}):
        return values, []
    bad = [(i, why) for i, value in enumerate(values) if value is not None and (why := _why(value, kind)) is not None]
    fixed = list(values)
    for i, _ in bad:
        fixed[i] = None
    return fixed, bad


def _conform(value: Any, kind: Any, record: dict[str, Any]) -> tuple[Any, str | None]:
    """``value`` as its container type ``kind`` allows (bad parts nulled or dropped), and what was wrong."""
    shape = kind[0]
    if shape == "object" or shape == "map":
        if not isinstance(value, dict):
            return None, f"{_shown(value)} is not an object"
        checks = kind[1].items() if shape == "object" else ((key, kind[1]) for key in list(value))
        wrong = [(key, why) for key, item_kind in checks
                 if value.get(key) is not None and (why := _why(value[key], item_kind)) is not None]
        for key, _ in wrong:
            if shape == "map":
                del value[key]
            else:
                value[key] = None
        return value, _summed(wrong, len(value), "key")
    if not isinstance(value, list):
        return None, f"{_shown(value)} is not a list"
    problems: list[tuple[Any, str]] = []
    if shape == "list":
        for i, item in enumerate(value):
            if item is not None and (why := _why(item, kind[1])) is not None:
                value[i] = None
                problems.append((i, why))
        return value, _summed(problems, len(value), "item")
    kept = []
    for i, item in enumerate(value):
        why = None
        if shape == "rows":
            names = record.get(kind[1])
            if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
                names = list(kind[2])
            if not isinstance(item, list):
                why = f"{_shown(item)} is not a list"
            else:  # columns the schema does not know (a newer writer's) are not checked
                for name, cell in zip(names, item):
                    if cell is not None and (why := _why(cell, kind[2].get(name))) is not None:
                        why = f"{name} {why}"
                        break
        elif shape == "records":
            if not isinstance(item, dict):
                why = f"{_shown(item)} is not an object"
            else:
                for key, item_kind in kind[1].items():
                    cell = item.get(key)
                    if cell is None:
                        continue
                    if isinstance(item_kind, tuple):
                        item[key], why = _conform(cell, item_kind, item)
                    else:
                        why = _why(cell, item_kind)
                    if why is not None:
                        why = f"{key} {why}"
                        break
        elif shape == "frames":
            if not (isinstance(item, list) and len(item) == 2 and _why(item[0], "str") is None
                    and _why(item[1], "count") is None):
                why = f"{_shown(item)} is not a [file, line] pair"
        (problems.append((i, why)) if why is not None else kept.append(item))
    return kept, _summed(problems, len(value), "entry")


def _summed(problems: list[tuple[Any, str]], total: int, noun: str) -> str | None:
    if not problems:
        return None
    where, why = problems[0]
    more = f" ({len(problems)} of {total} {noun.replace('ry', 'rie')}s)" if len(problems) > 1 else ""
    return f"{noun} {where!r}: {why}{more}" if noun == "key" else f"{noun} {where}: {why}{more}"


def _clean_rows(values: list[Any], names: list[Any], checks: dict[str, Any]) -> _RowColumns | None:
    """The rows of one field of many records as checked columns, or None unless every row is clean.

    Clean: the record names no columns of its own (or the schema's), each row is a list of that
    width, and every cell passes its column's check, so the per-row check would change nothing.
    A heap record holds hundreds of rows and a day millions: one pass per column, not per cell.
    """
    default = list(checks)
    if any(n is not None and n != default for n in names) or any(v is not None and type(v) is not list
                                                                 for v in values):
        return None
    counts = [0 if v is None else len(v) for v in values]
    rows = list(chain.from_iterable(v for v in values if v))
    if set(map(type, rows)) - {list} or set(map(len, rows)) - {len(default)}:
        return None
    transposed = list(zip(*rows)) if rows else [() for _ in default]
    columns: dict[str, Any] = {}
    for name, column in zip(default, transposed):
        kind = checks[name]
        if not isinstance(kind, str):
            return None
        columns[name], problems = _checked(column, kind)
        if problems:
            return None
    return columns, counts


def _same_keys(records: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]] | None:
    """Records' values by key in one pass when all hold the same keys in the same order (a writer's
    records of one kind do), else None."""
    if not records or len(set(map(tuple, records))) != 1:
        return None
    return dict(zip(records[0], zip(*map(dict.values, records))))


def _admit_records(records: list[Any], numbers: list[int], skipped: list[tuple[int, str]],
                   row_columns: dict[tuple[str, str], _RowColumns] | None = None,
                   scalars: dict[tuple[str, str], Any] | None = None) -> tuple[list[dict[str, Any]], list[int]]:
    """The records that have a kind (and their lines), each field of a known kind checked against its type.

    Given ``scalars``, each scalar field's checked values (float64 for numbers) are kept there,
    keyed by (kind, field); given ``row_columns``, so are row fields found clean, as columns.
    """
    kept, kept_numbers = [], []
    for record, number in zip(records, numbers):
        if isinstance(record.get("kind"), str):
            kept.append(record)
            kept_numbers.append(number)
        else:
            skipped.append((number, "not a record: no kind"))
    by_kind: dict[str, list[int]] = {}
    for i, record in enumerate(kept):
        by_kind.setdefault(record["kind"], []).append(i)
    for kind, where in by_kind.items():
        same_keys = _same_keys([kept[i] for i in where])
        for name, field_type in _FIELD_TYPES.get(kind, {}).items():
            if name == "kind":
                continue
            if isinstance(field_type, str):
                values = same_keys.get(name) if same_keys is not None else None
                checked, problems = _checked(values if values is not None else [kept[i].get(name) for i in where],
                                             field_type)
                for j, why in problems:
                    kept[where[j]][name] = None
                    skipped.append((kept_numbers[where[j]], f"{kind} {name}: {why}"))
                if scalars is not None:
                    scalars[(kind, name)] = checked
                continue
            if field_type[0] == "rows" and row_columns is not None:
                clean = _clean_rows([kept[i].get(name) for i in where],
                                    [kept[i].get(field_type[1]) for i in where], field_type[2])
                if clean is not None:
                    row_columns[(kind, name)] = clean
                    continue
            for i in where:
                value = kept[i].get(name)
                if value is not None:
                    kept[i][name], wrong = _conform(value, field_type, kept[i])
                    if wrong is not None:
                        skipped.append((kept_numbers[i], f"{kind} {name}: {wrong}"))
    return kept, kept_numbers


def _admit_requests(requests: dict[str, Sequence[Any]], numbers: Sequence[int] | np.ndarray,
                    skipped: list[tuple[int, str]]) -> None:
    """Null every request value that is not of its field's type (columns are replaced, not edited)."""
    for name, values in list(requests.items()):
        field_type = _FIELD_TYPES["request"].get(name)
        if field_type is not None:
            requests[name], problems = _checked(values, field_type)
            skipped += [(int(numbers[i]), f"request {name}: {why}") for i, why in problems]


def _admit(parsed: _Parsed) -> None:
    """Check a parsed session at the door: header, records and requests."""
    header = {**parsed.header, "kind": "header"}  # the human log's header has no kind of its own
    parsed.header = _admit_records([header], [parsed.header_line], parsed.skipped)[0][0]
    parsed.records, parsed.record_lines = _admit_records(parsed.records, parsed.record_lines, parsed.skipped,
                                                         parsed.row_columns, parsed.scalars)
    _admit_requests(parsed.requests, parsed.request_lines, parsed.skipped)
    parsed.skipped.sort()


# ------------------------------------------------------------------- parsing

@dataclass
class _Parsed:
    """One session's content in schema vocabulary, whichever format it came from, with line numbers."""

    format: str
    header: dict[str, Any]
    records: list[dict[str, Any]]
    requests: dict[str, Sequence[Any]]
    skipped: list[tuple[int, str]]
    header_line: int = 1
    record_lines: list[int] = field(default_factory=list)
    request_lines: Sequence[int] | np.ndarray = ()
    #: (kind, field) -> the clean rows of that field, per column, and each record's row count
    row_columns: dict[tuple[str, str], _RowColumns] = field(default_factory=dict)
    #: (kind, field) -> that scalar field's checked values, one per record of the kind
    scalars: dict[tuple[str, str], Any] = field(default_factory=dict)


def _loads_or_none(line: bytes) -> Any:
    try:
        return _loads(line)
    except ValueError:
        return None


def _request_rows(lines: list[bytes], is_request: list[bool]) -> tuple[list[Any], np.ndarray, list[tuple[int, str]]]:
    """Parse every request line, in one ``loads`` call when the file is clean: (rows, their line numbers, skipped)."""
    numbers = np.flatnonzero(np.array(is_request, dtype=bool)) + 1
    try:
        rows = _loads(b"[" + b",".join(list(compress(lines, is_request))) + b"]")
        if len(rows) == len(numbers) and set(map(type, rows)) <= {list}:  # else a line held two values
            return rows, numbers, []
    except (ValueError, TypeError):
        pass
    # Something is off: go chunk by chunk, line by line only inside a bad chunk.
    numbered = list(compress(enumerate(lines, 1), is_request))
    rows, kept, skipped = [], [], []
    for start in range(0, len(numbered), _CHUNK_LINES):
        chunk = numbered[start:start + _CHUNK_LINES]
        try:
            parsed = _loads(b"[" + b",".join([ln for _, ln in chunk]) + b"]")
        except ValueError:
            parsed = None
        if parsed is None or len(parsed) != len(chunk):
            parsed = [_loads_or_none(ln) for _, ln in chunk]
        for (number, _), row in zip(chunk, parsed):
            if isinstance(row, list):
                rows.append(row)
                kept.append(number)
            else:
                skipped.append((number, "not valid JSON"))
    return rows, np.array(kept, dtype=np.int64), skipped


def _objects(lines: list[bytes]) -> list[Any]:
    """Each line's JSON value (None when it is not JSON), in one ``loads`` call when every line is an object."""
    try:
        values: list[Any] = _loads(b"[" + b",".join(lines) + b"]")
        if len(values) == len(lines) and set(map(type, values)) <= {dict}:  # else a line held two values
            return values
    except (ValueError, TypeError):
        pass
    out: list[Any] = []
    for start in range(0, len(lines), _CHUNK_LINES):
        chunk = lines[start:start + _CHUNK_LINES]
        try:
            parsed = _loads(b"[" + b",".join(chunk) + b"]")
        except (ValueError, TypeError):
            parsed = None
        if parsed is None or len(parsed) != len(chunk) or not set(map(type, parsed)) <= {dict}:
            parsed = [_loads_or_none(line) for line in chunk]
        out += parsed
    return out


def _header_problem(path: Path, header: Any, number: int) -> errors.LeakyspannerError | None:
    """Why a header line cannot open a session (not ours, malformed version, newer schema), or None."""
    if not (isinstance(header, dict) and header.get("kind") == "header"
            and header.get("format") == schema.FORMAT_NAME):
        return errors.NotALogError(
            f"{path} is not a leakyspanner log: its first line is not a {schema.FORMAT_NAME} header")
    version = header.get("schema_version")
    if version is not None and (type(version) is not int or version < 1):
        return errors.NotALogError(
            f"{path} has an invalid header on line {number}: schema_version is {_shown(version)}, "
            "not a whole number >= 1; the file is damaged or was not written by leakyspanner")
    if version is not None and version > schema.SCHEMA_VERSION:
        return errors.SchemaVersionError(
            f"{path} was written with schema version {version}, but this leakyspanner reads "
            f"schema version {schema.SCHEMA_VERSION} and older; upgrade leakyspanner to load it.")
    return None


def _parse_jsonl(path: Path, data: bytes) -> list[_Parsed]:
    """One session per header line: two sessions concatenated into one file load as two."""
    lines = data.split(b"\n")
    first = next((i for i, ln in enumerate(lines) if ln.strip()), 0)
    header = _loads_or_none(lines[first])
    problem = _header_problem(path, header, first + 1)
    if problem is not None:
        raise problem
    lines[first] = b""
    skipped: list[tuple[int, str]] = []
    if lines[-1].strip() and _loads_or_none(lines[-1]) is None:
        # No newline at the end: the writer was cut off mid-record.
        skipped.append((len(lines), "torn last line"))
        lines[-1] = b""

    # Classify with C-level loops: a million lines make any Python-level pass show.
    is_request = list(map(bytes.startswith, lines, repeat(_REQUEST_PREFIX)))
    rows, row_lines, bad = _request_rows(lines, is_request)
    skipped += bad
    records: list[dict[str, Any]] = []
    record_lines: list[int] = []
    headers: list[tuple[int, dict[str, Any]]] = [(first + 1, header)]
    indices = [i for i in np.flatnonzero(~np.array(is_request, dtype=bool)).tolist() if lines[i].strip()]
    for index, record in zip(indices, _objects([lines[i] for i in indices])):
        number = index + 1
        if isinstance(record, dict) and record.get("kind") == "header":
            if record.get("format") != schema.FORMAT_NAME:
                skipped.append((number, f"a header without format {schema.FORMAT_NAME!r}"))
                continue
            problem = _header_problem(path, record, number)
            if problem is not None:
                raise problem
            headers.append((number, record))  # a second session begins here
        elif isinstance(record, dict):
            records.append(record)
            record_lines.append(number)
        elif not isinstance(record, list):  # other arrays are future record kinds: ignored
            skipped.append((number, "not valid JSON" if record is None else "not a record"))

    parts = []
    ends = [number for number, _ in headers[1:]] + [len(lines) + 1]
    for (start, part_header), end in zip(headers, ends):
        lo, hi = np.searchsorted(row_lines, [start, end]).tolist()
        first_record, end_record = bisect.bisect_left(record_lines, start), bisect.bisect_left(record_lines, end)
        part = _Parsed(_JSONL, part_header, records[first_record:end_record], {},
                       [s for s in skipped if start <= s[0] < end], header_line=start,
                       record_lines=record_lines[first_record:end_record])
        part.requests, part.request_lines = _request_columns(part, rows[lo:hi], row_lines[lo:hi])
        parts.append(part)
    return parts


def _request_columns(part: _Parsed, rows: list[Any],
                     numbers: np.ndarray) -> tuple[dict[str, Sequence[Any]], np.ndarray]:
    """Request rows as columns named by the session's header; rows of another width are skipped."""
    names = part.header.get("request_fields")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = list(schema.REQUEST_FIELDS)
    width = 1 + len(names)
    if any(n != width for n in set(map(len, rows))):
        keep = [len(row) == width for row in rows]
        part.skipped += [(int(number), f"request record has {len(row) - 1} values, the header names {width - 1}")
                         for row, number, ok in zip(rows, numbers.tolist(), keep) if not ok]
        rows, numbers = list(compress(rows, keep)), numbers[np.array(keep, dtype=bool)]
    columns = list(zip(*rows)) if rows else [() for _ in range(width)]
    return dict(zip(names, columns[1:])), numbers


def _parse_file(path: Path) -> list[_Parsed]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.NotALogError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    data = data.removeprefix(codecs.BOM_UTF8)  # editors on Windows add one; line numbers are unchanged
    start = re.match(rb"\s*", data).end()  # type: ignore[union-attr]
    if data[start:start + 1] == b"{":
        parts = _parse_jsonl(path, data)
    else:
        log = legacy.parse_legacy(data.decode("utf-8", errors="replace"), stem=path.stem,
                                  fallback_start_ts=path.stat().st_mtime)
        if log is None:
            raise errors.NotALogError(f"{path} is not a leakyspanner log: no line of it is in a leakyspanner format")
        requests: dict[str, Sequence[Any]] = {**log.requests}
        parts = [_Parsed(_LEGACY, log.header, log.records, requests, log.skipped, header_line=1,
                         record_lines=log.record_lines, request_lines=log.request_lines)]
    for part in parts:
        _admit(part)
    return parts


def _parse_or_fall_back(path: Path, skipped: list[tuple[str, int, str]]) -> tuple[Path, list[_Parsed]]:
    """Parse ``path``; a ``.jsonl`` killed before its header reached the disk yields to its ``.log``."""
    try:
        return path, _parse_file(path)
    except errors.NotALogError:
        human = path.with_suffix(schema.LOG_SUFFIX)
        if path.suffix != schema.JSONL_SUFFIX or not human.is_file():
            raise
        try:
            parsed = _parse_file(human)
        except errors.NotALogError:
            pass
        else:
            skipped.append((str(path), 1, f"no readable header, read {human.name} instead"))
            return human, parsed
        raise


# ------------------------------------------------------------------ assembly

def _names(given: Any, default: Sequence[str]) -> list[str]:
    """A record's own field list when it is a list of strings, else the schema's."""
    if isinstance(given, list) and given and all(isinstance(n, str) for n in given):
        return given
    return list(default)


def _rows(given: Any) -> list[list[Any]]:
    return [row for row in given if isinstance(row, list)] if isinstance(given, list) else []


_HEAP_TEXT = frozenset(n for n, f in {**schema.HEAP_ENDPOINT, **schema.HEAP_SITE}.items() if f.type == "str")


def _rows_of_dicts(given: Any) -> list[dict[str, Any]]:
    return [row for row in given if isinstance(row, dict)] if isinstance(given, list) else []


def _route_values(route: dict[str, Any]) -> dict[str, Any]:
    """Where a route's code lives, with anything of the wrong shape nulled."""
    out: dict[str, Any] = {}
    for key, f in schema.ROUTE.items():
        value = route.get(key)
        fits = (isinstance(value, str) if f.type == "str"
                else type(value) is int and 0 <= value < 2 ** 31)  # a line number
        out[key] = value if fits else None
    return out


def _heap_values(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A heap row's values with anything of the wrong shape nulled: text fields must be
    strings; counts, lines and bytes finite non-negative integers within float precision."""
    out: dict[str, Any] = {}
    for name, value in zip(names, row):
        if name in _HEAP_TEXT:
            out[name] = value if isinstance(value, str) else None
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 2**53:
            out[name] = int(value)
        else:
            out[name] = None
    return out


def _labels(left: _Coded, right: np.ndarray, *, optional: bool) -> _Coded:
    """``f"{left}:{int(right)}"`` per row (None, or NaN on the right, shown as None; None when
    ``optional`` and the left is missing), formatted once per distinct pair."""
    right_codes, right_values = pd.factorize(right)  # NaN is -1
    width = len(right_values) + 1
    inverse, keys = pd.factorize((left.codes + 1) * width + right_codes + 1)  # hashing: no sort of 2M keys
    distinct: dict[str, int] = {}
    codes = []
    for key in keys.tolist():
        i, j = divmod(key, width)
        text = left.labels[i - 1] if i else None
        missing = optional and text is None
        codes.append(-1 if missing else distinct.setdefault(f"{text}:{int(right_values[j - 1]) if j else None}",
                                                            len(distinct)))
    return _Coded(np.array(codes, dtype=np.int64)[inverse.reshape(-1)], list(distinct))


class _Collector:
    """Accumulates raw column lists across files; frames are typed once, at the end."""

    def __init__(self) -> None:
        self.raw: dict[str, dict[str, Any]] = {name: {column: [] for column, _, _ in spec}
                                                     for name, spec in _SPECS.items()}
        self.requests: list[pd.DataFrame] = []
        self._request_ts: Any = np.empty(0)  # the last session's request start times (finite)
        self.skipped: list[tuple[str, int, str]] = []

    def _row(self, frame: str, values: dict[Any, Any]) -> None:
        for column, store in self.raw[frame].items():
            store.append(values.get(column))

    def _records(self, frame: str, sid: str, start_ts: Any, records: list[dict[str, Any]],
                 checked: dict[str, Any]) -> None:
        """One row per record, a column at a time; ``checked`` holds fields' values from the door."""
        raw = self.raw[frame]
        for column, _, key in _SPECS[frame]:
            if isinstance(key, tuple):
                raw[column] += [_value(record, key) for record in records]
            elif isinstance(given := checked.get(key), (np.ndarray, list, tuple)) and len(given) == len(records):
                raw[column] += given.tolist() if isinstance(given, np.ndarray) else given
            elif key is not None:
                raw[column] += [record.get(key) for record in records]
        raw["session_id"] += repeat(sid, len(records))
        raw["elapsed_s"] += [_minus(record.get("ts"), start_ts) for record in records]
        raw["time"] += repeat(None, len(records))  # filled from ts when typed

    def _add_heap_rows(self, frame: str, sid: str, start_ts: Any, heaps: list[dict[str, Any]],
                       name: str, fields_name: str, default: Sequence[str]) -> None:
        """A heap record's rows one at a time: for rows the door found something wrong with."""
        self._lists(frame)
        for heap in heaps:
            ts, seq = heap.get("ts"), heap.get("seq")
            common = {"session_id": sid, "heap_seq": seq, "ts": ts, "elapsed_s": _minus(ts, start_ts)}
            names = _names(heap.get(fields_name), default)
            for row in _rows(heap.get(name)):
                values = _heap_values(names, row)
                if frame == "heap_sites":
                    values["site"] = f"{values.get('file')}:{values.get('line')}"
                    values["app_site"] = (f"{values.get('app_file')}:{values.get('app_line')}"
                                          if values.get("app_file") is not None else None)
                self._row(frame, {**values, **common})

    def _add_heap_columns(self, frame: str, sid: str, start_ts: Any, heaps: list[dict[str, Any]],
                          clean: _RowColumns) -> None:
        """Clean heap rows a column at a time: the same values :meth:`_add_heap_rows` gives, without a
        Python step per row (a day of heap records holds millions of them)."""
        columns, counts = clean
        n = sum(counts)
        values: dict[str, Any] = {"session_id": [sid] * n}
        for name, column in columns.items():
            if isinstance(column, np.ndarray):  # counts, checked <= 2**53; the frame keeps them below
                values[name] = np.where(column < 2.0 ** 53, column, np.nan)
            else:  # checked text: factorized once, for the labels below and the typed column
                values[name] = _text_codes(column)
        if frame == "heap_sites":
            values["site"] = _labels(values["file"], columns["line"], optional=False)
            values["app_site"] = _labels(values["app_file"], columns["app_line"], optional=True)
        ts = [heap.get("ts") for heap in heaps]
        for name, given in (("heap_seq", [heap.get("seq") for heap in heaps]), ("ts", ts),
                            ("elapsed_s", [_minus(t, start_ts) for t in ts])):
            values[name] = np.repeat(np.array(given, dtype=np.float64), counts)  # checked numbers or None
        raw = self.raw[frame]
        if not len(raw["session_id"]):  # the frame's first rows: kept as they are, typed at build
            for column in raw:
                raw[column] = values.get(column, [None] * n)
            return
        for column, store in self._lists(frame).items():
            given = values.get(column, [None] * n)
            store += given.tolist() if isinstance(given, (np.ndarray, _Coded)) else given

    def _lists(self, frame: str) -> dict[str, list[Any]]:
        """The frame's raw columns as lists to append to (:meth:`_add_heap_columns` may have left arrays)."""
        raw = self.raw[frame]
        for column, store in raw.items():
            if not isinstance(store, list):
                raw[column] = store.tolist() if isinstance(store, (np.ndarray, _Coded)) else list(store)
        return raw

    def add(self, path: Path, parsed: _Parsed) -> None:
        header = parsed.header
        sid = str(header.get("session_id") or path.stem)
        while sid in self.raw["sessions"]["session_id"]:  # the same session copied elsewhere
            sid += "'"
        start_ts = header.get("start_ts")
        by_kind: dict[Any, list[dict[str, Any]]] = {}
        for record in parsed.records:
            by_kind.setdefault(record.get("kind"), []).append(record)
        for kind, frame in _RECORD_FRAMES.items():
            self._records(frame, sid, start_ts, by_kind.get(kind, []),
                          {name: values for (of, name), values in parsed.scalars.items() if of == kind})
        self._add_details(sid, start_ts, by_kind)
        heaps = by_kind.get("heap", [])
        for name, frame, fields_name, default in (
                ("endpoints", "heap_endpoints", "endpoint_fields", schema.HEAP_ENDPOINT_FIELDS),
                ("sites", "heap_sites", "site_fields", schema.HEAP_SITE_FIELDS)):
            clean = parsed.row_columns.get(("heap", name))
            if clean is not None:
                self._add_heap_columns(frame, sid, start_ts, heaps, clean)
            else:
                self._add_heap_rows(frame, sid, start_ts, heaps, name, fields_name, default)
        n_requests, last_request_ts = self._add_requests(sid, start_ts, parsed.requests)
        self._add_session(path, sid, parsed, by_kind, n_requests, last_request_ts)
        self.skipped += [(str(path), number, reason) for number, reason in parsed.skipped]

    def _add_details(self, sid: str, start_ts: Any, by_kind: dict[Any, list[dict[str, Any]]]) -> None:
        for sample in by_kind.get("sample", ()):
            ts = sample.get("ts")
            coros = sample.get("asyncio_tasks_by_coro")
            for coro, tasks in (coros.items() if isinstance(coros, dict) else ()):
                self._row("tasks", {"session_id": sid, "ts": ts, "elapsed_s": _minus(ts, start_ts),
                                    "coro": coro, "tasks": tasks})
        for snapshot in by_kind.get("snapshot", ()):
            ts, seq = snapshot.get("ts"), snapshot.get("seq")
            common = {"session_id": sid, "snapshot_seq": seq, "ts": ts, "elapsed_s": _minus(ts, start_ts)}
            names = snapshot.get("site_fields") or schema.SITE_FIELDS
            for site in snapshot.get("sites") or ():
                values = dict(zip(names, site)) if isinstance(site, list) else {}
                self._row("sites", {**values, **common, "site": f"{values.get('file')}:{values.get('line')}"})
            for rank, trace in enumerate(snapshot.get("traces") or (), 1):
                frames = trace.get("frames") if isinstance(trace, dict) else None
                labels = [f"{f[0]}:{f[1]}" for f in frames or () if isinstance(f, list) and len(f) == 2]
                self._row("traces", {**common, "rank": rank, "size_bytes": trace.get("size_bytes"),
                                     "count": trace.get("count"), "site": labels[0] if labels else None,
                                     "traceback": " <- ".join(labels) if labels else None})
        for routes in by_kind.get("routes", ())[-1:]:
            for route in _rows_of_dicts(routes.get("routes")):
                self._row("routes", {**_route_values(route), "session_id": sid})
        summaries = by_kind.get("summary")
        for endpoint in (summaries[-1].get("endpoints") or ()) if summaries else ():
            if isinstance(endpoint, dict):
                self._row("endpoints", {**endpoint, "session_id": sid})

    def _add_requests(self, sid: str, start_ts: Any, columns: dict[str, Sequence[Any]]) -> tuple[int, Any]:
        """Type one session's requests now: the raw columns are too big to keep around."""
        n = len(next(iter(columns.values()), ()))
        data: dict[str, Any] = {"session_id": pd.array(np.full(n, sid, dtype=object), dtype=_STR)}
        for name, kind in _REQUEST_SPEC[1:1 + len(schema.REQUEST_FIELDS)]:
            values = columns.get(name)  # a list, or float64 when checked at the door
            data[name] = _column(values if values is not None else [None] * n, kind)
        ts = data["ts"]
        data["time"] = _column(ts, "time")
        data["elapsed_s"] = ts - (start_ts if isinstance(start_ts, (int, float)) else np.nan)
        for delta, before, after in _REQUEST_DELTAS:
            given = columns.get(delta)  # the human log knows deltas but not before/after
            data[delta] = _column(given, "int") if given is not None else data[after] - data[before]
        self.requests.append(pd.DataFrame(data, copy=False))
        finite = ts[np.isfinite(ts)]
        self._request_ts = finite
        return n, float(finite.max()) if finite.size else None

    def _add_session(self, path: Path, sid: str, parsed: _Parsed,
                     by_kind: dict[Any, list[dict[str, Any]]], n_requests: int, last_request_ts: Any) -> None:
        header = parsed.header
        start_ts = header.get("start_ts")
        samples = by_kind.get("sample", [])
        summaries = by_kind.get("summary", [])
        summary = summaries[-1] if summaries else {}
        # Incomplete sessions (still running, or killed) get their totals from what was written.
        known = {}
        rss = [s["rss_bytes"] for s in samples if isinstance(s.get("rss_bytes"), (int, float))]
        last = samples[-1] if samples else {}
        known["peak_rss_bytes"] = max(rss) if rss else None
        known["final_rss_bytes"] = rss[-1] if rss else None
        for name in ("requests_total", "requests_dropped", "internal_errors"):
            known[name] = last.get(name)
        if known["requests_total"] is None and parsed.format == _JSONL:
            known["requests_total"] = n_requests
        elif isinstance(known["requests_total"], int) and not summaries and isinstance(last.get("ts"), (int, float)):
            # killed (or still running): requests that started after the last sample were served too and
            # each record is one request, so the total is at least the last sample's count plus those
            known["requests_total"] += int((self._request_ts > last["ts"]).sum())
        ts_seen: list[float] = [r["ts"] for r in parsed.records if isinstance(r.get("ts"), (int, float))]
        if last_request_ts is not None:
            ts_seen.append(last_request_ts)
        end_ts = summary.get("ts") if summary.get("ts") is not None else max(ts_seen, default=None)
        row = {name: header.get(name) for name in _HEADER_COLUMNS}
        for name in _SUMMARY_COLUMNS:
            row[name] = summary.get(name) if summary.get(name) is not None else known.get(name)
        if row["baseline_rss_bytes"] is None:
            row["baseline_rss_bytes"] = summary.get("baseline_rss_bytes")
        if row["net_growth_bytes"] is None:
            row["net_growth_bytes"] = _minus(row["final_rss_bytes"], row["baseline_rss_bytes"])
        if row["duration_s"] is None:
            row["duration_s"] = _minus(end_ts, start_ts)
        config: dict[str, Any] = header["config"] if isinstance(header.get("config"), dict) else {}
        threshold_mb = config.get("leak_threshold_mb")
        if threshold_mb is None and isinstance(config.get("leak_threshold_bytes"), (int, float)):
            threshold_mb = config["leak_threshold_bytes"] / _MB
        interval = config.get("interval_seconds", config.get("interval_s"))
        self._row("sessions", {**row, "session_id": sid, "path": str(path), "format": parsed.format,
                               "start": start_ts, "start_ts": start_ts, "end_ts": end_ts,
                               "complete": bool(summaries), "interval_seconds": interval,
                               "leak_threshold_mb": threshold_mb})

    def build(self) -> Sessions:
        frames = {name: _frame(spec, self.raw[name]) for name, spec in _SPECS.items()}
        frames["requests"] = _concat_requests(self.requests)
        return Sessions(**frames, skipped=self.skipped)


def _concat_requests(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        return _frame([(name, kind, None) for name, kind in _REQUEST_SPEC],
                      {name: [] for name, _ in _REQUEST_SPEC})
    if len(parts) == 1:
        return parts[0]
    frame = pd.concat(parts, ignore_index=True)
    for name in _CATEGORICAL:  # categories differ between sessions: concat fell back to strings
        if not isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype("category")
    return frame


# --------------------------------------------------------------- the result

def _subset(frame: pd.DataFrame, keep: Any) -> pd.DataFrame:
    out = frame[keep].reset_index(drop=True)
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].cat.remove_unused_categories()
    return out


@dataclass(frozen=True, eq=False, repr=False)
class Sessions:
    """Loaded sessions as tidy DataFrames, each starting with a ``session_id`` column.

    ``sessions`` one row per session; ``samples``, ``intervals``, ``snapshots``,
    ``alerts``, ``events`` one row per record of that kind; ``requests`` one
    row per request; ``tasks`` one row per (sample, coroutine); ``sites`` and
    ``traces`` one row per entry of a snapshot; ``endpoints`` the summary's
    per-endpoint totals; ``heaps`` one row per heap record of the sampled heap
    engine, ``heap_endpoints`` and ``heap_sites`` one row per entry of one
    (estimated live bytes per endpoint, and per endpoint x allocating line x
    application line); ``routes`` where each endpoint's code lives;
    ``skipped`` the (path, line, reason) left out.
    Frozen so a selection can never be mistaken for the whole: :meth:`select`
    and :meth:`between` return new objects.
    """

    sessions: pd.DataFrame
    samples: pd.DataFrame
    tasks: pd.DataFrame
    requests: pd.DataFrame
    intervals: pd.DataFrame
    snapshots: pd.DataFrame
    sites: pd.DataFrame
    traces: pd.DataFrame
    alerts: pd.DataFrame
    events: pd.DataFrame
    endpoints: pd.DataFrame
    heaps: pd.DataFrame
    heap_endpoints: pd.DataFrame
    heap_sites: pd.DataFrame
    routes: pd.DataFrame
    skipped: list[tuple[str, int, str]] = field(default_factory=list)

    def _frames(self) -> Iterator[tuple[str, pd.DataFrame]]:
        for f in fields(self):
            if f.name != "skipped":
                yield f.name, getattr(self, f.name)

    @property
    def session_ids(self) -> list[str]:
        """Session ids in load order."""
        return [str(s) for s in self.sessions["session_id"]]

    def select(self, *session_ids: str) -> Sessions:
        """Only the named sessions, in every frame."""
        known = self.session_ids
        unknown = [s for s in session_ids if s not in known]
        if not session_ids or unknown:
            raise ValueError(f"select() takes ids of loaded sessions; unknown: {unknown or 'none given'}, "
                             f"loaded: {', '.join(known)}")
        frames = {name: _subset(frame, frame["session_id"].isin(session_ids)) for name, frame in self._frames()}
        paths = set(frames["sessions"]["path"])
        return replace(self, **frames, skipped=[s for s in self.skipped if s[0] in paths])

    def between(self, start_s: float | None = None, end_s: float | None = None) -> Sessions:
        """Rows with ``start_s <= elapsed_s <= end_s`` (either bound optional) in every timed frame."""
        frames = {}
        for name, frame in self._frames():
            if "elapsed_s" in frame.columns:
                keep = np.ones(len(frame), dtype=bool)
                if start_s is not None:
                    keep &= (frame["elapsed_s"] >= start_s).to_numpy()
                if end_s is not None:
                    keep &= (frame["elapsed_s"] <= end_s).to_numpy()
                frames[name] = _subset(frame, keep)
        return replace(self, **frames)

    def __len__(self) -> int:
        return len(self.sessions)

    def __repr__(self) -> str:
        ids = self.session_ids
        named = ", ".join(ids[:3]) + (f", ... (+{len(ids) - 3})" if len(ids) > 3 else "")
        counts = ", ".join(f"{len(getattr(self, name)):,} {name}"
                           for name in ("samples", "requests", "snapshots", "alerts"))
        skipped = f", {len(self.skipped)} skipped lines" if self.skipped else ""
        return f"<Sessions {len(self)} [{named}]: {counts}{skipped}>"


# ------------------------------------------------------------------- loading

def _expand_dir(path: Path) -> list[Path]:
    return discovery.session_files(path)


def _expand(source: str | os.PathLike[str]) -> list[tuple[Path, bool]]:
    """(path, named explicitly) pairs: a file someone named must be a log; found ones may not be."""
    path = Path(source)
    if path.is_dir():
        found = _expand_dir(path)
        if not found:
            raise errors.NotALogError(f"{path} holds no leakyspanner session: no {schema.JSONL_SUFFIX} "
                                      f"or {schema.LOG_SUFFIX} file in it or its subdirectories")
        return [(p, False) for p in found]
    if path.is_file():
        return [(path, True)]
    pattern = os.fspath(source)
    if re.search(r"[*?[]", pattern):
        matches: list[Path] = []
        for match in sorted(glob.glob(pattern, recursive=True)):
            matches += _expand_dir(Path(match)) if os.path.isdir(match) else [Path(match)]
        if not matches:
            raise errors.NotALogError(f"no leakyspanner log matches {pattern!r}")
        return [(p, False) for p in matches]
    raise errors.NotALogError(f"{path} does not exist")


def _collect(source: _Source) -> list[tuple[Path, bool]]:
    if isinstance(source, (str, os.PathLike)):
        items: list[str | os.PathLike[str]] = [source]
    elif isinstance(source, Iterable) and not isinstance(source, (bytes, dict)):
        items = list(source)
    else:
        raise TypeError(f"load() takes a path, a glob or a list of them, not {type(source).__name__}")
    if not items:
        raise errors.NotALogError("load() was given an empty list of paths")
    found = [pair for item in items for pair in _expand(item)]
    unique: dict[Path, tuple[Path, bool]] = {}
    for path, explicit in found:
        key = path.resolve()
        unique[key] = (path, explicit or unique.get(key, (path, False))[1])
    # A .log beside a .jsonl of the same stem repeats it with less detail.
    kept = set(discovery.preferred(unique))
    return [pair for key, pair in unique.items() if key in kept]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing creates millions of containers; generational GC passes over them cost more than the parse."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _warn(skipped: list[tuple[str, int, str]]) -> None:
    by_file: dict[str, list[str]] = {}
    for path, number, reason in skipped:
        by_file.setdefault(path, []).append(f"{number} ({reason})")
    parts = []
    for path, items in by_file.items():
        more = f" and {len(items) - _SHOWN_LINES} more" if len(items) > _SHOWN_LINES else ""
        parts.append(f"{path} line{'s' if len(items) > 1 else ''} {', '.join(items[:_SHOWN_LINES])}{more}")
    plural = "s" if len(skipped) > 1 else ""
    warnings.warn(f"leakyspanner skipped {len(skipped)} unreadable line{plural} or value{plural} "
                  f"and loaded the rest: {'; '.join(parts)}", LoadWarning, stacklevel=3)


def _file_bytes(found: tuple[Path, bool]) -> float:
    try:
        return float(found[0].stat().st_size)
    except OSError:
        return 0.0


def _load_all(found: list[tuple[Path, bool]]) -> Sessions:
    collector = _Collector()
    # a bar (by bytes) only on a terminal or in a notebook, and only after half a second
    for path, explicit in progress(found, "loading", unit="files", weight=_file_bytes):
        try:
            used, parts = _parse_or_fall_back(path, collector.skipped)
        except errors.NotALogError as exc:
            if explicit:
                raise
            if path.name.startswith(schema.STEM_PREFIX):  # ours by name, yet unreadable: say so
                collector.skipped.append((str(path), 1, str(exc).removeprefix(f"{path} ")))
            continue
        while parts:  # each session's records go as soon as they are collected
            collector.add(used, parts.pop(0))
    if not collector.raw["sessions"]["session_id"]:
        where = ", ".join(sorted({str(path.parent) for path, _ in found}))
        raise errors.NotALogError(f"no leakyspanner session found in {where}: "
                                  f"{len(found)} file(s) looked at, none is a leakyspanner log")
    return collector.build()


def load(source: _Source, *, warn: bool = True) -> Sessions:
    """Load sessions from a file, a directory, a glob, or a list of them.

    Raises :class:`~leakyspanner.errors.NotALogError` when nothing there is a
    leakyspanner session (or a file named explicitly is not one) and
    :class:`~leakyspanner.errors.SchemaVersionError` for files from a newer
    leakyspanner. Unreadable lines, and values not of their field's type, are
    left out and, with ``warn``, reported in one :class:`LoadWarning`. A file
    holding two sessions (a second header line) loads as two sessions.

    A Parquet dataset (``leakyspanner export --parquet``: a directory holding
    ``leakyspanner-dataset.json``, or an fsspec URL such as ``s3://bucket/leaks``)
    is read by :func:`leakyspanner.fleet.read_parquet` (``pip install 'leakyspanner[fleet]'``).
    """
    dataset = discovery.dataset_url(source)
    if dataset is not None:
        from leakyspanner.fleet import read_parquet  # the fleet extra, imported only for a dataset

        return read_parquet(dataset)
    with _gc_paused():
        # Everything parsed is freed inside: re-enabled with millions of young containers still
        # alive, the collector's first pass would walk them all.
        sessions = _load_all(_collect(source))
    if warn and sessions.skipped:
        _warn(sessions.skipped)
    return sessions
