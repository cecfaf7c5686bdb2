"""``leakyspanner fleet DATASET``: which routes leak on most hosts, which hosts or releases stand out.

``DATASET`` is a Parquet dataset written by ``leakyspanner export`` (a
directory or fsspec URL: DuckDB reads only the columns the verdict needs) or
JSON-lines sessions (loaded with pandas, fine for a few sessions). Exit 1 when
a route leaks on at least one host.
"""

from __future__ import annotations

import argparse
import json

from .report import bytes_per_hour
from .terminal import printable

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="+",
                        help="a Parquet dataset (directory or URL) from `leakyspanner export`, or session logs")
    parser.add_argument("--by", choices=("host", "release"), default="host",
                        help="group sessions by host (default) or by the release given at export")
    parser.add_argument("--host", action="append", metavar="HOST", help="only these hosts (repeatable)")
    parser.add_argument("--growth-threshold", metavar="RATE", type=bytes_per_hour, default=bytes_per_hour("1MB/h"),
                        help="a session leaks when RSS grows faster than RATE after warm-up (default 1MB/h)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def _is_dataset(target: str) -> bool:
    from ..discovery import dataset_url

    return dataset_url(target) is not None


def run(args: argparse.Namespace) -> int:
    from ..fleet._deps import require_fleet

    require_fleet()
    from ..fleet.verdict import fleet_verdict

    target: object
    if len(args.dataset) == 1 and _is_dataset(args.dataset[0]):
        target = args.dataset[0]
    else:
        from ..analysis.load import load

        target = load(args.dataset if len(args.dataset) > 1 else args.dataset[0], warn=not args.quiet)
    verdict = fleet_verdict(target, by=args.by, hosts=args.host,  # type: ignore[arg-type]
                            growth_threshold_bytes_per_h=args.growth_threshold)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2))  # ASCII: JSON escapes every control character
    else:
        for line in verdict.lines():
            print(printable(line))
    return 1 if len(verdict.leaking_routes) else 0
