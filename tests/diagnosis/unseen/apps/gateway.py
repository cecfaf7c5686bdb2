"""API gateway that reports per-request stats to a local agent.

``uvicorn apps.gateway:app``. The stats client is a thin wrapper over a UDP
socket with a native send buffer (as C-backed clients have). The dependency
opens one per request and hands it out, but nobody closes it: the clients are
only closed when the app shuts down.
"""

from __future__ import annotations

import ctypes
import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from ._profiling import attach

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
SEND_BUFFER_BYTES = 64 * 1024


class StatsClient:
    """A UDP client for the local stats agent, with a preallocated native send buffer."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8125) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # LEAK
        self.sock.connect((host, port))  # UDP: no packet is sent until we write
        self.buffer = _libc.malloc(SEND_BUFFER_BYTES)  # LEAK
        ctypes.memset(self.buffer, 0, SEND_BUFFER_BYTES)
        self.pending = 0

    def incr(self, name: str) -> None:
        self.pending += len(name)

    def close(self) -> None:
        if self.buffer:
            _libc.free(self.buffer)
            self.buffer = None
        self.sock.close()


_clients: list[StatsClient] = []


async def stats_client() -> StatsClient:
    client = StatsClient()
    _clients.append(client)  # so shutdown can close them
    return client


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    for client in _clients:
        client.close()
    _clients.clear()


app = FastAPI(title="gateway", lifespan=lifespan)
UPSTREAMS = {"users": "http://users.internal", "billing": "http://billing.internal", "search": "http://search.internal"}


@app.get("/healthz", response_class=PlainTextResponse)
async def healthz() -> str:
    return "ok"


@app.get("/routes")
async def routes() -> dict[str, str]:
    return UPSTREAMS


@app.get("/proxy/{service}/{path:path}")
async def proxy(service: str, path: str, stats: Annotated[StatsClient, Depends(stats_client)]) -> dict[str, str]:
    stats.incr(f"proxy.{service}")
    upstream = UPSTREAMS.get(service, "http://default.internal")
    return {"upstream": f"{upstream}/{path}"}


@app.post("/echo/checksum")
async def checksum(request: Request) -> dict[str, str]:
    # buffers the body and a few transformed copies before hashing (4-6 MB, dropped on return)
    body = await request.body()
    copies = [body.upper(), body.lower(), body[::-1]] * 4
    digest = hashlib.sha256(b"".join(copies)).hexdigest()
    return {"sha256": digest}


attach(app)
