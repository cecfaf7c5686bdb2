"""Source paths as a reader wants them: relative to the project, installed packages and
the standard library shortened and marked, so the user's own lines stand out."""

from __future__ import annotations

import os
import re
import sysconfig

__all__ = ["short_path", "short_site"]

_PACKAGES = re.compile(r".*[/\\](?:site|dist)-packages[/\\]")
_STDLIB = os.path.abspath(sysconfig.get_paths().get("stdlib", "") or "/nonexistent") + os.sep


def short_path(path: str, root: str | None = None) -> str:
    """``app/orders.py`` under the working directory, ``[pkg] starlette/routing.py`` for an
    installed package, ``[stdlib] json/decoder.py`` for the standard library."""
    if not path or path.startswith("<"):
        return path
    packaged = _PACKAGES.sub("", path, count=1)
    if packaged != path:
        return f"[pkg] {packaged}"
    if path.startswith(_STDLIB):
        return f"[stdlib] {path[len(_STDLIB):]}"
    base = os.path.abspath(root or os.getcwd()) + os.sep
    return path[len(base):] if path.startswith(base) else path


def short_site(site: str | None, root: str | None = None) -> str | None:
    """``file:line`` with its file shortened by :func:`short_path`."""
    if not site:
        return site
    file, sep, line = site.rpartition(":")
    return f"{short_path(file, root)}:{line}" if sep and line.isdigit() else short_path(site, root)
