from __future__ import annotations

from pydantic import BaseModel, Field


class LineItem(BaseModel):
    sku: str = Field(min_length=3, max_length=32)
    qty: int = Field(gt=0, le=1000)
    unit_price: float = Field(ge=0)


class OrderIn(BaseModel):
    customer_id: int
    items: list[LineItem] = Field(min_length=1)
    coupon: str | None = None
    shipping_address: str


class OrderOut(BaseModel):
    order_id: int
    total: float
    status: str = "accepted"


class Product(BaseModel):
    sku: str
    name: str
    price: float
