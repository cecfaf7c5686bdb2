"""File metadata service with Prometheus metrics done the quick way.

``uvicorn apps.files:app``. The metrics middleware labels by the raw URL
path, so every distinct file id becomes a new time series (a counter and a
histogram with all its buckets) that prometheus_client keeps forever.
"""

from __future__ import annotations

import random
import time
import zlib

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel

from ._profiling import attach

REQUESTS = Counter("http_requests_total", "Requests", ["method", "path", "status"])
LATENCY = Histogram("http_request_duration_seconds", "Latency", ["method", "path"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SIZES = Histogram("http_response_size_bytes", "Response size", ["method", "path"],
                  buckets=(100, 300, 1000, 3000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000))


class FileMeta(BaseModel):
    file_id: str
    size: int
    owner: str


app = FastAPI(title="files")


@app.middleware("http")
async def metrics(request: Request, call_next):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    response = await call_next(request)
    path = request.url.path
    REQUESTS.labels(request.method, path, str(response.status_code)).inc()  # LEAK
    LATENCY.labels(request.method, path).observe(time.perf_counter() - started)  # LEAK
    SIZES.labels(request.method, path).observe(int(response.headers.get("content-length", 0)))  # LEAK
    return response


@app.get("/files/{file_id}")
async def file_meta(file_id: str) -> FileMeta:
    if not file_id:
        raise HTTPException(status_code=404)
    return FileMeta(file_id=file_id, size=zlib.crc32(file_id.encode()) % 10_000_000, owner="team-a")


@app.get("/folders/{folder}")
async def folder(folder: str) -> list[str]:
    return [f"{folder}/{i}.txt" for i in range(10)]


@app.get("/up")
async def up() -> dict[str, bool]:
    return {"up": True}


@app.post("/archive")
def archive() -> dict[str, int]:
    # compresses a folder's worth of files held in memory at once (4-6 MB, freed)
    blobs = [random.randbytes(1024) * 8 for _ in range(random.randint(500, 730))]
    return {"files": len(blobs), "compressed": len(zlib.compress(b"".join(blobs[:8]), 1))}


@app.get("/metrics")
def metrics_endpoint() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


attach(app)
