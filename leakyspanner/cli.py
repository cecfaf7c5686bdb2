"""``leakyspanner`` command line: demo, report, inspect.

Each subcommand lives in its own module under ``leakyspanner.commands`` and is
imported only when run, so ``--help`` never loads pandas. ``main`` is the one
place where errors become exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import LeakyspannerError

__all__ = ["main"]

#: subcommand -> (module under leakyspanner.commands, one-line help)
_COMMANDS = {
    "demo": ("demo", "profile the bundled leaking app under generated traffic and show the result"),
    "report": ("report", "print the leak verdict for a session (exit 1 when a leak is found)"),
    "inspect": ("inspect", "serve the local web dashboard for a log file or directory"),
}


def _parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="leakyspanner", description="Find memory leaks in FastAPI apps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    for name, (module_name, help_text) in _COMMANDS.items():
        module = importlib.import_module(f"leakyspanner.commands.{module_name}")
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)  # type: ignore[attr-defined]
        modules[name] = module
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns the process exit code (2 for usage or input errors)."""
    parser, modules = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args))  # type: ignore[attr-defined]
    except LeakyspannerError as exc:
        print(f"leakyspanner: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
