"""``leakyspanner demo``: profile the bundled leaking app under traffic and show what was found."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..schema import HEAP_SITE_FIELDS, LEVELS, LOG_LINES, SITE_FIELDS
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
    """Top ``limit`` allocation sites by size in the file's last snapshot ([] when it has none).

    Read with the loader (:func:`leakyspanner.analysis.load`), so the schema's checks
    apply: a file of a newer schema raises ``SchemaVersionError``. A site is a dict
    of the schema's site fields (``HEAP_SITE_FIELDS`` for the sampled heap engine).
    """
    from ..analysis import load
    from ..analysis.jsonvalue import json_value

    sessions = load(os.fspath(jsonl_path), warn=False)
    # the last picture of either engine: a tracemalloc snapshot or a heap record
    pictures = [(frame, fields) for frame, fields in ((sessions.sites, SITE_FIELDS),
                                                      (sessions.heap_sites, HEAP_SITE_FIELDS)) if len(frame)]
    if not pictures:
        return []
    frame, fields = max(pictures, key=lambda picture: picture[0]["ts"].max())
    last = frame[frame["ts"] == frame["ts"].max()]
    columns = [name for name in fields if name in last.columns]
    sites = [{k: json_value(v) for k, v in row.items()} for row in last[columns].to_dict("records")]
    sites.sort(key=lambda site: site.get("size_bytes") or 0, reverse=True)
    return sites[:limit]


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


def _print_sites(jsonl: Path) -> None:
    from ..errors import MissingExtraError

    try:
        sites = last_snapshot_sites(jsonl)
    except MissingExtraError as exc:  # the demo extra runs without pandas
        print(f"  (no allocation sites: {exc})")
        return
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
