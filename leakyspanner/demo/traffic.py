"""Mixed, paced, concurrent traffic for the demo app, to a loopback address only.

The mix mirrors a real service: ``/health`` is by far the busiest endpoint,
the leaking ``/ocr/process`` is one of the quietest, and most ``/search``
queries are distinct. Like real traffic the mix drifts: every few seconds each
endpoint but ``/health`` gets a new random share (0 to 2 times its weight),
so memory growth can be told apart per endpoint. Requests are paced at
``rate_per_s`` so a run's memory (and its log files) stay bounded, and stop at
``seconds`` or ``max_requests``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ENDPOINT_WEIGHTS", "check_loopback_url", "run_traffic"]

#: endpoint (as the summary names it) -> share of requests
ENDPOINT_WEIGHTS: dict[str, int] = {
    "GET /health": 50,
    "GET /items/{item_id}": 20,
    "GET /search": 12,
    "GET /report": 7,
    "POST /ocr/process": 6,
    "GET /stream": 5,
}
_PHASE_S = 3.0
_POPULAR_QUERIES = ("invoice", "receipt 2024", "passport scan", "bank statement", "tax form")
_WORDS = ("invoice", "receipt", "contract", "payslip", "claim", "order", "statement", "form", "card")


def check_loopback_url(base_url: str) -> str:
    """Return ``base_url`` without a trailing slash; ValueError unless it is http(s) on a loopback host."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"base_url must look like http://127.0.0.1:8000, got {base_url!r}")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ValueError(
            f"demo traffic only goes to this machine: {host!r} in {base_url!r} is not a loopback "
            "address; use 127.0.0.1, ::1 or localhost"
        )
    return base_url.rstrip("/")


def _phase_weights(rng: random.Random, phases: int) -> list[list[float]]:
    """Per phase, the endpoint weights: /health steady, the others scaled by 0..2."""
    return [[w if name == "GET /health" else w * rng.uniform(0.0, 2.0) for name, w in ENDPOINT_WEIGHTS.items()]
            for _ in range(phases)]


def _request_for(endpoint: str, rng: random.Random, n: int) -> tuple[str, str, dict[str, Any]]:
    """(method, path, httpx keyword arguments) for one request to ``endpoint``."""
    if endpoint == "GET /items/{item_id}":
        return "GET", f"/items/{rng.randint(1, 100)}", {}
    if endpoint == "GET /search":
        if rng.random() < 0.2:
            query = rng.choice(_POPULAR_QUERIES)
        else:  # distinct: the unbounded cache gets a new entry
            query = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} #{n}-{rng.randrange(10**6)}"
        return "GET", "/search", {"params": {"q": query}}
    if endpoint == "GET /report":
        return "GET", "/report", {"params": {"days": rng.randint(1, 90)}}
    if endpoint == "POST /ocr/process":
        doc = {"document_id": f"doc-{n}-{rng.randrange(10**6)}", "text_hint": rng.choice(_WORDS) + " page"}
        return "POST", "/ocr/process", {"json": doc}
    if endpoint == "GET /stream":
        return "GET", "/stream", {}
    return "GET", "/health", {}


async def _drive(
    base_url: str, seconds: float, concurrency: int, seed: int, rate_per_s: float, max_requests: int,
) -> dict[str, Any]:
    import httpx

    rng = random.Random(seed)
    endpoints = list(ENDPOINT_WEIGHTS)
    phases = _phase_weights(random.Random(seed + 1), int(seconds // _PHASE_S) + 1)
    counts = dict.fromkeys(endpoints, 0)
    errors = dict.fromkeys(endpoints, 0)
    next_slot = 0
    start = time.monotonic()
    deadline = start + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_slot
        while True:
            n = next_slot
            due = start + n / rate_per_s
            if n >= max_requests or due >= deadline or time.monotonic() >= deadline:
                return  # late requests are dropped, so a slow server cannot stretch the run
            next_slot += 1
            endpoint = rng.choices(endpoints, phases[int((due - start) // _PHASE_S)])[0]
            method, path, kwargs = _request_for(endpoint, rng, n)
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            counts[endpoint] += 1
            try:
                response = await client.request(method, path, **kwargs)
                if response.status_code >= 400:
                    errors[endpoint] += 1
            except httpx.HTTPError:
                errors[endpoint] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # trust_env=False: a proxy from the environment must never see demo traffic
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return {
        "requests": sum(counts.values()),
        "errors": sum(errors.values()),
        "duration_s": round(time.monotonic() - start, 3),
        "by_endpoint": {k: v for k, v in counts.items() if v},
        "errors_by_endpoint": {k: v for k, v in errors.items() if v},
    }


def run_traffic(
    base_url: str,
    seconds: float,
    concurrency: int = 8,
    seed: int = 0,
    *,
    rate_per_s: float = 150.0,
    max_requests: int = 100_000,
) -> dict[str, Any]:
    """Send mixed demo traffic to ``base_url`` for ``seconds``; blocks, returns the counts.

    Returns ``requests``, ``errors`` (status >= 400 or transport errors),
    ``duration_s``, and per endpoint ``by_endpoint`` / ``errors_by_endpoint``
    keyed like ``"GET /items/{item_id}"``. Runs its own event loop, so call
    it from synchronous code. Refuses a non-loopback ``base_url`` (ValueError).
    """
    base_url = check_loopback_url(base_url)
    for name, value, minimum in (("seconds", seconds, 0.0), ("rate_per_s", rate_per_s, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > minimum:
            raise ValueError(f"{name} must be a number > {minimum}, got {value!r}")
    for name, count in (("concurrency", concurrency), ("max_requests", max_requests)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
    return asyncio.run(_drive(base_url, float(seconds), concurrency, seed, float(rate_per_s), max_requests))
