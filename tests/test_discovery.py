"""Which files are sessions: one rule for the loader, the dashboard and the demo runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leakyspanner import discovery


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def test_sessions_are_found_in_the_folder_and_one_level_down_sorted(tmp_path: Path) -> None:
    a = _touch(tmp_path / "leakyspanner_2.jsonl")
    b = _touch(tmp_path / "svc" / "leakyspanner_1.log")
    _touch(tmp_path / "svc" / "deeper" / "leakyspanner_0.jsonl")
    _touch(tmp_path / "notes.txt")
    (tmp_path / "dir.jsonl").mkdir()
    assert discovery.session_files(tmp_path) == sorted([a, b])
    assert discovery.session_files(tmp_path, depth=1) == [a]
    with pytest.raises(ValueError, match="depth must be 1"):
        discovery.session_files(tmp_path, depth=3)


def test_a_log_beside_its_jsonl_is_left_out(tmp_path: Path) -> None:
    files = [_touch(tmp_path / "s.jsonl"), _touch(tmp_path / "s.log"), _touch(tmp_path / "old.log")]
    assert discovery.preferred(files) == [tmp_path / "s.jsonl", tmp_path / "old.log"]


def test_inside_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    link = root / "x.jsonl"
    os.symlink(_touch(tmp_path / "x.jsonl"), link)
    assert not discovery.inside(link, root.resolve())
    assert discovery.inside(_touch(root / "y.jsonl"), root.resolve())
