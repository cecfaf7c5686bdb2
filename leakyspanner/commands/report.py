"""``leakyspanner report PATH``: the verdict in plain words, exit 1 when leaking.

Exit codes: 0 no leak, 1 a leak was found (so a CI load test can gate on it),
2 bad input (no sessions, unreadable file, newer schema).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="+", help="a .jsonl/.log file, a directory of sessions, or a glob")
    parser.add_argument("--session", help="only this session id (default: every session found)")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.add_argument("--html", metavar="OUT", help="also write a self-contained HTML report to OUT")
    parser.add_argument("--compare", metavar="AFTER", nargs="+",
                        help="sessions after a fix: say whether the growth went away (PATH is before)")


def run(args: argparse.Namespace) -> int:
    from ..analysis import load
    from ..analysis.diagnose import compare, diagnose, format_fix_check, format_verdict

    sessions = load(args.path)
    ids = [args.session] if args.session else sessions.session_ids
    if args.compare:
        after = load(args.compare)
        if len(ids) != 1 or len(after.session_ids) != 1:
            print("leakyspanner: --compare needs exactly one session on each side; pick one with --session",
                  file=sys.stderr)
            return 2
        check = compare(sessions, after, before_id=ids[0], after_id=after.session_ids[0])
        print(json.dumps(check.to_dict(), indent=2) if args.json else format_fix_check(check))
        return 1 if check.after_status == "leaking" else 0
    verdicts = [diagnose(sessions, sid) for sid in ids]
    if args.json:
        print(json.dumps([v.to_dict() for v in verdicts], indent=2))
    else:
        print("\n\n".join(format_verdict(v) for v in verdicts))
    if args.html:
        from ..ui.html import render_report

        with open(args.html, "w", encoding="utf-8") as out:
            out.write(render_report(sessions, ids[0] if len(ids) == 1 else None))
        print(f"\nHTML report written to {args.html}", file=sys.stderr)
    return 1 if any(v.leaking for v in verdicts) else 0
