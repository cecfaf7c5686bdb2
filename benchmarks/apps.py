"""The benchmark app: four endpoint kinds, built bare or with a profiler attached.

``make_app(config)`` returns a FastAPI app; the profiler handle (or None) is on
``app.state.profiler`` and the log directory on ``app.state.log_dir``. Configs:

* ``tm1``, ``tm5``: the bare app with tracemalloc started at 1 or 5 frames and
  nothing else: what mid and deep cannot go below;
* ``bare``: no middleware; ``empty``: an empty pure-ASGI middleware (the floor
  any middleware pays);
* ``basic``, ``mid``, ``deep``, ``auto``: this checkout's leakyspanner at that
  level, logs in a temp dir, ``interval_seconds=1``; ``deep10``: deep with
  ``traceback_frames=10``, the seed's depth; ``basic-rss-all``: basic reading
  RSS for every request (``request_rss_interval_seconds=0``);
* ``seed-basic``, ``seed-mid``, ``seed-deep``: leakyspanner 0.1.2, only in the
  venv that has it installed (``benchmarks/.seed-venv``).

As a uvicorn factory (run from the repo root, or with ``benchmarks`` as the
working directory and ``apps:app_from_env``)::

    BENCH_CONFIG=mid uvicorn benchmarks.apps:app_from_env --factory

Environment: ``BENCH_CONFIG`` (default ``bare``), ``BENCH_LOG_DIR``,
``BENCH_INTERVAL_S``, and ``BENCH_PROFILER_KW`` (JSON object of extra keyword
arguments for ``leakyspanner()``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

__all__ = ["CONFIGS", "ENDPOINTS", "SEED_CONFIGS", "VALIDATE_BODY", "EmptyMiddleware", "app_from_env", "make_app"]

LEVEL_CONFIGS = ("basic", "mid", "deep", "auto", "deep10", "basic-rss-all", "basic-no-rss", "basic-py",
                 "basic-no-rss-py", "auto-tracemalloc")
#: configs that are a level with extra arguments: deep10 is deep at the seed's 10 frames,
#: basic-rss-all reads RSS at both ends of every request (the cost the sampling avoids)
_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "deep10": ("deep", {"traceback_frames": 10}),
    "basic-rss-all": ("basic", {"request_rss_interval_seconds": 0}),
    # RSS never read after the first 0.1 s: the request path's floor
    "basic-no-rss": ("basic", {"request_rss_interval_seconds": 86_400}),
    # the pure-Python request path (the fallback where the C extension is not built)
    "basic-py": ("basic", {"request_path": "python"}),
    "basic-no-rss-py": ("basic", {"request_rss_interval_seconds": 86_400, "request_path": "python"}),
    # auto on the tracemalloc engine, idle (no growth): basic's request path with tracing off
    "auto-tracemalloc": ("auto", {"allocator": "tracemalloc"}),
}
SEED_CONFIGS = ("seed-basic", "seed-mid", "seed-deep")
#: the bare app under tracemalloc alone (1 and 5 frames): the floor under mid and deep, so
#: the ceiling on any profiler's ratio to the seed at those levels
TRACEMALLOC_CONFIGS = {"tm1": 1, "tm5": 5}
CONFIGS = ("bare", "empty", *TRACEMALLOC_CONFIGS, *LEVEL_CONFIGS, *SEED_CONFIGS)

#: endpoint kind -> (method, path)
ENDPOINTS = {
    "tiny": ("GET", "/tiny"),
    "validate": ("POST", "/validate"),
    "alloc": ("GET", "/alloc"),
    "stream": ("GET", "/stream"),
}
VALIDATE_BODY = b'{"name":"widget","price":9.5,"quantity":3,"tags":["red","large","sale"]}'

_ALLOC_ROWS = 2500  # ~1 MB of short-lived dicts, lists and strings per request
_STREAM_CHUNKS = 20
_CHUNK = b"x" * 1024


class Item(BaseModel):
    name: str
    price: float
    quantity: int = 1
    tags: list[str] = []


class EmptyMiddleware:
    """A pure-ASGI middleware that does nothing: the cost of one extra layer."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


async def _chunks() -> AsyncIterator[bytes]:
    for _ in range(_STREAM_CHUNKS):
        yield _CHUNK


def _routes(app: FastAPI) -> None:
    @app.get("/tiny")
    async def tiny() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/validate")
    async def validate(item: Item) -> dict[str, Any]:
        return {"name": item.name, "total": item.price * item.quantity, "tags": len(item.tags)}

    @app.get("/alloc")
    async def alloc() -> dict[str, int]:
        rows = [{"id": i, "name": f"row-{i}", "values": [i, i * 2, i * 3]} for i in range(_ALLOC_ROWS)]
        return {"rows": len(rows), "checksum": sum(r["values"][2] for r in rows)}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(_chunks(), media_type="application/octet-stream")


def _check_seed(config: str) -> None:
    import leakyspanner

    version = metadata.version("leakyspanner")
    if not version.startswith("0.1.") or hasattr(leakyspanner, "Profiler"):
        raise RuntimeError(
            f"config {config!r} needs leakyspanner 0.1.x installed, found {version} at {leakyspanner.__file__}; "
            "run it with benchmarks/.seed-venv/bin/python from the benchmarks directory"
        )


def make_app(
    config: str,
    *,
    log_dir: str | None = None,
    interval_seconds: float = 1.0,
    lifespan: Any = None,
    **profiler_kw: Any,
) -> FastAPI:
    """Build the benchmark app for ``config``; the profiler (if any) is already started."""
    if config not in CONFIGS:
        raise ValueError(f"config must be one of {', '.join(CONFIGS)}; got {config!r}")
    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    _routes(app)
    app.state.profiler = None
    app.state.log_dir = None
    if config == "empty":
        app.add_middleware(EmptyMiddleware)
    elif config in TRACEMALLOC_CONFIGS:
        import tracemalloc

        tracemalloc.start(TRACEMALLOC_CONFIGS[config])  # this server process only
    elif config != "bare":
        level, extra = _VARIANTS.get(config, (config.removeprefix("seed-"), {}))
        profiler_kw = {**extra, **profiler_kw}
        if config in SEED_CONFIGS:
            _check_seed(config)
        from leakyspanner import leakyspanner

        log_dir = log_dir or tempfile.mkdtemp(prefix=f"leakyspanner-bench-{config}-")
        app.state.log_dir = log_dir
        app.state.profiler = leakyspanner(
            app, log_path=log_dir, level=level, interval_seconds=interval_seconds, **profiler_kw
        )
    app.state.config = config
    return app


def app_from_env() -> FastAPI:
    """uvicorn ``--factory`` entry point; see the module docstring for the variables."""
    kw = json.loads(os.environ.get("BENCH_PROFILER_KW") or "{}")
    return make_app(
        os.environ.get("BENCH_CONFIG", "bare"),
        log_dir=os.environ.get("BENCH_LOG_DIR") or None,
        interval_seconds=float(os.environ.get("BENCH_INTERVAL_S", "1.0")),
        **kw,
    )
