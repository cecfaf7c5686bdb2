"""The scenarios: which app, how its traffic looks, and what the truth is.

Each app has a cheap endpoint that is the busiest, a transient allocator
(4-6 MB per call, freed; ``search`` has a 20 MB one instead) and at most one
leaker, which is never the busiest. Endpoint names are what leakyspanner
calls them: ``"METHOD /route/template"`` with router prefixes included.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SCENARIOS", "Call", "Endpoint", "Scenario", "scenario"]


@dataclass(frozen=True)
class Call:
    """One request, as ``httpx.AsyncClient.request`` takes it."""

    method: str
    url: str
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Endpoint:
    name: str                                          # "POST /orders", as the verdict names it
    weight: float                                      # share of requests in the steady mix
    build: Callable[[random.Random, int], Call]        # (rng, sequence number) -> the request


@dataclass(frozen=True)
class Scenario:
    name: str
    module: str                                        # uvicorn import path, relative to this directory
    what: str                                          # one line for tables
    endpoints: tuple[Endpoint, ...]
    leaker: str | None                                 # the endpoint whose calls leak (None: no leak)
    kinds: frozenset[str] = frozenset()                # acceptable first-named kinds
    required_kinds: frozenset[str] = frozenset()       # kinds that must all be named
    python_stack: bool = True                          # a Python stack reaches the leak: the line must be named
    control: bool = False                              # must not be called leaking
    watch: str | None = None                           # control: the endpoint to measure bytes/call against
    transient: str | None = None                       # the endpoint that allocates a lot and frees it
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def busiest(self) -> str:
        return max(self.endpoints, key=lambda e: e.weight).name

    @property
    def measured(self) -> str | None:
        """The endpoint outside bytes per call are computed against."""
        return self.leaker or self.watch


def _get(url: str, **params: Any) -> Callable[[random.Random, int], Call]:
    return lambda rng, n: Call("GET", url, params=params or None)


# -- 1. module-level list in a service function ------------------------------------------
_BEARER = {"Authorization": "Bearer alice"}


def _order(rng: random.Random, n: int) -> Call:
    items = [{"sku": f"SKU-{rng.randrange(200):04d}", "qty": rng.randint(1, 9),
              "unit_price": round(rng.uniform(1, 80), 2)} for _ in range(rng.randint(90, 110))]
    body = {"customer_id": rng.randrange(10_000), "items": items, "coupon": rng.choice([None, "WELCOME10"]),
            "shipping_address": f"{n} Main Street, Springfield"}
    return Call("POST", "/orders", json=body, headers=_BEARER)


ORDERS = Scenario(
    "global_list", "apps.orders.main", "module-level list appended in a service function",
    (Endpoint("GET /health", 0.34, _get("/health")),
     Endpoint("GET /catalog/products", 0.2, lambda rng, n: Call("GET", "/catalog/products",
                                                                params={"limit": rng.randint(5, 40)})),
     Endpoint("GET /catalog/products/{sku}", 0.16, lambda rng, n: Call("GET", f"/catalog/products/SKU-{rng.randrange(200):04d}")),
     Endpoint("POST /orders", 0.18, _order),
     Endpoint("GET /reports/daily", 0.12, lambda rng, n: Call("GET", "/reports/daily", headers=_BEARER))),
    leaker="POST /orders", kinds=frozenset({"python_heap"}), transient="GET /reports/daily")

# -- 2. unbounded lru_cache keyed by request data --------------------------------------------
PRICING = Scenario(
    "lru_cache", "apps.pricing", "functools.lru_cache(maxsize=None) keyed by request data",
    (Endpoint("GET /ping", 0.35, _get("/ping")),
     Endpoint("GET /skus", 0.22, lambda rng, n: Call("GET", "/skus", params={"prefix": f"P{rng.randrange(2)}"})),
     Endpoint("GET /quote", 0.18, lambda rng, n: Call("GET", "/quote", params={
         "sku": f"P{rng.randrange(120):03d}", "qty": rng.randint(1, 10**6), "region": rng.choice(["eu", "us"]),
         "customer_id": rng.randrange(10**6)})),
     Endpoint("POST /imports", 0.12, lambda rng, n: Call("POST", "/imports", json={
         "rows": [f"P{i:03d};{rng.random():.6f};" + "r" * 80 for i in range(rng.randint(35, 52))]}))),
    leaker="GET /quote", kinds=frozenset({"python_heap"}), transient="POST /imports")

# -- 3. asyncio tasks never finished ------------------------------------------------------------------
NOTIFICATIONS = Scenario(
    "tasks", "apps.notifications", "asyncio tasks awaiting an Event never set",
    (Endpoint("GET /status", 0.34, _get("/status")),
     Endpoint("GET /v1/notifications", 0.2, _get("/v1/notifications", limit=10)),
     Endpoint("POST /v1/notifications", 0.14, lambda rng, n: Call("POST", "/v1/notifications", json={
         "topic": rng.choice(["news", "deals"]), "title": "Hello", "body": "x" * 200})),
     Endpoint("POST /v1/subscriptions", 0.2, lambda rng, n: Call("POST", "/v1/subscriptions", json={
         "user_id": n, "topics": ["news"], "device_token": f"tok-{n:08d}"})),
     Endpoint("POST /v1/notifications/preview", 0.12, lambda rng, n: Call("POST", "/v1/notifications/preview", json={
         "topic": "news", "title": "Preview", "body": "y" * 100}))),
    leaker="POST /v1/subscriptions", kinds=frozenset({"asyncio_tasks"}),
    transient="POST /v1/notifications/preview")

# -- 4. unclosed clients: a socket and a native buffer each --------------------------------------------
_CHECKSUM_BODY = bytes(range(256)) * 900  # ~230 KB upload; the endpoint makes 24 copies' worth


GATEWAY = Scenario(
    "unclosed_clients", "apps.gateway", "a client per request (UDP socket + 64 KB malloc) never closed",
    (Endpoint("GET /healthz", 0.36, _get("/healthz")),
     Endpoint("GET /routes", 0.22, _get("/routes")),
     Endpoint("GET /proxy/{service}/{path}", 0.2, lambda rng, n: Call(
         "GET", f"/proxy/{rng.choice(['users', 'billing', 'search'])}/v1/items/{rng.randrange(10**6)}")),
     Endpoint("POST /echo/checksum", 0.12, lambda rng, n: Call("POST", "/echo/checksum", content=_CHECKSUM_BODY))),
    leaker="GET /proxy/{service}/{path}", kinds=frozenset({"file_descriptors", "native"}),
    required_kinds=frozenset({"file_descriptors", "native"}), python_stack=False, transient="POST /echo/checksum",
    notes=("the leaked memory is malloc'd through ctypes: no Python allocator sees it",))

# -- 5. native malloc without free --------------------------------------------------------------------------
_IMAGE = bytes(range(256)) * 40

THUMBNAILS = Scenario(
    "native_malloc", "apps.thumbnails", "ctypes libc.malloc + memset, never freed (100 KB per call)",
    (Endpoint("GET /", 0.34, _get("/")),
     Endpoint("GET /images/formats", 0.22, _get("/images/formats")),
     Endpoint("POST /images/thumbnails", 0.18, lambda rng, n: Call(
         "POST", "/images/thumbnails", params={"name": f"img{n}.png", "width": 160, "height": 160}, content=_IMAGE)),
     Endpoint("GET /images/contact-sheet", 0.12, _get("/images/contact-sheet"))),
    leaker="POST /images/thumbnails", kinds=frozenset({"native"}), python_stack=False,
    transient="GET /images/contact-sheet")

# -- 6. reference cycles with gc disabled -------------------------------------------------------------------
SESSIONS = Scenario(
    "gc_cycles", "apps.sessions", "user<->session cycles (~10 KB) with gc.disable() in the lifespan",
    (Endpoint("GET /live", 0.34, _get("/live")),
     Endpoint("GET /auth/me", 0.22, _get("/auth/me")),
     Endpoint("POST /auth/login", 0.18, lambda rng, n: Call("POST", "/auth/login", json={
         "username": f"user{(i := rng.randrange(500))}", "password": f"pw{i}"})),
     Endpoint("GET /audit/export", 0.12, lambda rng, n: Call("GET", "/audit/export", params={"days": rng.randint(5, 7)}))),
    leaker="POST /auth/login", kinds=frozenset({"python_heap", "gc_cycles", "gc_disabled", "reference_cycles"}),
    transient="GET /audit/export",
    notes=("gc is disabled for every request, so any endpoint's own cyclic garbage also stays",))


# -- 7a. caught exceptions kept with their frames (allocated inside json and uvicorn) -------------------------
def _webhook(rng: random.Random, n: int) -> Call:
    kind = "invoice.upcoming" if rng.random() < 0.7 else "charge.succeeded"
    event = {"id": f"evt_{n:010d}", "type": kind,
             "data": {"object": {"id": f"in_{n}", "lines": "line-item;" * 1600, "amount": rng.randrange(10**5)}}}
    raw = json.dumps(event).encode()
    signature = hmac.new(b"whsec_test", raw, hashlib.sha256).hexdigest()
    return Call("POST", "/webhooks/payments", content=raw,
                headers={"stripe-signature": signature, "content-type": "application/json"})


WEBHOOKS = Scenario(
    "exception_frames", "apps.webhooks", "caught exceptions kept in a list, each holding frames (json-decoded body)",
    (Endpoint("GET /health", 0.34, _get("/health")),
     Endpoint("GET /webhooks/retries", 0.22, _get("/webhooks/retries", limit=5)),
     Endpoint("POST /webhooks/payments", 0.2, _webhook),
     Endpoint("GET /reconcile", 0.12, _get("/reconcile"))),
    leaker="POST /webhooks/payments", kinds=frozenset({"python_heap"}), transient="GET /reconcile",
    notes=("70% of events are rejected and kept; the bytes are allocated by json and the server, not the app",))

# -- 7b. Prometheus metrics labelled by raw path ---------------------------------------------------------------
METRICS = Scenario(
    "metrics_labels", "apps.files", "prometheus_client Counter/Histogram labelled by the raw path",
    (Endpoint("GET /up", 0.34, _get("/up")),
     Endpoint("GET /folders/{folder}", 0.22, lambda rng, n: Call("GET", f"/folders/team-{rng.randrange(8)}")),
     Endpoint("GET /files/{file_id}", 0.2, lambda rng, n: Call("GET", f"/files/{rng.getrandbits(64):016x}")),
     Endpoint("POST /archive", 0.12, lambda rng, n: Call("POST", "/archive"))),
    leaker="GET /files/{file_id}", kinds=frozenset({"python_heap"}), transient="POST /archive",
    notes=("the bytes are allocated inside prometheus_client, called from the app's middleware",))

# -- 8. slow leak under +-20 MB transient swings ---------------------------------------------------------------
SEARCH = Scenario(
    "slow_leak_noisy", "apps.search", "10 KB per call kept in a history, under 20 MB held for 0.5-2 s",
    (Endpoint("GET /ready", 0.36, _get("/ready")),
     Endpoint("GET /api/suggest", 0.24, lambda rng, n: Call("GET", "/api/suggest", params={"prefix": "doc"})),
     Endpoint("GET /api/search", 0.2, lambda rng, n: Call("GET", "/api/search", params={
         "q": rng.choice(["python", "memory", "leaks", "fastapi", "uvicorn", "asyncio"]),
         "user": f"u{rng.randrange(50)}"})),
     Endpoint("GET /api/history/{user}", 0.12, lambda rng, n: Call("GET", f"/api/history/u{rng.randrange(50)}")),
     Endpoint("POST /api/export", 0.08, lambda rng, n: Call("POST", "/api/export"))),
    leaker="GET /api/search", kinds=frozenset({"python_heap"}), transient="POST /api/export",
    notes=("the export holds an anonymous mmap, so the 20 MB really comes and goes in RSS",))

# -- 9. control: bounded cache that warms up by ~90 MB ------------------------------------------------------
CATALOG = Scenario(
    "bounded_cache", "apps.catalog", "control: 60 x 1.5 MB cache, warms up by ~90 MB then evicts",
    (Endpoint("GET /ok", 0.32, _get("/ok")),
     Endpoint("GET /products", 0.16, lambda rng, n: Call("GET", "/products", params={"page": rng.randint(1, 5)})),
     Endpoint("GET /products/{product_id}", 0.14, lambda rng, n: Call("GET", f"/products/{rng.randrange(1000)}")),
     Endpoint("GET /products/{product_id}/image", 0.26, lambda rng, n: Call(
         "GET", f"/products/{rng.randrange(64)}/image", params={"width": 800})),
     Endpoint("GET /sitemap.xml", 0.12, _get("/sitemap.xml"))),
    leaker=None, control=True, watch="GET /products/{product_id}/image", transient="GET /sitemap.xml")

# -- 10. control: no leak ---------------------------------------------------------------------------------------
BLOG = Scenario(
    "no_leak", "apps.blog", "control: no leak, a mix with a 4-6 MB transient allocator",
    (Endpoint("GET /healthz", 0.34, _get("/healthz")),
     Endpoint("GET /posts", 0.2, _get("/posts")),
     Endpoint("GET /posts/{slug}", 0.2, lambda rng, n: Call("GET", f"/posts/post-{rng.randrange(30)}")),
     Endpoint("POST /posts/{slug}/comments", 0.14, lambda rng, n: Call(
         "POST", f"/posts/post-{rng.randrange(30)}/comments",
         json={"post": "p", "author": f"reader{n % 97}", "text": "nice post " * 30})),
     Endpoint("GET /feed.xml", 0.12, _get("/feed.xml"))),
    leaker=None, control=True, watch="POST /posts/{slug}/comments", transient="GET /feed.xml")

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    ORDERS, PRICING, NOTIFICATIONS, GATEWAY, THUMBNAILS, SESSIONS, WEBHOOKS, METRICS, SEARCH, CATALOG, BLOG)}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; ValueError names the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
