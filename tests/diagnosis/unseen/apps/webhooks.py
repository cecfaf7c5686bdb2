"""Payment webhooks: events that fail processing are kept for a retry job.

``uvicorn apps.webhooks:app``. The retry list keeps the caught exceptions,
and each exception's traceback keeps the frames that raised it, and the
frames keep their locals: the raw body and the decoded event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time

from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel

from ._profiling import attach

SECRET = b"whsec_test"


class EventRejected(Exception):
    pass


class RetryItem(BaseModel):
    event_id: str
    error: str


_failed: list[EventRejected] = []  # drained by a retry job that was never deployed


def _apply(event: dict[str, object]) -> None:
    if event.get("type") not in ("charge.succeeded", "charge.refunded"):
        raise EventRejected(f"unhandled event type {event.get('type')!r}")


def handle_event(raw: bytes, signature: str) -> str:
    expected = hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise HTTPException(status_code=400, detail="bad signature")
    event = json.loads(raw)  # LEAK
    try:
        _apply(event)
    except EventRejected as exc:
        _failed.append(exc)  # keeps exc.__traceback__ -> this frame -> raw and event
        return "queued for retry"
    return "applied"


router = APIRouter(prefix="/webhooks")


@router.post("/payments")
async def payments(request: Request, stripe_signature: str = Header()) -> dict[str, str]:
    raw = await request.body()  # LEAK
    return {"result": handle_event(raw, stripe_signature)}


@router.get("/retries")
async def retries(limit: int = 5) -> list[RetryItem]:
    return [RetryItem(event_id=str(id(e)), error=str(e)) for e in _failed[-limit:]]


app = FastAPI(title="webhooks")
app.include_router(router)


@app.get("/health")
async def health() -> dict[str, float]:
    return {"time": time.time()}


@app.get("/reconcile")
def reconcile() -> dict[str, int]:
    # loads a day of ledger lines to reconcile them (4-6 MB, dropped on return)
    ledger = [json.dumps({"line": i, "memo": "m" * 3000}) for i in range(random.randint(1300, 1900))]
    return {"lines": len(ledger), "bytes": sum(map(len, ledger))}


attach(app)
