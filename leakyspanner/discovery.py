"""Which files under a folder are session files: one rule for the loader, the dashboard and the demo runner.

A session is a ``.jsonl`` file (schema 1+) or a 0.1.x human ``.log``; a folder
holds them directly or one level down (one subfolder per service or run). A
``.log`` beside a ``.jsonl`` of the same stem repeats that session with less
detail, so readers that want each session once take :func:`preferred`.
Standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from leakyspanner import schema

__all__ = ["dataset_url", "inside", "preferred", "session_files"]

_SUFFIXES = (schema.JSONL_SUFFIX, schema.LOG_SUFFIX)


def session_files(folder: Path, *, depth: int = 2) -> list[Path]:
    """``.jsonl`` and ``.log`` files in ``folder`` (``depth`` 1) or also in its subfolders (2), sorted."""
    if depth not in (1, 2):
        raise ValueError(f"depth must be 1 (the folder) or 2 (and its subfolders), got {depth!r}")
    patterns = ("*",) if depth == 1 else ("*", "*/*")
    candidates = sorted(p for pattern in patterns for p in folder.glob(pattern))
    return [p for p in candidates if p.suffix in _SUFFIXES and p.is_file()]


def preferred(files: Iterable[Path]) -> list[Path]:
    """``files`` without each ``.log`` that has a ``.jsonl`` of the same stem beside it, order kept."""
    files = list(files)
    with_jsonl = {(p.parent, p.stem) for p in files if p.suffix == schema.JSONL_SUFFIX}
    return [p for p in files if not (p.suffix == schema.LOG_SUFFIX and (p.parent, p.stem) in with_jsonl)]


def inside(path: Path, base: Path) -> bool:
    """Whether ``path``, symlinks followed, is ``base`` (already resolved) or under it."""
    try:
        return path.resolve().is_relative_to(base)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def dataset_url(source: object) -> str | None:
    """``source`` as a string when it names a Parquet dataset (``leakyspanner export --parquet``), else None.

    A URL (``s3://``, ``gs://``, ``file://``...) always names one, since session
    logs are read from local paths only; a local directory does when it holds
    :data:`~leakyspanner.schema.DATASET_FILE`. One ``stat``, so JSON-lines
    sources pay nothing for the check.
    """
    if not isinstance(source, (str, os.PathLike)):
        return None
    text = os.fspath(source)
    if isinstance(text, bytes):
        return None
    if "://" in text or os.path.isfile(os.path.join(text, schema.DATASET_FILE)):
        return text
    return None
