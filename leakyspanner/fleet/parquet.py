"""Sessions as a Parquet dataset: one table per record kind, partitioned by host and date.

Layout under the dataset root (a local directory or any fsspec URL)::

    leakyspanner-dataset.json                 format, dataset and schema versions
    _schema/<table>.parquet                   each table's columns and types, no rows
    <table>/host=<host>/date=<YYYY-MM-DD>/<session>.parquet

Tables are the frames of :class:`~leakyspanner.analysis.load.Sessions`
(``sessions``, ``samples``, ``requests``, ``intervals``, ``heap_endpoints``...)
with the same columns; ``sessions`` also has ``release`` (given at export).
One file per session and table, so exporting new sessions writes new files
and touches none of the old ones: appending costs what the new sessions
weigh. Host and session id in paths keep ``[A-Za-z0-9._-]`` only (plus a
short hash of the real value); the real values are columns.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .. import errors, schema
from ._deps import require_fleet

require_fleet()

import fsspec  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from ..analysis.load import Sessions  # noqa: E402

__all__ = ["DATASET_FILE", "DATASET_FORMAT", "DATASET_VERSION", "ExportResult", "TABLES", "dataset_files",
           "export_parquet", "open_dataset", "read_parquet"]

DATASET_FILE = schema.DATASET_FILE
DATASET_FORMAT = "leakyspanner-parquet"
#: Bumped on any change of layout or columns a reader of the previous version would misread.
DATASET_VERSION = 1
TABLES = tuple(f.name for f in fields(Sessions) if f.name != "skipped")
_SCHEMA_DIR = "_schema"
_META_KEY = b"leakyspanner"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _frames(sessions: Sessions) -> list[tuple[str, pd.DataFrame]]:
    return [(name, getattr(sessions, name)) for name in TABLES]


def _part(value: Any, *, hashed: bool) -> str:
    """A path component for ``value``: safe characters only, never ``.`` or ``..``."""
    text = "unknown" if value is None or (isinstance(value, float) and value != value) else str(value)
    safe = _UNSAFE.sub("_", text)[:80].strip(".") or "_"
    if hashed or safe != text:
        safe += "-" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return safe


def _date(start_ts: Any) -> str:
    if isinstance(start_ts, (int, float)) and start_ts == start_ts:
        return datetime.datetime.fromtimestamp(float(start_ts), datetime.timezone.utc).strftime("%Y-%m-%d")
    return "unknown"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_parquet` did: session ids written and those already in the dataset."""

    root: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    files: int = 0


def _filesystem(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """fsspec's filesystem and path for ``url``; an unknown scheme or a missing package is bad input."""
    try:
        return fsspec.core.url_to_fs(str(url), **(storage_options or {}))  # type: ignore[no-any-return]
    except ImportError as exc:  # s3fs, gcsfs...: fsspec names the package
        raise errors.MissingExtraError(f"{url}: {exc} (pip install s3fs for s3://, gcsfs for gs://)") from None
    except ValueError as exc:  # "Protocol not known: foo"
        raise errors.InputError(f"{url}: {exc}; give a local directory or a URL fsspec knows "
                                "(s3://, gs://, file://...)") from None


def open_dataset(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str, dict[str, Any]]:
    """(filesystem, root path, marker) of an existing dataset; clear errors when it is not one."""
    fs, root = _filesystem(url, storage_options)
    root = root.rstrip("/")
    marker_path = f"{root}/{DATASET_FILE}"
    try:
        with fs.open(marker_path, "rb") as f:
            marker = json.loads(f.read())
    except FileNotFoundError:
        if not fs.exists(root):
            raise errors.NotALogError(f"{url} does not exist") from None
        raise errors.NotALogError(
            f"{url} is not a leakyspanner Parquet dataset: it has no {DATASET_FILE} "
            "(write one with: leakyspanner export SESSIONS --parquet DIR)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.NotALogError(f"{marker_path} is not a leakyspanner dataset description: {exc}") from None
    if not isinstance(marker, dict) or marker.get("format") != DATASET_FORMAT:
        raise errors.NotALogError(f"{marker_path} does not describe a {DATASET_FORMAT} dataset")
    version = marker.get("dataset_version")
    if not isinstance(version, int):
        raise errors.NotALogError(f"{marker_path} has no whole-number dataset_version")
    if version > DATASET_VERSION:
        raise errors.SchemaVersionError(
            f"{url} is a dataset of version {version}, newer than this leakyspanner reads "
            f"({DATASET_VERSION}): upgrade leakyspanner")
    return fs, root, marker


def _arrow(frame: pd.DataFrame) -> pa.Table:
    """A frame as an Arrow table, categoricals as plain strings (their categories differ by session)."""
    plain = {name: frame[name].astype("str").where(frame[name].notna(), None)
             for name in frame.columns if isinstance(frame[name].dtype, pd.CategoricalDtype)}
    if plain:
        frame = frame.assign(**plain)
    return pa.Table.from_pandas(frame, preserve_index=False)


def _with_meta(arrow: pa.Table, **values: Any) -> pa.Table:
    meta = dict(arrow.schema.metadata or {})
    meta[_META_KEY] = json.dumps({"dataset_version": DATASET_VERSION, **values}).encode()
    return arrow.replace_schema_metadata(meta)


def _write(fs: Any, path: str, table: pa.Table) -> None:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd")


def _write_marker(fs: Any, root: str, sessions: Sessions) -> None:
    categorical = {name: [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
                   for name, frame in _frames(sessions)}
    marker = {"format": DATASET_FORMAT, "dataset_version": DATASET_VERSION,
              "schema_version": schema.SCHEMA_VERSION, "tables": list(TABLES),
              "categorical": {k: v for k, v in categorical.items() if v}}
    for name, frame in _frames(sessions):
        empty = frame.iloc[:0]
        if name == "sessions":
            empty = empty.assign(release=pd.Series([], dtype="str"))
        _write(fs, f"{root}/{_SCHEMA_DIR}/{name}.parquet",
               _with_meta(_arrow(empty), table=name, schema_version=schema.SCHEMA_VERSION))
    with fs.open(f"{root}/{DATASET_FILE}", "w") as f:
        f.write(json.dumps(marker, indent=1) + "\n")


def export_parquet(sessions: Sessions, url: str, *, release: str | None = None, replace: bool = False,
                   storage_options: dict[str, Any] | None = None) -> ExportResult:
    """Write ``sessions`` into the dataset at ``url`` (created when missing).

    A session already in the dataset is left alone (listed in ``skipped``)
    unless ``replace``. ``release`` (an app version, a git sha) is stored with
    each session for ``fleet --by release``.
    """
    if release is not None and (not isinstance(release, str) or not release.strip()):
        raise errors.InputError(f"release must be a non-empty string like 'v1.4.2', got {release!r}")
    fs, root = _filesystem(url, storage_options)
    root = root.rstrip("/")
    if fs.exists(root) and not fs.isdir(root):
        raise errors.InputError(f"{url} is a file; --parquet takes a directory (or URL) for the dataset")
    if fs.exists(f"{root}/{DATASET_FILE}"):
        open_dataset(url, storage_options)  # refuse to mix into a dataset of another version
    elif fs.exists(root) and fs.ls(root):
        raise errors.InputError(f"{url} is not empty and holds no {DATASET_FILE}: "
                                "give a new directory, or the root of an existing leakyspanner dataset")
    fs.makedirs(root, exist_ok=True)
    _write_marker(fs, root, sessions)
    result = ExportResult(root=str(url))
    by_table = {name: frame.groupby("session_id", sort=False, observed=True).indices
                for name, frame in _frames(sessions)}
    frames = dict(_frames(sessions))
    files = 0
    for row in sessions.sessions.itertuples(index=False):
        sid = str(row.session_id)
        where = f"host={_part(row.host, hashed=False)}/date={_date(row.start_ts)}"
        name = _part(sid, hashed=True) + ".parquet"
        if not replace and fs.exists(f"{root}/sessions/{where}/{name}"):
            result.skipped.append(sid)
            continue
        for table in TABLES:
            rows = by_table[table].get(sid)
            if rows is None or not len(rows):
                continue
            part = frames[table].iloc[rows]
            if table == "sessions":
                part = part.assign(release=pd.Series([release] * len(part), dtype="str", index=part.index))
            version = row.schema_version if pd.notna(row.schema_version) else None
            out = _with_meta(_arrow(part), table=table, session_id=sid,
                             schema_version=None if version is None else int(version))
            # the sessions row last: a dataset interrupted mid-session never shows it half written
            if table != "sessions":
                _write(fs, f"{root}/{table}/{where}/{name}", out)
                files += 1
            else:
                sessions_table = out
        _write(fs, f"{root}/sessions/{where}/{name}", sessions_table)
        result.written.append(sid)
        files += 1
    return ExportResult(root=result.root, written=result.written, skipped=result.skipped, files=files)


def dataset_files(fs: Any, root: str, table: str, hosts: Sequence[str] | None = None) -> list[str]:
    """The files of one table, optionally only under the given hosts' partitions."""
    patterns = ([f"{root}/{table}/host={_part(h, hashed=False)}/date=*/*.parquet" for h in hosts]
                if hosts else [f"{root}/{table}/host=*/date=*/*.parquet"])
    return sorted({path for pattern in patterns for path in fs.glob(pattern)})


def _schema(fs: Any, root: str, table: str) -> pa.Schema:
    path = f"{root}/{_SCHEMA_DIR}/{table}.parquet"
    try:
        with fs.open(path, "rb") as f:
            return pq.read_schema(f)
    except FileNotFoundError:
        raise errors.NotALogError(f"{root} is a partial leakyspanner dataset: {path} is missing "
                                  "(export any session into it again to restore it)") from None


def _read(fs: Any, root: str, table: str, files: list[str]) -> pa.Table:
    schema_ = _schema(fs, root, table)
    if not files:
        return schema_.empty_table()
    try:
        return pads.dataset(files, schema=schema_, filesystem=fs, format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as exc:
        bad = _first_unreadable(fs, files)
        where = bad if bad else f"{table} files under {root}"
        raise errors.NotALogError(f"{where} is not a readable leakyspanner Parquet file ({exc}); "
                                  "delete it and export that session again") from None


def _first_unreadable(fs: Any, files: Iterable[str]) -> str | None:
    for path in files:
        try:
            with fs.open(path, "rb") as f:
                pq.read_metadata(f)
        except Exception:
            return str(path)
    return None


def _frame(table: pa.Table, categorical: Sequence[str]) -> pd.DataFrame:
    frame = table.to_pandas()
    for name in categorical:
        if name in frame.columns:
            frame[name] = frame[name].astype("category")
    return frame


def read_parquet(url: str, *, hosts: Sequence[str] | None = None, since: float | None = None,
                 until: float | None = None, session_ids: Sequence[str] | None = None,
                 storage_options: dict[str, Any] | None = None) -> Sessions:
    """Sessions from a dataset, only those on ``hosts`` and starting in [``since``, ``until``] (Unix s).

    Sessions are chosen from the small ``sessions`` table first; of every
    other table only those sessions' files are opened.
    """
    fs, root, marker = open_dataset(url, storage_options)
    categorical: dict[str, Any] = marker["categorical"] if isinstance(marker.get("categorical"), dict) else {}
    files = dataset_files(fs, root, "sessions", hosts)
    chosen = _frame(_read(fs, root, "sessions", files), categorical.get("sessions", ()))
    keep = pd.Series(True, index=chosen.index)
    if since is not None:
        keep &= chosen["start_ts"] >= since
    if until is not None:
        keep &= chosen["start_ts"] <= until
    if session_ids is not None:
        keep &= chosen["session_id"].isin(list(session_ids))
    chosen = chosen[keep.to_numpy()].reset_index(drop=True)
    if chosen.empty:
        raise errors.NotALogError(f"no session in {url} matches"
                                  + (f" hosts {', '.join(hosts)}" if hosts else "")
                                  + (" the time range" if since is not None or until is not None else "")
                                  + (" the session ids" if session_ids is not None else ""))
    names = {_part(str(s), hashed=True) + ".parquet" for s in chosen["session_id"]}
    frames: dict[str, pd.DataFrame] = {"sessions": chosen}
    for table in TABLES:
        if table == "sessions":
            continue
        wanted = [p for p in dataset_files(fs, root, table, hosts) if p.rsplit("/", 1)[-1] in names]
        frames[table] = _frame(_read(fs, root, table, wanted), categorical.get(table, ()))
    return Sessions(**frames, skipped=[])
