"""Sessions at fleet scale: Parquet datasets, remote URLs, and a verdict across hosts.

``pip install 'leakyspanner[fleet]'`` (pyarrow, DuckDB, fsspec). Nothing here is
imported by capture or by the rest of analysis.

* :func:`export_parquet` writes loaded sessions as a Parquet dataset, one
  table per record kind, partitioned by host and date (``leakyspanner export``).
* :func:`read_parquet` reads a dataset (local path or fsspec URL) back into
  :class:`~leakyspanner.analysis.load.Sessions`, selecting sessions by host and
  time before any row is read.
* :func:`fleet_verdict` answers the fleet questions with DuckDB aggregates
  (``leakyspanner fleet``): which routes leak on most hosts, which hosts or
  releases are outliers, growth per release.
"""

from __future__ import annotations

from .parquet import DATASET_FILE, DATASET_VERSION, ExportResult, export_parquet, read_parquet
from .verdict import FleetVerdict, fleet_verdict

__all__ = ["DATASET_FILE", "DATASET_VERSION", "ExportResult", "FleetVerdict", "export_parquet",
           "fleet_verdict", "read_parquet"]
