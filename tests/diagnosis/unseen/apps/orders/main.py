"""Shop API: ``uvicorn apps.orders.main:app``."""

from __future__ import annotations

import random

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException

from .._profiling import attach
from . import service
from .models import OrderIn, OrderOut, Product

CATALOG = {f"SKU-{i:04d}": Product(sku=f"SKU-{i:04d}", name=f"Product {i}", price=round(1 + i * 0.37, 2))
           for i in range(200)}


def current_customer(authorization: str = Header(default="Bearer guest")) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(status_code=401, detail="bad token")
    return token


catalog = APIRouter(prefix="/catalog", tags=["catalog"])
orders = APIRouter(prefix="/orders", tags=["orders"])
reports = APIRouter(prefix="/reports", tags=["reports"])


@catalog.get("/products")
async def list_products(limit: int = 20, offset: int = 0) -> list[Product]:
    return list(CATALOG.values())[offset:offset + limit]


@catalog.get("/products/{sku}")
async def get_product(sku: str) -> Product:
    if sku not in CATALOG:
        raise HTTPException(status_code=404, detail="no such product")
    return CATALOG[sku]


@orders.post("", status_code=201)
def create_order(order: OrderIn, customer: str = Depends(current_customer)) -> OrderOut:
    for item in order.items:
        if item.sku not in CATALOG:
            raise HTTPException(status_code=422, detail=f"unknown sku {item.sku}")
    return service.place_order(order, customer)


@reports.get("/daily")
def daily_report(customer: str = Depends(current_customer)) -> dict[str, float]:
    return service.daily_report(rows=random.randint(1100, 1650))


app = FastAPI(title="shop")
app.include_router(catalog)
app.include_router(orders)
app.include_router(reports)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


attach(app)
