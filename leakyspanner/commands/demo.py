"""``leakyspanner demo``: profile the bundled leaking app under traffic and show what was found."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..schema import HEAP_SITE_FIELDS, LEVELS, LOG_LINES, SCHEMA_VERSION, SITE_FIELDS
from .terminal import printable

__all__ = ["add_arguments", "last_snapshot_sites", "run", "summary_block"]

_SUMMARY_TITLE = LOG_LINES["summary"].template.strip()
_TOP_SITES = 5
_MB = 1024 * 1024


def _positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be a {kind.__name__} > 0, got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=_positive(float), default=30.0,
                        help="how long to send traffic (default 30)")
    parser.add_argument("--fixed", action="store_true", help="run the fixed app (bounded caches) instead")
    parser.add_argument("--level", choices=LEVELS, default="mid", help="capture level (default mid)")
    parser.add_argument("--log-dir", default="./leakyspanner_logs/demo",
                        help="where the session files go (default ./leakyspanner_logs/demo)")
    parser.add_argument("--workers", type=_positive(int), default=1, help="uvicorn worker processes (default 1)")


def summary_block(log_text: str) -> list[str]:
    """The human log's summary: from the rule above ``LEAKYSPANNER SESSION SUMMARY`` to the end."""
    lines = log_text.rstrip("\n").splitlines()
    for i, line in enumerate(lines):
        if line.strip() == _SUMMARY_TITLE:
            start = i - 1 if i > 0 and set(lines[i - 1].strip()) == {"="} else i
            return lines[start:]
    return []


def last_snapshot_sites(jsonl_path: str | os.PathLike[str], limit: int = _TOP_SITES) -> list[dict[str, Any]]:
    """Top ``limit`` allocation sites by size in the file's last snapshot ([] when it has none)."""
    from ..errors import SchemaVersionError

    last: dict[str, Any] | None = None
    with open(jsonl_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("{"):
                continue  # request records are arrays
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if not isinstance(record, dict):
                continue
            kind, version = record.get("kind"), record.get("schema_version")
            if kind == "header" and type(version) is int and version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{jsonl_path} has schema_version {record['schema_version']}, newer than this "
                    f"leakyspanner reads ({SCHEMA_VERSION}); upgrade leakyspanner"
                )
            if kind in ("snapshot", "heap"):
                last = record
    if last is None:
        return []
    default = HEAP_SITE_FIELDS if last.get("kind") == "heap" else SITE_FIELDS
    fields = last.get("site_fields") or list(default)
    sites = [dict(zip(fields, row)) for row in last.get("sites") or ()]
    sites.sort(key=lambda site: site.get("size_bytes") or 0, reverse=True)
    return sites[:limit]


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


def _print_sites(jsonl: Path) -> None:
    sites = last_snapshot_sites(jsonl)
    if not sites:
        print("  (no allocation snapshot in this session: level basic, or auto that never triggered)")
        return
    print(f"  Top allocation sites, last snapshot ({jsonl.name}):")
    for site in sites:
        size = (site.get("size_bytes") or 0) / _MB
        where = f"{_short(str(site.get('file')))}:{site.get('line')}"
        if "route" in site:  # the sampled heap engine: live bytes per endpoint and line
            endpoint = printable(f"{site.get('method') or ''} {site.get('route')}".strip())
            app = site.get("app_file")
            caused = (f"  caused by {_short(str(app))}:{site.get('app_line')}"
                      if app and (app, site.get("app_line")) != (site.get("file"), site.get("line")) else "")
            print(f"    {size:8.2f} MB live  {endpoint:<28}  {printable(where)}{printable(caused)}")
        else:
            growth = (site.get("size_diff_bytes") or 0) / _MB
            print(f"    {size:8.2f} MB  {growth:+7.2f} MB since previous  "
                  f"{site.get('count', 0):>7} blocks  {printable(where)}")


def _print_verdict(jsonl_files: Sequence[Path]) -> None:
    """The analysis verdict per session, when that module is installed; nothing otherwise."""
    import importlib
    import importlib.util

    try:
        if importlib.util.find_spec("leakyspanner.analysis.diagnose") is None:
            return
        module = importlib.import_module("leakyspanner.analysis.diagnose")
        from ..analysis import load
    except Exception:  # analysis extra missing or not built yet
        return
    diagnose = getattr(module, "diagnose", None)
    format_verdict = getattr(module, "format_verdict", None)
    if not callable(diagnose) or not callable(format_verdict):
        return
    try:
        sessions = load(list(jsonl_files))
        texts = [str(format_verdict(diagnose(sessions, sid))) for sid in sessions.session_ids]
    except Exception as exc:
        print(f"\n  (no verdict: {type(exc).__name__}: {exc})")
        return
    for text in texts:
        print("\nVerdict: " + text.rstrip("\n"))


def run(args: argparse.Namespace) -> int:
    from ..demo.runner import run_demo

    result = run_demo(seconds=args.seconds, fixed=args.fixed, level=args.level,
                      log_dir=args.log_dir, workers=args.workers)
    print(f"Session files in {result.log_dir}:")
    for path in [*result.jsonl_files, *result.log_files]:
        print(f"  {path.name}")
    for log in result.log_files:
        block = summary_block(log.read_text(encoding="utf-8", errors="replace"))
        print(f"\n{log.name}:")
        print("\n".join(block) if block else "  (no summary: the server did not shut down cleanly)")
    for jsonl in result.jsonl_files:
        print()
        _print_sites(jsonl)
    _print_verdict(result.jsonl_files)
    if result.traffic:
        counts = ", ".join(f"{k}={v}" for k, v in result.traffic.get("by_endpoint", {}).items())
        print(f"\nTraffic: {result.traffic.get('requests', 0)} requests ({counts}); "
              f"{result.traffic.get('errors', 0)} errors")
    folder = _short(str(result.log_dir))
    print("\nNext (after `source .venv/bin/activate`):\n"
          f"  leakyspanner report {folder}              the verdict again; exit code 1 while it leaks\n"
          f"  leakyspanner inspect {folder}             the dashboard: trends, endpoints, growing lines\n"
          "  leakyspanner demo --fixed                 the same app with the leaks fixed, then\n"
          f"  leakyspanner report {folder} --compare <the fixed session>   did the fix work?\n"
          "  In your app: leakyspanner(app), run your traffic, Ctrl-C, leakyspanner report leakyspanner_logs/")
    return 0
