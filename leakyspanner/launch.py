"""Attach to the ASGI app a server loads, without changing its code (``leakyspanner run``).

``install()`` adds import hooks that wrap how uvicorn (``Config.load``: the uvicorn command,
``--workers``, ``uvicorn.run()``, gunicorn's uvicorn workers) and hypercorn (``load_application``) load the app,
and call :func:`leakyspanner.leakyspanner` on it in whichever process serves it; options come from
``LEAKYSPANNER_*`` environment variables. Starlette and FastAPI apps get the usual outermost
middleware; any other ASGI callable is wrapped. An app the code already attached is left alone.
Nothing here may stop the server from starting: failures are printed and the app served as is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["attach", "install"]

#: uvicorn's own wrappers around the user's app, looked through to find it
_UVICORN_WRAPPERS = ("ProxyHeadersMiddleware", "MessageLoggerMiddleware")


class _Served:
    """A plain ASGI callable presented as an app whose stack is built, so ``leakyspanner()`` wraps
    that stack (exclusions included) instead of refusing an app without ``add_middleware``."""

    def __init__(self, app: Any) -> None:
        self.middleware_stack = app

    def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        return self.middleware_stack(scope, receive, send)


def _attached(app: Any) -> bool:
    """Whether ``leakyspanner(app)`` already ran on this app (the code calls it itself)."""
    build = getattr(app, "build_middleware_stack", None)
    stack = getattr(app, "middleware_stack", None)
    return (getattr(build, "__module__", "") == "leakyspanner.capture.profiler"
            or type(stack).__module__.startswith("leakyspanner."))


def _say(text: str) -> None:
    print(f"leakyspanner run: {text}", file=sys.stderr, flush=True)


def attach(app: Any) -> Any:
    """Start capture on ``app``; returns what to serve (``app`` itself, or a wrapper around a
    plain ASGI callable). Never raises."""
    from . import leakyspanner

    if _attached(app):
        return app
    try:
        if callable(getattr(app, "build_middleware_stack", None)) or hasattr(app, "add_middleware"):
            profiler = leakyspanner(app)
            served = app
        else:
            served = _Served(app)
            profiler = leakyspanner(served)
    except Exception as exc:
        _say(f"not attached to {type(app).__name__} in pid {os.getpid()}: {exc}")
        return app
    if profiler is None:
        return app  # LEAKYSPANNER_ENABLED=0
    _say(f"attached to {type(app).__name__} in pid {os.getpid()}: {profiler.config.level} level, "
         f"logs in {os.path.abspath(profiler.config.log_path)}")
    return served


def _patch_uvicorn(module: ModuleType) -> None:
    config_class = module.Config
    original = config_class.load

    def load(self: Any) -> None:
        original(self)
        outer, parent = self.loaded_app, None
        app = outer
        while type(app).__name__ in _UVICORN_WRAPPERS and hasattr(app, "app"):
            parent, app = app, app.app
        served = attach(app)
        if served is not app:
            if parent is None:
                self.loaded_app = served
            else:
                parent.app = served

    load.__wrapped__ = original  # type: ignore[attr-defined]
    config_class.load = load


def _patch_hypercorn(module: ModuleType) -> None:
    original = module.load_application

    def load_application(*args: Any, **kwargs: Any) -> Any:
        wrapper = original(*args, **kwargs)
        if type(wrapper).__name__ == "ASGIWrapper" and hasattr(wrapper, "app"):
            wrapper.app = attach(wrapper.app)
        return wrapper

    load_application.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(module, "load_application", load_application)  # noqa: B010 - a module attribute mypy cannot see


#: module -> what to do right after it is first imported
_PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "uvicorn.config": _patch_uvicorn,
    "hypercorn.utils": _patch_hypercorn,
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the other finders find a patched module, then patches it once loaded."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        spec: importlib.machinery.ModuleSpec | None = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        if spec is None:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            try:
                patch(module)
            except Exception as exc:  # a server version we do not know: serve unprofiled, say so
                _say(f"cannot hook {name} ({type(exc).__name__}: {exc}); the app is served without capture")

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Hook uvicorn's and hypercorn's app loading in this interpreter (idempotent)."""
    if any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        return
    for name, patch in _PATCHES.items():
        module = sys.modules.get(name)
        if module is not None:
            patch(module)
    sys.meta_path.insert(0, _AfterImport())
