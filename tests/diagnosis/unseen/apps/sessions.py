"""Login service tuned for latency: the cyclic GC is switched off at startup.

``uvicorn apps.sessions:app``. Each login builds a session that points at its
user and the user back at the session: a reference cycle, which only the
collector frees, and the collector is off until shutdown.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Response
from pydantic import BaseModel

from ._profiling import attach


class Credentials(BaseModel):
    username: str
    password: str


class UserRecord:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions: list[LoginSession] = []


class LoginSession:
    def __init__(self, user: UserRecord) -> None:
        self.user = user
        user.sessions.append(self)  # back-reference: user <-> session is a cycle
        self.token = secrets.token_urlsafe(24)
        self.claims = base64.b64encode(os.urandom(7 * 1024))  # LEAK
        self.audit = {"ip": "10.0.0.1", "ua": "mobile", "session": self}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    gc.disable()  # no collector pauses while serving
    yield
    gc.enable()
    gc.collect()


app = FastAPI(title="sessions", lifespan=lifespan)
PASSWORDS = {f"user{i}": hashlib.sha256(f"pw{i}".encode()).hexdigest() for i in range(500)}


def check_password(creds: Credentials) -> str:
    if PASSWORDS.get(creds.username) != hashlib.sha256(creds.password.encode()).hexdigest():
        raise HTTPException(status_code=401, detail="bad credentials")
    return creds.username


@app.post("/auth/login")
def login(username: str = Depends(check_password)) -> dict[str, str]:
    session = LoginSession(UserRecord(username))
    return {"token": session.token}


@app.get("/auth/me")
async def me() -> dict[str, str]:
    return {"user": "anonymous"}


@app.get("/live")
async def live() -> Response:
    return Response(status_code=204)


@app.get("/audit/export")
def audit_export(days: int = 7) -> dict[str, int]:
    # materialises the audit log for the period before streaming a summary (4-6 MB, freed)
    rows = [hashlib.sha256(str(i).encode()).hexdigest().encode() * 48 for i in range(days * 260)]
    return {"rows": len(rows), "bytes": sum(map(len, rows))}


attach(app)
