"""``leakyspanner report PATH``: the verdict in plain words; the exit code gates a CI job.

Exit codes (``leakyspanner.cli.main`` turns errors into them): 0 no leak, 1 a
leak was found or a ``--fail-on-*`` gate was exceeded, 2 bad input (unknown
session, missing or unreadable path, not a leakyspanner log, newer schema, an
HTML path that cannot be written), 3 internal error.

Everything printed that a log could have put there (routes, file names, hosts,
session ids, load warnings) goes through :mod:`.terminal` first.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..formatting import format_bytes
from ..progress import progress
from .terminal import escaped, printable

if TYPE_CHECKING:
    from ..analysis.load import Sessions
    from ..analysis.verdict import Verdict

__all__ = ["add_arguments", "bytes_per_hour", "byte_size", "run"]

_UNITS = {"": 1, "b": 1, "kb": 1024, "kib": 1024, "mb": 1024 ** 2, "mib": 1024 ** 2, "gb": 1024 ** 3,
          "gib": 1024 ** 3}
_PER_HOUR = {"s": 3600, "sec": 3600, "min": 60, "m": 60, "h": 1, "hr": 1, "hour": 1}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmg]i?b|b)?\s*", re.IGNORECASE)
_SIZE_FORMAT = "a size like 1KB, 500KB or 2MB (units B, KB, MB, GB; 1 KB = 1024 bytes)"
_RATE_FORMAT = "a growth rate like 5MB/h or 500KB/h (units B, KB, MB, GB, 1 KB = 1024 bytes; per s, min or h)"
_COMPARE_ID = "leakyspanner-compare"  # the compare page's data block in a saved report


def byte_size(text: str) -> float:
    """Bytes in ``1KB``/``2.5 MB``/``100``; argparse type for ``--fail-on-bytes-per-call``."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected {_SIZE_FORMAT}, got {text!r}")
    return float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]


def bytes_per_hour(text: str) -> float:
    """Bytes per hour in ``5MB/h``/``500KB/hour``/``1KB/s``; argparse type for ``--fail-on-growth``."""
    size, slash, per = text.rpartition("/")
    m = _SIZE.fullmatch(size) if slash else None
    if not m or per.strip().lower() not in _PER_HOUR:
        raise argparse.ArgumentTypeError(f"expected {_RATE_FORMAT}, got {text!r}")
    return float(m.group(1)) * _UNITS[(m.group(2) or "").lower()] * _PER_HOUR[per.strip().lower()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="+", help="a .jsonl/.log file, a directory of sessions, a glob, or a "
                        "Parquet dataset from `leakyspanner export` (directory or fsspec URL such as s3://bucket/leaks)")
    parser.add_argument("--session", help="only this session id (default: every session found)")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.add_argument("--html", metavar="OUT", help="also write a self-contained HTML report to OUT "
                        "(with --compare: the before/after page)")
    parser.add_argument("--compare", metavar="AFTER", nargs="+",
                        help="sessions after a fix: say whether the growth went away (PATH is before)")
    parser.add_argument("--fail-on-growth", metavar="RATE", type=bytes_per_hour,
                        help="exit 1 when RSS grows faster than RATE after warm-up, leak or not (e.g. 5MB/h)")
    parser.add_argument("--fail-on-bytes-per-call", metavar="SIZE", type=byte_size,
                        help="exit 1 when an endpoint retains more than SIZE per call, leak or not (e.g. 1KB)")


# ------------------------------------------------------------------ helpers

def _say(text: str, *, err: bool = False) -> None:
    print(printable(text, newlines=True), file=sys.stderr if err else sys.stdout)


def _size(n: float) -> str:
    return format_bytes(n)


def _load(paths: list[str], quiet: bool) -> Sessions:
    """``load`` with its warning printed here, escaped (a file name can hold an ESC too)."""
    from ..analysis import LoadWarning, load
    from ..discovery import dataset_url

    datasets = [p for p in paths if dataset_url(p) is not None] if len(paths) > 1 else []
    if datasets:
        raise InputError(f"{datasets[0]} is a Parquet dataset: give it on its own (one dataset per report), "
                         "or export the other sessions into it with: leakyspanner export SESSIONS --parquet DATASET")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LoadWarning)
        sessions = load(paths if len(paths) > 1 else paths[0])
    for warning in caught:
        if issubclass(warning.category, LoadWarning):
            if not quiet:
                _say(f"leakyspanner: warning: {warning.message}", err=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return sessions


def _pick(sessions: Sessions, session_id: str | None, where: list[str]) -> list[str]:
    ids = sessions.session_ids
    if session_id is None:
        return ids
    if session_id not in ids:
        raise InputError(f"no session {session_id!r} in {', '.join(where)}; sessions there: {', '.join(ids)}")
    return [session_id]


def _html_target(text: str | None) -> Path | None:
    """The HTML output path, refused before any work when it cannot be written."""
    if text is None:
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        raise InputError(f"--html {text}: that is a directory; give a file name such as {path / 'report.html'}")
    if not path.parent.is_dir():
        raise InputError(f"--html {text}: directory {path.parent} does not exist; create it first")
    return path


def _write(path: Path, page: str) -> None:
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the HTML report to {path}: {exc.strerror or exc}") from exc


def _gates(args: argparse.Namespace, verdicts: list[Verdict]) -> tuple[list[str], list[str]]:
    """(gates exceeded, gates passed or not checkable), one line each."""
    exceeded, passed = [], []
    growth, per_call = args.fail_on_growth, args.fail_on_bytes_per_call
    for v in verdicts:
        if growth is not None:
            slope = v.rss.slope_bytes_per_s
            name = f"--fail-on-growth {_size(growth)}/h"
            if not math.isfinite(slope):
                passed.append(f"{name}: not checked for session {v.session_id}: RSS trend has {v.rss.status}")
            elif slope * 3600 > growth:
                exceeded.append(f"{name} exceeded: session {v.session_id} RSS grows {_size(slope * 3600)}/h "
                                "after warm-up")
            else:
                passed.append(f"{name} passed: session {v.session_id} RSS grows {_size(slope * 3600)}/h")
        if per_call is not None:
            name = f"--fail-on-bytes-per-call {_size(per_call)}"
            over = [e for e in v.endpoints
                    if math.isfinite(e.retained_bytes_per_call) and e.retained_bytes_per_call > per_call]
            for e in over:
                exceeded.append(f"{name} exceeded: session {v.session_id} {e.method} {e.route} retains "
                                f"{_size(e.retained_bytes_per_call)} per call (90% band "
                                f"{_size(e.low_bytes_per_call)}..{_size(e.high_bytes_per_call)})")
            if not over:
                passed.append(f"{name} passed: session {v.session_id}, {len(v.endpoints)} endpoints")
    return exceeded, passed


def _print_gates(exceeded: list[str], passed: list[str], *, json_mode: bool, quiet: bool) -> None:
    for line in exceeded:
        _say(f"Gate {line}", err=json_mode)
    if not quiet:
        for line in passed:
            _say(f"Gate {line}", err=json_mode)


def _after_verdict(verdict: Verdict, sessions: Sessions) -> str:
    """The growing line with the lines around it (read from the project, never run) and what to do next."""
    from ..ui.payloads import growing_line, next_steps

    lines = []
    source = growing_line(verdict, None)
    if source is not None and source["status"] == "ok":
        lines += ["", f"The growing line, {source['path']}:{source['line']}:"]
        lines += [f"  {'>' if row['n'] == source['line'] else ' '} {row['n']:>5}  {row['text']}"
                  for row in source["lines"]]
    rows = sessions.sessions[sessions.sessions["session_id"] == verdict.session_id]
    path = rows["path"].iloc[0] if len(rows) else None
    lines += ["", "Next:"] + [f"  {step}" for step in next_steps(verdict, path if isinstance(path, str) else None)]
    return "\n" + "\n".join(lines)


# ------------------------------------------------------------------ compare

def _compare_page(args: argparse.Namespace, before_id: str, after_id: str) -> str:
    """The saved report of both sessions, opening on their before/after comparison."""
    from ..analysis import load
    from ..ui.html import DATA_ID, render_report, script_json
    from ..ui.payloads import compare_payload

    with warnings.catch_warnings():  # already reported when the sides were loaded
        warnings.simplefilter("ignore")
        both = load([*args.path, *args.compare])
    # Loaded together, an after session with the before's id is told apart by a trailing "'".
    ids = both.session_ids
    after_in_both = next((s for s in reversed(ids) if s.rstrip("'") == after_id and s != before_id), before_id)
    both = both.select(*dict.fromkeys([before_id, after_in_both]))
    data = compare_payload(both, before_id, both, after_in_both)
    page = render_report(both)
    # Beside the page's own data, so it is there before the inlined script runs.
    anchor = f'<script id="{DATA_ID}"'
    if page.count(anchor) != 1:
        raise RuntimeError("the saved report has no data block to put the comparison beside")
    block = f'<script id="{_COMPARE_ID}" type="application/json">{script_json(data)}</script>\n'
    return page.replace(anchor, block + anchor, 1)


def _run_compare(args: argparse.Namespace, before: Sessions, ids: list[str], html: Path | None) -> int:
    from ..analysis.diagnose import compare, diagnose, format_fix_check

    after = _load(args.compare, args.quiet)
    if len(ids) != 1 or len(after.session_ids) != 1:
        raise InputError(f"--compare needs exactly one session on each side, got {len(ids)} before and "
                         f"{len(after.session_ids)} after; pick the before one with --session")
    check = compare(before, after, before_id=ids[0], after_id=after.session_ids[0])
    if args.json:
        print(json.dumps(check.to_dict(), indent=2))
    elif args.quiet:
        _say(escaped(check.headline))
    else:
        _say(format_fix_check(escaped(check)))
    exceeded: list[str] = []
    if args.fail_on_growth is not None or args.fail_on_bytes_per_call is not None:
        exceeded, passed = _gates(args, [escaped(diagnose(after, after.session_ids[0]))])
        _print_gates(exceeded, passed, json_mode=args.json, quiet=args.quiet)
    if html is not None:
        _write(html, _compare_page(args, ids[0], after.session_ids[0]))
        if not args.quiet:
            _say(f"\nHTML comparison written to {html}", err=True)
    return 1 if check.after_status == "leaking" or exceeded else 0


# ------------------------------------------------------------------ run

def run(args: argparse.Namespace) -> int:
    from ..analysis.diagnose import diagnose, format_verdict

    args.quiet = getattr(args, "quiet", False)
    html = _html_target(args.html)
    sessions = _load(args.path, args.quiet)
    ids = _pick(sessions, args.session, args.path)
    if args.compare:
        return _run_compare(args, sessions, ids, html)
    verdicts = [diagnose(sessions, sid) for sid in progress(ids, "diagnosing", unit="sessions",
                                                              enabled=False if args.quiet else None)]
    shown = [escaped(v) for v in verdicts]
    if args.json:
        print(json.dumps([v.to_dict() for v in verdicts], indent=2))  # ASCII: JSON escapes every control
    elif args.quiet:
        for v in shown:
            _say(f"{v.session_id}: {v.status.upper()}: {v.headline}")
    else:
        _say("\n\n".join(format_verdict(v) + _after_verdict(raw, sessions) for raw, v in zip(verdicts, shown)))
    exceeded, passed = _gates(args, shown)
    _print_gates(exceeded, passed, json_mode=args.json, quiet=args.quiet)
    if html is not None:
        from ..ui.html import render_report

        _write(html, render_report(sessions, ids[0] if len(ids) == 1 else None))
        if not args.quiet:
            _say(f"\nHTML report written to {html}", err=True)
    return 1 if any(v.leaking for v in verdicts) or exceeded else 0
