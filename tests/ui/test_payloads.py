"""The growing line's preview reads only the project's own .py files, as text, and says why when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leakyspanner.ui.payloads import next_steps, source_preview


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text("".join(f"line_{n} = {n}\n" for n in range(1, 21)))
    return root


def test_preview_is_the_line_with_three_either_side_from_a_project_file(tmp_path: Path) -> None:
    root = _project(tmp_path)
    preview = source_preview(str(root / "app.py"), 10, root)
    assert preview["status"] == "ok" and preview["path"] == "app.py"
    assert [row["n"] for row in preview["lines"]] == list(range(7, 14))
    assert preview["lines"][3]["text"] == "line_10 = 10"


def test_preview_at_the_first_and_last_lines_stays_inside_the_file(tmp_path: Path) -> None:
    root = _project(tmp_path)
    assert [r["n"] for r in source_preview(str(root / "app.py"), 1, root)["lines"]] == [1, 2, 3, 4]
    assert [r["n"] for r in source_preview(str(root / "app.py"), 20, root)["lines"]] == [17, 18, 19, 20]


@pytest.mark.parametrize("name", ["/etc/passwd", "/etc/hostname.py", "{root}/.env", "{root}/settings.toml",
                                  "{root}/../outside.py", "{root}/.venv/lib/python3.11/site-packages/pkg/mod.py"])
def test_preview_never_reads_a_file_outside_the_project_or_not_python(tmp_path: Path, name: str) -> None:
    root = _project(tmp_path)
    for secret in (root / ".env", root / "settings.toml", tmp_path / "outside.py"):
        secret.write_text("TOKEN = 'secret'\n")
    package = root / ".venv/lib/python3.11/site-packages/pkg"
    package.mkdir(parents=True)
    (package / "mod.py").write_text("TOKEN = 'secret'\n")
    preview = source_preview(name.format(root=root), 1, root)
    assert preview["status"] == "outside" and preview["lines"] == []


def test_a_symlink_out_of_the_project_is_not_followed(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (tmp_path / "secret.py").write_text("TOKEN = 'secret'\n")
    os.symlink(tmp_path / "secret.py", root / "link.py")
    assert source_preview(str(root / "link.py"), 1, root)["status"] == "outside"


def test_a_missing_file_or_line_is_absent_not_guessed(tmp_path: Path) -> None:
    root = _project(tmp_path)
    assert source_preview(str(root / "gone.py"), 3, root)["status"] == "absent"
    assert source_preview(str(root / "app.py"), 99, root) | {"path": None} == {
        "file": str(root / "app.py"), "line": 99, "path": None, "status": "absent", "lines": []}


def test_control_characters_in_source_are_shown_escaped(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "evil.py").write_text("x = 1\ny = '\x1b[2J\u202e'  # clears a terminal\n")
    text = source_preview(str(root / "evil.py"), 2, root)["lines"][1]["text"]
    assert "\x1b" not in text and "\u202e" not in text and "\\x1b[2J" in text


def test_next_steps_name_the_session_file_relative_to_the_project(tmp_path: Path) -> None:
    root = _project(tmp_path)
    failure = next_steps(RuntimeError("boom"), str(root / "logs" / "s.jsonl"), root)
    assert failure == [f"where the error above comes from: leakyspanner -v report {Path('logs', 's.jsonl')}"]
