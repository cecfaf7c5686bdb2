"""Search API with saved search history and a heavy export.

``uvicorn apps.search:app``. Every search appends its result page to the
user's history (about 10 KB), and the history has no cap. The export builds
a 20 MB file in memory and holds it while it "uploads" (0.5-2 s): memory
swings by 20 MB all the time, which hides the slow growth underneath.
"""

from __future__ import annotations

import asyncio
import mmap
import random
from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel

from ._profiling import attach

EXPORT_BYTES = 20 * 1024 * 1024
_CHUNK = b"export-row;" * 95_325  # ~1 MB written per step


class Hit(BaseModel):
    doc_id: int
    title: str
    snippet: str
    score: float


class SearchPage(BaseModel):
    query: str
    hits: list[Hit]


DOCS = [f"document number {i} about {topic}: " + f"{topic} in practice, section {i}. " * 12 for i, topic in
        enumerate(["python", "memory", "leaks", "fastapi", "uvicorn", "asyncio"] * 50)]
_history: defaultdict[str, list[str]] = defaultdict(list)
_export_running = asyncio.Lock()


def user_id(x_user: Annotated[str, Query(alias="user")] = "anon") -> str:
    return x_user


api = APIRouter(prefix="/api")


@api.get("/search")
async def search(q: str, user: str = Depends(user_id), page: int = 1) -> SearchPage:
    hits = [Hit(doc_id=i, title=doc[:40], snippet=doc, score=1.0 / (1 + i))
            for i, doc in enumerate(DOCS) if q in doc][:20]
    result = SearchPage(query=q, hits=hits)
    _history[user].append(result.model_dump_json())  # LEAK
    return result


@api.get("/suggest")
async def suggest(prefix: str = "") -> list[str]:
    return [d for d in DOCS[:50] if d.startswith(prefix)][:5]


@api.get("/history/{user}")
async def history(user: str) -> dict[str, int]:
    return {"searches": len(_history.get(user, ()))}


@api.post("/export", status_code=202)
async def export() -> dict[str, str]:
    if _export_running.locked():
        return {"status": "an export is already running"}
    async with _export_running:
        buffer = mmap.mmap(-1, EXPORT_BYTES)  # the whole file, in memory, while it uploads
        for offset in range(0, EXPORT_BYTES - len(_CHUNK), len(_CHUNK)):
            buffer[offset:offset + len(_CHUNK)] = _CHUNK
        await asyncio.sleep(random.uniform(0.5, 2.0))  # the upload
        buffer.close()
    return {"status": "exported"}


app = FastAPI(title="search")
app.include_router(api)


@app.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


attach(app)
