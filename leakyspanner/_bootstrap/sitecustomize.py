"""Run by every Python process ``leakyspanner run`` starts (its directory is on PYTHONPATH).

Installs leakyspanner's import hooks, so the ASGI app a server (uvicorn, gunicorn with uvicorn
workers, hypercorn) loads gets ``leakyspanner(app)`` with the ``LEAKYSPANNER_*`` settings, then
runs the ``sitecustomize`` this one shadows, if there is one. Never raises: a server must start
whatever happens here.
"""

import os
import sys


def _install() -> None:
    try:
        from leakyspanner.launch import install
    except Exception as exc:  # another interpreter without leakyspanner: serve unprofiled, say why
        print(f"leakyspanner run: not attaching in {sys.executable}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return
    install()


def _chain() -> None:
    """Run the next ``sitecustomize`` on sys.path, the one this file shadows."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    paths = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", paths)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        print(f"leakyspanner run: the sitecustomize at {spec.origin} failed: {exc}", file=sys.stderr)


_install()
_chain()
