"""The demo service: a small OCR-ish FastAPI app with two real leaks.

* ``POST /ocr/process`` renders a ~200 KB page image and keeps every one in the
  processing history (the fixed app keeps the last 10).
* ``GET /search`` caches a ~16 KB rendered preview under every distinct query,
  never evicting (the fixed app uses an LRU of 100 entries).

Both allocation sites are single lines with a ``LEAK`` comment; they are the
file:line a leakyspanner snapshot points at. ``GET /report`` is the decoy: it
allocates 2-5 MB per call and frees it all, which makes naive per-request
memory deltas look worse than the real leakers'.

``uvicorn leakyspanner.demo.app:app`` serves an app configured from
``LEAKYSPANNER_DEMO_FIXED``, ``LEAKYSPANNER_DEMO_LEVEL``,
``LEAKYSPANNER_DEMO_LOG_DIR`` and ``LEAKYSPANNER_DEMO_INTERVAL``; it is built
on first access, so importing this module starts nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, MutableSequence
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ..capture.profiler import leakyspanner

__all__ = ["DemoState", "create_app", "settings_from_env"]

IMAGE_BYTES = 200 * 1024
PREVIEW_BYTES = 16 * 1024
FIXED_HISTORY = 10
FIXED_CACHE_ENTRIES = 100
STREAM_CHUNKS = 16
STREAM_CHUNK_BYTES = 4096

_CATALOGUE = {i: {"item_id": i, "name": f"scanner model {i}", "price_cents": 1999 + 100 * i} for i in range(1, 101)}
_CORPUS = [
    "invoice", "receipt", "passport", "contract", "delivery note", "bank statement",
    "utility bill", "payslip", "tax form", "insurance claim", "purchase order", "id card",
]


class OcrRequest(BaseModel):
    """A page to recognise: an id and a short hint of what is on it."""

    document_id: str = Field(min_length=1, max_length=200)
    text_hint: str = Field(default="", max_length=2000)


class _SearchCache:
    """Query -> cached result; ``max_entries=None`` never evicts (the leak)."""

    def __init__(self, max_entries: int | None) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, key: str) -> dict[str, Any] | None:
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.entries[key] = value
        if self.max_entries is not None and len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)


class DemoState:
    """What the app keeps between requests (``app.state.demo``); one per app."""

    def __init__(self, fixed: bool) -> None:
        self.fixed = fixed
        self.history: MutableSequence[bytearray] = deque(maxlen=FIXED_HISTORY) if fixed else []
        self.search_cache = _SearchCache(FIXED_CACHE_ENTRIES if fixed else None)
        self.pages_processed = 0


def _rank(query: str) -> list[dict[str, Any]]:
    words = set(query.lower().split())
    scored = [(sum(w in doc for w in words), doc) for doc in _CORPUS]
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    return [{"title": doc, "score": score} for score, doc in scored[:5]]


def _add_routes(app: FastAPI, state: DemoState) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}

    @app.post("/ocr/process")
    async def ocr_process(request: OcrRequest) -> dict[str, Any]:
        seed = hashlib.sha256(f"{request.document_id}:{request.text_hint}".encode()).digest()
        image = bytearray(seed) * (IMAGE_BYTES // len(seed))  # LEAK: every page image stays in state.history (fixed: last 10)
        state.history.append(image)
        state.pages_processed += 1
        return {
            "document_id": request.document_id,
            "image_bytes": len(image),
            "checksum": hashlib.blake2b(image, digest_size=8).hexdigest(),
            "text": request.text_hint.upper()[:200],
        }

    @app.get("/search")
    async def search(q: str = Query(min_length=1, max_length=200)) -> dict[str, Any]:
        cached = state.search_cache.get(q)
        if cached is None:
            preview = (q.encode() + b"\n") * (PREVIEW_BYTES // (len(q.encode()) + 1))  # LEAK: one preview per distinct query, never evicted (fixed: LRU of 100)
            cached = {"hits": _rank(q), "preview": preview}
            state.search_cache.put(q, cached)
        return {"query": q, "hits": cached["hits"], "preview_bytes": len(cached["preview"])}

    @app.get("/report")
    def report(days: int = Query(default=7, ge=1, le=366)) -> dict[str, Any]:
        # heavy but honest: 2-5 MB of working memory, all of it freed before the response
        size = (2 + days % 4) * 1024 * 1024
        table = bytearray(b"0123456789abcdef") * (size // 16)
        digest = hashlib.blake2b(table, digest_size=8).hexdigest()
        del table
        return {"pages_processed": state.pages_processed, "working_bytes": size, "digest": digest}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(STREAM_CHUNKS):
                yield bytes([48 + i % 10]) * STREAM_CHUNK_BYTES
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, Any]:
        item = _CATALOGUE.get(item_id)
        if item is None:
            raise HTTPException(status_code=404, detail=f"no item {item_id}")
        return item


def create_app(
    fixed: bool = False,
    level: str = "mid",
    log_path: str | os.PathLike[str] = "./leakyspanner_logs/demo",
    interval_seconds: float = 1.0,
    leak_threshold_mb: float = 20.0,
    *,
    profile: bool = True,
) -> FastAPI:
    """Build the demo app; ``fixed=True`` bounds both caches.

    With ``profile=True`` leakyspanner is attached and a session starts now
    (``app.state.leakyspanner`` is the handle; it stops at lifespan shutdown).
    ``app.state.demo`` is the :class:`DemoState` holding the retained data.
    """
    app = FastAPI(title="leakyspanner demo: OCR service" + (" (fixed)" if fixed else ""))
    state = DemoState(fixed)
    app.state.demo = state
    _add_routes(app, state)
    app.state.leakyspanner = None
    if profile:
        app.state.leakyspanner = leakyspanner(
            app, log_path=log_path, level=level, interval_seconds=interval_seconds,
            leak_threshold_mb=leak_threshold_mb,
        )
    return app


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``create_app`` keywords from the ``LEAKYSPANNER_DEMO_*`` variables."""
    env = os.environ if environ is None else environ
    fixed_text = env.get("LEAKYSPANNER_DEMO_FIXED", "0").strip().lower()
    if fixed_text not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ValueError(f"LEAKYSPANNER_DEMO_FIXED must be 1 or 0, got {fixed_text!r}")
    interval_text = env.get("LEAKYSPANNER_DEMO_INTERVAL", "1.0")
    try:
        interval = float(interval_text)
    except ValueError:
        raise ValueError(f"LEAKYSPANNER_DEMO_INTERVAL must be a number of seconds, got {interval_text!r}") from None
    return {
        "fixed": fixed_text in ("1", "true", "yes"),
        "level": env.get("LEAKYSPANNER_DEMO_LEVEL", "mid"),
        "log_path": env.get("LEAKYSPANNER_DEMO_LOG_DIR", "./leakyspanner_logs/demo"),
        "interval_seconds": interval,
    }


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    # ``app`` is built on first access (uvicorn's import string), not at import time
    global _app
    if name == "app":
        if _app is None:
            _app = create_app(**settings_from_env())
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
