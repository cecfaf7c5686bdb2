"""``leakyspanner export SESSIONS --parquet DIR``: sessions into a Parquet dataset for the fleet.

Sessions already in the dataset are skipped, so exporting a directory that
keeps filling up only writes the new ones. ``DIR`` may be an fsspec URL
(``s3://bucket/leaks``) when the matching fsspec backend is installed.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .terminal import printable

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="+", help="a .jsonl/.log file, a directory of sessions, or a glob")
    parser.add_argument("--parquet", metavar="DIR", required=True,
                        help="the dataset to write into: a directory or an fsspec URL (s3://..., gs://...)")
    parser.add_argument("--release", metavar="NAME",
                        help="the app's version or git sha, stored with each session (for fleet --by release)")
    parser.add_argument("--replace", action="store_true", help="rewrite sessions already in the dataset")


def run(args: argparse.Namespace) -> int:
    from ..fleet._deps import require_fleet

    require_fleet()
    from ..analysis.load import LoadWarning, load
    from ..fleet.parquet import export_parquet

    quiet = getattr(args, "quiet", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LoadWarning)
        sessions = load(args.path if len(args.path) > 1 else args.path[0])
    for warning in caught if not quiet else ():
        print(printable(f"warning: {warning.message}"), file=sys.stderr)
    result = export_parquet(sessions, args.parquet, release=args.release, replace=args.replace)
    if not quiet:
        print(printable(f"{len(result.written)} session(s) written to {args.parquet} ({result.files} files); "
                        f"{len(result.skipped)} already there" + (" (use --replace to rewrite them)"
                                                                   if result.skipped else "")))
    return 0
