"""``leakyspanner run [options] -- <server command>``: profile a server without changing its code.

Each option sets the ``LEAKYSPANNER_<NAME>`` environment variable of the ``leakyspanner()``
parameter it names (``--level deep`` sets ``LEAKYSPANNER_LEVEL=deep``); the values are checked
here, then the command replaces this process with leakyspanner's bootstrap directory first on
``PYTHONPATH``. Its ``sitecustomize`` hooks how uvicorn, gunicorn's uvicorn workers and hypercorn
load the app, in every worker, and attaches there (see :mod:`leakyspanner.launch`). The exit
code is the server's own; 2 when the options or the command are wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

from ..errors import InputError

__all__ = ["BOOTSTRAP_DIR", "add_arguments", "environment", "run"]

#: the directory whose sitecustomize.py attaches in each server process
BOOTSTRAP_DIR = str(Path(__file__).resolve().parent.parent / "_bootstrap")
_EXAMPLE = "leakyspanner run --level mid -- uvicorn app:app --port 8000"


def _fields() -> list[dataclasses.Field[object]]:
    from ..capture.config import CaptureConfig

    return list(dataclasses.fields(CaptureConfig))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..capture.config import ENV_PREFIX
    from ..schema import LEVELS

    parser.usage = "leakyspanner run [options] -- COMMAND [ARGS...]"
    parser.description = (f"{parser.description}. Each option sets the LEAKYSPANNER_* variable named beside it "
                          f"(explicit keyword arguments in the code win over them). Example: {_EXAMPLE}")
    for field in _fields():
        flag = "--" + field.name.replace("_", "-")
        variable = ENV_PREFIX + field.name.upper()
        if field.name == "exclude_paths":
            parser.add_argument(flag, dest=field.name, action="append", metavar="PATH",
                                help=f"a path never captured: exact /health, prefix /static/ or /metrics*; "
                                     f"repeat for more ({variable})")
        elif field.name == "level":
            parser.add_argument(flag, dest=field.name, choices=LEVELS, help=f"capture level ({variable})")
        else:
            parser.add_argument(flag, dest=field.name, metavar="VALUE", help=variable)
    parser.add_argument("server_command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the server to run, e.g. uvicorn app:app, gunicorn -k uvicorn.workers.UvicornWorker "
                             "app:app, hypercorn app:app")


def environment(args: argparse.Namespace, base: dict[str, str]) -> dict[str, str]:
    """The server's environment: ``base`` with the options' variables and the bootstrap on PYTHONPATH.

    Raises InputError naming the option when a value is not valid.
    """
    from ..capture.config import ENV_PREFIX, CaptureConfig

    env = dict(base)
    for field in _fields():
        value = getattr(args, field.name, None)
        if value is None:
            continue
        env[ENV_PREFIX + field.name.upper()] = ",".join(value) if isinstance(value, list) else str(value)
    try:
        CaptureConfig.resolve({}, env)
    except ValueError as exc:
        raise InputError(f"{exc} (an option of leakyspanner run, or set in the environment)") from None
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *paths])
    return env


def run(args: argparse.Namespace) -> int:
    command = list(args.server_command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InputError(f"give the server command after --, e.g. {_EXAMPLE}")
    env = environment(args, dict(os.environ))
    executable = shutil.which(command[0], path=env.get("PATH"))
    if executable is None:
        raise InputError(f"command not found: {command[0]!r} (is the server installed in this environment?)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(executable, command, env)  # the server becomes this process: its signals, its exit code
    return 0  # pragma: no cover - execve does not return
