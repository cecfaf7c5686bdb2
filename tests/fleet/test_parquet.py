"""Parquet datasets: the round trip equals the JSON-lines load, appending writes only new
sessions, selection by host and time, and bad or partial datasets fail with clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fleet_files import write_fleet, write_session

from leakyspanner import errors
from leakyspanner.analysis.load import load
from leakyspanner.fleet import DATASET_FILE, export_parquet, read_parquet
from leakyspanner.fleet.parquet import TABLES

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_LOGS = ROOT / "sample_logs"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four hosts' sessions (one each, an hour apart) and their dataset, exported with release v1.2.0."""
    root = tmp_path_factory.mktemp("exported")
    write_fleet(root / "logs", hosts=4)
    export_parquet(load(root / "logs", warn=False), str(root / "ds"), release="v1.2.0")
    return root / "logs", root / "ds"


def _copy(exported: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    logs, ds = exported
    shutil.copytree(logs, tmp_path / "logs")
    shutil.copytree(ds, tmp_path / "ds")
    return tmp_path / "logs", tmp_path / "ds"


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=["release"], errors="ignore")
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.CategoricalDtype):  # categories' order is per load
            frame[name] = frame[name].astype("str")
    return frame.sort_values(["session_id", *([c for c in ("ts",) if c in frame.columns])],
                             kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("source", ["sample_logs", "heap_fleet"])
def test_parquet_round_trip_equals_the_jsonl_load(tmp_path, source):
    if source == "sample_logs":
        sessions = load(SAMPLE_LOGS, warn=False)
    else:
        sessions = load(write_fleet(tmp_path / "logs", hosts=3, heap=True), warn=False)
    export_parquet(sessions, str(tmp_path / "ds"))
    back = read_parquet(str(tmp_path / "ds"))
    for name in TABLES:
        original, read = getattr(sessions, name), getattr(back, name)
        assert list(read.drop(columns=["release"], errors="ignore").columns) == list(original.columns), name
        pd.testing.assert_frame_equal(_comparable(read), _comparable(original), check_categorical=False,
                                      obj=name)
        for column in original.columns:  # categoricals come back categorical
            assert isinstance(read[column].dtype, pd.CategoricalDtype) == isinstance(
                original[column].dtype, pd.CategoricalDtype), (name, column)
    if source == "heap_fleet":
        assert len(back.heap_endpoints) > 0


def test_export_partitions_by_host_and_date_and_records_the_versions(exported):
    _, ds = exported
    files = sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*.parquet"))
    assert any(f.startswith("requests/host=web-0/date=2026-05-28/") for f in files), files
    assert any(f.startswith("samples/host=web-1/date=2026-05-28/") for f in files), files
    marker = json.loads((ds / DATASET_FILE).read_text())
    assert marker["format"] == "leakyspanner-parquet" and marker["dataset_version"] == 1
    assert marker["schema_version"] >= 4
    assert set(read_parquet(str(ds)).sessions["release"]) == {"v1.2.0"}


def test_exporting_again_writes_only_the_new_sessions(exported, tmp_path):
    logs, ds = _copy(exported, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in ds.rglob("*.parquet") if "_schema" not in p.parts}
    write_session(logs, "leakyspanner_20260102_000000", "web-9", 1_780_100_000.0, seed=9)
    result = export_parquet(load(logs, warn=False), str(ds))
    assert result.written == ["leakyspanner_20260102_000000"]
    assert len(result.skipped) == 4
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())  # old files untouched
    assert len(read_parquet(str(ds))) == 5


def test_read_selects_hosts_and_time_range(exported):
    _, ds = exported
    two = read_parquet(str(ds), hosts=["web-1", "web-3"])
    assert sorted(two.sessions["host"]) == ["web-1", "web-3"]
    assert set(two.requests["session_id"]) == set(two.sessions["session_id"])
    late = read_parquet(str(ds), since=1_780_000_000.0 + 2 * 3600)
    assert sorted(late.sessions["host"]) == ["web-2", "web-3"]
    with pytest.raises(errors.NotALogError, match="no session in .* matches hosts web-77"):
        read_parquet(str(ds), hosts=["web-77"])


def test_hostile_host_and_session_names_stay_inside_the_dataset(tmp_path):
    sessions = load(write_fleet(tmp_path / "logs", hosts=1), warn=False)
    hostile = "../../escape\n\x1b[2J"
    sessions = dataclasses.replace(sessions, sessions=sessions.sessions.assign(host=[hostile]))
    export_parquet(sessions, str(tmp_path / "ds"))
    assert not (tmp_path / "escape").exists()
    for path in (tmp_path / "ds").rglob("*"):
        assert path.resolve().is_relative_to((tmp_path / "ds").resolve())
        assert "\n" not in str(path) and "\x1b" not in str(path)
    assert list(read_parquet(str(tmp_path / "ds")).sessions["host"]) == [hostile]  # the real value is kept


def test_a_directory_without_the_marker_is_not_a_dataset(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(errors.NotALogError, match="not a leakyspanner Parquet dataset.*leakyspanner export"):
        read_parquet(str(tmp_path / "other"))
    with pytest.raises(errors.NotALogError, match="does not exist"):
        read_parquet(str(tmp_path / "missing"))


def test_a_newer_dataset_is_refused_with_the_remedy(exported, tmp_path):
    _copy(exported, tmp_path)
    marker = tmp_path / "ds" / DATASET_FILE
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "dataset_version": 99}))
    with pytest.raises(errors.SchemaVersionError, match="version 99, newer .* upgrade leakyspanner"):
        read_parquet(str(tmp_path / "ds"))
    with pytest.raises(errors.SchemaVersionError):  # and never mixed into by an older writer
        export_parquet(load(SAMPLE_LOGS / "leaking", warn=False), str(tmp_path / "ds"))


def test_a_truncated_file_is_named_with_the_remedy(exported, tmp_path):
    _copy(exported, tmp_path)
    victim = sorted((tmp_path / "ds" / "requests").rglob("*.parquet"))[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(errors.NotALogError, match=f"{victim}.*export that session again"):
        read_parquet(str(tmp_path / "ds"))


def test_a_partial_dataset_says_what_is_missing(exported, tmp_path):
    _copy(exported, tmp_path)
    (tmp_path / "ds" / "_schema" / "samples.parquet").unlink()
    with pytest.raises(errors.NotALogError, match="partial leakyspanner dataset: .*samples.parquet is missing"):
        read_parquet(str(tmp_path / "ds"))


def test_export_refuses_a_file_or_a_foreign_directory(tmp_path):
    sessions = load(SAMPLE_LOGS / "leaking", warn=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.InputError, match="is a file; --parquet takes a directory"):
        export_parquet(sessions, str(tmp_path / "file"))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(errors.InputError, match="not empty and holds no leakyspanner-dataset.json"):
        export_parquet(sessions, str(tmp_path / "photos"))
    with pytest.raises(errors.InputError, match="release must be a non-empty string"):
        export_parquet(sessions, str(tmp_path / "ds"), release=" ")


def test_missing_extra_names_the_pip_install_line():
    code = ("import sys; sys.modules['duckdb'] = None\n"
            "try:\n import leakyspanner.fleet\n"
            "except ImportError as e: print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert "pip install 'leakyspanner[fleet]'" in out
