"""``leakyspanner`` command line: demo, report, inspect, run, and the fleet commands.

Each subcommand lives in its own module under ``leakyspanner.commands`` and is
imported only when run, so ``--help`` never loads pandas. ``main`` is the one
place where errors become exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from .commands.terminal import printable
from .errors import LeakyspannerError

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_LEAK", "EXIT_OK", "main"]

EXIT_OK, EXIT_LEAK, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
_DEBUG_ENV = "LEAKYSPANNER_DEBUG"

_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  no leak found (or the command succeeded)
  {EXIT_LEAK}  a leak was found, or a --fail-on-* gate was exceeded
  {EXIT_BAD_INPUT}  bad input: unknown option or session, missing or unreadable path, not a
     leakyspanner log, a log from a newer leakyspanner, an output path that cannot be written
  {EXIT_INTERNAL}  internal error in leakyspanner (a bug: please report it; -v or
     {_DEBUG_ENV}=1 shows the traceback)
  130 interrupted (Ctrl-C)"""

#: subcommand -> (module under leakyspanner.commands, one-line help)
_COMMANDS = {
    "demo": ("demo", "profile the bundled leaking app under generated traffic and show the result"),
    "report": ("report", "print the leak verdict for a session (exit 1 when a leak is found)"),
    "inspect": ("inspect", "serve the local web dashboard for a log file or directory"),
    "run": ("run", "run a server (uvicorn, gunicorn, hypercorn) with capture attached to its app, no code change"),
    "export": ("export", "write sessions into a Parquet dataset (partitioned by host and date) for the fleet"),
    "fleet": ("fleet", "across many sessions: which routes leak on most hosts, outlier hosts or releases"),
}


def _version() -> str:
    from . import __version__

    return __version__


def _parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="leakyspanner", description="Find memory leaks in FastAPI apps.",
                                     epilog=_EXIT_CODES, formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"leakyspanner {_version()}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true",
                       help="print only verdict headlines and errors (no load warnings, no notes)")
    noise.add_argument("-v", "--verbose", action="store_true",
                       help=f"print the traceback of an internal error (same as {_DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    for name, (module_name, help_text) in _COMMANDS.items():
        module = importlib.import_module(f"leakyspanner.commands.{module_name}")
        command = sub.add_parser(name, help=help_text, description=help_text, epilog=_EXIT_CODES,
                                 formatter_class=formatter)
        module.add_arguments(command)
        modules[name] = module
    return parser, modules


def _error(text: str) -> None:
    print(f"leakyspanner: {printable(text)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns the process exit code (see ``leakyspanner --help``)."""
    parser, modules = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    debug = args.verbose or os.environ.get(_DEBUG_ENV, "") not in ("", "0")
    try:
        return int(modules[args.command].run(args))  # type: ignore[attr-defined]
    except LeakyspannerError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours: one line, a hint, the traceback only on request
        if debug:
            traceback.print_exc()
        _error(f"internal error: {type(exc).__name__}: {exc}")
        hint = "" if debug else f" (run with -v or {_DEBUG_ENV}=1 for the traceback)"
        print(f"This is a bug in leakyspanner {_version()}: please report it, with the command you ran "
              f"and its traceback{hint}.", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
