"""Order handling. The audit trail was meant to be shipped to a log store "later"."""

from __future__ import annotations

import itertools
import time

from .models import OrderIn, OrderOut

_order_ids = itertools.count(1000)
_audit_trail: list[str] = []  # every accepted order, rendered; nothing ever trims it


def _render_invoice(order_id: int, order: OrderIn, total: float) -> str:
    rows = [f"<tr><td>{item.sku}</td><td>{item.qty}</td><td>{item.unit_price:.2f}</td>"
            f"<td>{item.qty * item.unit_price:.2f}</td></tr>" for item in order.items]
    header = f"<h1>Invoice {order_id}</h1><p>{order.shipping_address}</p><p>{time.ctime()}</p>"
    return header + "<table>" + "".join(rows) * 4 + "</table>" + f"<p>Total {total:.2f}</p>"  # LEAK


def place_order(order: OrderIn, customer: str) -> OrderOut:
    total = sum(item.qty * item.unit_price for item in order.items)
    if order.coupon == "WELCOME10":
        total *= 0.9
    order_id = next(_order_ids)
    _audit_trail.append(_render_invoice(order_id, order, total))
    return OrderOut(order_id=order_id, total=round(total, 2))


def daily_report(rows: int) -> dict[str, float]:
    """Builds the whole report in memory (4-6 MB), sums it and drops it."""
    lines = [(f"{i:08d};" + "x" * 80).encode() * 40 for i in range(rows)]
    return {"rows": len(lines), "bytes": float(sum(len(line) for line in lines))}
