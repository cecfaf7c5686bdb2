"""Notification fan-out: subscribing starts a background delivery task per subscriber.

``uvicorn apps.notifications:app``. Each delivery task waits for the
subscriber's "ready" signal, which the mobile client never sends in practice.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid

from fastapi import APIRouter, BackgroundTasks, FastAPI
from pydantic import BaseModel, Field

from ._profiling import attach


class Subscription(BaseModel):
    user_id: int
    topics: list[str] = Field(default_factory=list)
    device_token: str


class Notification(BaseModel):
    topic: str
    title: str
    body: str


class _Inbox:
    """Per-subscriber state the delivery task keeps while it waits."""

    def __init__(self, sub: Subscription) -> None:
        self.ready = asyncio.Event()
        self.outbox = bytearray(6 * 1024)  # LEAK
        self.sub = sub


_deliveries: set[asyncio.Task[None]] = set()
_sent: list[str] = []
router = APIRouter(prefix="/v1")


async def deliver_when_ready(inbox: _Inbox) -> None:
    await inbox.ready.wait()  # set by a device callback that never comes
    inbox.outbox.clear()


@router.post("/subscriptions", status_code=202)
async def subscribe(sub: Subscription) -> dict[str, str]:
    inbox = _Inbox(sub)
    task = asyncio.create_task(deliver_when_ready(inbox), name=f"deliver-{sub.user_id}")
    _deliveries.add(task)
    task.add_done_callback(_deliveries.discard)
    return {"subscription": uuid.uuid4().hex}


@router.get("/notifications")
async def recent(limit: int = 10) -> list[str]:
    return _sent[-limit:]


@router.post("/notifications/preview")
def preview(note: Notification) -> dict[str, int]:
    # renders the notification for every device profile, then keeps only the sizes (4-6 MB)
    profiles = random.randint(900, 1400)
    rendered = [json.dumps({"p": p, "n": note.model_dump(), "pad": "." * 4000}) for p in range(profiles)]
    return {"profiles": profiles, "bytes": sum(map(len, rendered))}


def _record_sent(topic: str) -> None:
    _sent.append(topic)
    del _sent[:-100]


@router.post("/notifications", status_code=202)
async def publish(note: Notification, tasks: BackgroundTasks) -> dict[str, bool]:
    tasks.add_task(_record_sent, note.topic)
    return {"queued": True}


app = FastAPI(title="notifications")
app.include_router(router)


@app.get("/status")
async def status() -> dict[str, int]:
    return {"deliveries_pending": len(_deliveries)}


attach(app)
