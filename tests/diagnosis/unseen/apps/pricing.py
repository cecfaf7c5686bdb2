"""Pricing service: quotes are expensive, so someone memoised them.

``uvicorn apps.pricing:app``. The memo is keyed by everything in the query,
and quantities and customer ids are open-ended.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from fastapi import FastAPI, Query
from pydantic import BaseModel

from ._profiling import attach

app = FastAPI(title="pricing")
TIERS = [(1, 1.00), (10, 0.97), (50, 0.93), (100, 0.90), (500, 0.85)]
RULES = 240
BASE_PRICES = {f"P{i:03d}": 5 + (i * 7) % 90 for i in range(120)}


@dataclass(frozen=True)
class Quote:
    sku: str
    qty: int
    region: str
    unit_price: float
    total: float
    explanation: str


class BulkUpload(BaseModel):
    rows: list[str]


@lru_cache(maxsize=None)  # noqa: UP033 (written the way the scenario's users write it)
def quote_for(sku: str, qty: int, region: str, customer_id: int) -> Quote:
    base = BASE_PRICES.get(sku, 50)
    factor = next(f for limit, f in reversed(TIERS) if qty >= limit)
    tax = 1.2 if region == "eu" else 1.07
    unit = round(base * factor * tax, 2)
    steps = [f"{sku} x{qty} for customer {customer_id} in {region}: tier {factor}, tax {tax}, "
             f"rule {hashlib.sha1(f'{sku}{qty}{n}'.encode()).hexdigest()}\n" for n in range(RULES)]
    explanation = "".join(steps)  # LEAK
    return Quote(sku, qty, region, unit, round(unit * qty, 2), explanation)


@app.get("/ping")
def ping() -> dict[str, bool]:
    return {"pong": True}


@app.get("/skus")
async def skus(prefix: str = "P0") -> list[str]:
    return [s for s in BASE_PRICES if s.startswith(prefix)][:25]


@app.get("/quote")
def quote(sku: str, qty: Annotated[int, Query(gt=0)], region: str = "eu", customer_id: int = 0) -> dict[str, object]:
    q = quote_for(sku, qty, region, customer_id)
    return {"sku": q.sku, "qty": q.qty, "unit_price": q.unit_price, "total": q.total}


@app.post("/imports")
async def bulk_import(upload: BulkUpload) -> dict[str, int]:
    # expands every row against the whole price list before validating (4-6 MB, dropped on return)
    expanded = [os.urandom(1) + row.encode() * 40 for row in upload.rows for _ in range(30)]
    return {"rows": len(upload.rows), "expanded_bytes": sum(map(len, expanded))}


attach(app)
