"""The fleet extra's one import guard."""

from __future__ import annotations

from ..errors import require_extra

__all__ = ["require_fleet"]


def require_fleet() -> None:
    """Fail with ``pip install 'leakyspanner[fleet]'`` when pyarrow, DuckDB or fsspec is missing."""
    require_extra("fleet", "pyarrow", "pyarrow.parquet", "duckdb", "fsspec")
