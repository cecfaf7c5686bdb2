"""Product images resized on demand, with a bounded in-process cache (a control: no leak).

``uvicorn apps.catalog:app``. The cache holds at most 60 rendered images of
~1.5 MB: it warms up by ~90 MB while the popular products are first
requested, then holds steady, evicting the oldest entry when a rarer one comes in.
"""

from __future__ import annotations

import hashlib
import random
import threading

from fastapi import APIRouter, FastAPI, Path
from fastapi.responses import Response
from pydantic import BaseModel

from ._profiling import attach

CACHE_ENTRIES = 60
IMAGE_BYTES = 1536 * 1024


class _BoundedCache:
    """Insertion-ordered dict capped at ``max_entries``; the oldest entry goes first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.max_entries:
                del self._data[next(iter(self._data))]


class Product(BaseModel):
    id: int
    name: str
    in_stock: bool


_images = _BoundedCache(CACHE_ENTRIES)
products = APIRouter(prefix="/products")


def _render(product_id: int, width: int) -> bytes:
    row = hashlib.blake2b(f"{product_id}:{width}".encode(), digest_size=64).digest() * 32
    return row * (IMAGE_BYTES // len(row))


@products.get("/{product_id}/image")
async def product_image(product_id: int = Path(ge=0), width: int = 800) -> Response:
    key = f"{product_id}@{width}"
    image = _images.get(key)
    if image is None:
        image = _render(product_id, width)
        _images.put(key, image)
    return Response(content=image[:512], media_type="application/octet-stream")


@products.get("/{product_id}")
async def product(product_id: int) -> Product:
    return Product(id=product_id, name=f"product {product_id}", in_stock=product_id % 3 != 0)


@products.get("")
async def list_products(page: int = 1) -> list[Product]:
    return [Product(id=i, name=f"product {i}", in_stock=True) for i in range((page - 1) * 10, page * 10)]


app = FastAPI(title="catalog")
app.include_router(products)


@app.get("/ok")
async def ok() -> dict[str, bool]:
    return {"ok": True}


@app.get("/sitemap.xml")
def sitemap() -> Response:
    # the full sitemap is built in memory on each request (4-6 MB, freed)
    urls = [f"<url><loc>https://shop.example/products/{i}</loc><priority>0.5</priority></url>" * 40
            for i in range(random.randint(1300, 1900))]
    return Response(content=f"<urlset>{len(urls)}</urlset>", media_type="application/xml")


attach(app)
