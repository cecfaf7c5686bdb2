"""Image thumbnails through a small native codec binding.

``uvicorn apps.thumbnails:app``. The binding allocates the output pixels with
``malloc`` and the Python wrapper copies them out, but never calls ``free``.
"""

from __future__ import annotations

import ctypes
import io
import random
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel

from ._profiling import attach

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


class _Codec:
    """What a hand-written ctypes binding to an image codec looks like."""

    def scale(self, data: bytes, width: int, height: int) -> bytes:
        size = width * height * 4
        pixels = _libc.malloc(size)  # LEAK
        ctypes.memset(pixels, data[0] if data else 0, size)  # the "decode": every page is written
        out = ctypes.string_at(pixels, min(size, 256))
        return out  # the native buffer is never freed


codec = _Codec()


class Thumb(BaseModel):
    name: str
    width: int
    height: int
    preview: str


images = APIRouter(prefix="/images")


@images.post("/thumbnails")
async def make_thumbnail(request: Request, name: str = "upload", width: Annotated[int, Query(le=1024)] = 160,
                         height: Annotated[int, Query(le=1024)] = 160) -> Thumb:
    data = await request.body()  # the raw image, as the mobile client uploads it
    if not data:
        raise HTTPException(status_code=400, detail="empty upload")
    head = codec.scale(data, width, height)
    return Thumb(name=name, width=width, height=height, preview=head[:16].hex())


@images.get("/formats")
async def formats() -> list[str]:
    return ["png", "jpeg", "webp"]


@images.get("/contact-sheet")
def contact_sheet() -> dict[str, int]:
    # assembles a full-size contact sheet in memory before compressing it away (4-6 MB)
    sheet = io.BytesIO()
    tile = bytes(range(256)) * 64
    for _ in range(random.randint(250, 370)):
        sheet.write(tile)
    return {"bytes": sheet.getbuffer().nbytes}


app = FastAPI(title="thumbnails")
app.include_router(images)


@app.get("/")
async def root() -> dict[str, str]:
    return {"service": "thumbnails"}


attach(app)
