"""Route templates for request records: bounded, never one key per raw path."""

from __future__ import annotations

from typing import Any

from ..schema import OTHER_ROUTE, UNMATCHED_ROUTE

__all__ = ["RouteNamer", "METHODS"]

METHODS = frozenset(
    {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "WS"}
)


def _walk(routes: Any, prefix: str, out: dict[int, tuple[object, str]]) -> None:
    for route in routes or ():
        fmt = getattr(route, "path_format", None)
        if fmt is None:
            continue
        sub = getattr(route, "routes", None)
        if sub:  # a Mount around a router: recurse with its prefix
            _walk(sub, prefix + getattr(route, "path", ""), out)
        for target in (getattr(route, "endpoint", None), getattr(route, "app", None)):
            if target is not None and id(target) not in out:
                out[id(target)] = (target, prefix + fmt)


class RouteNamer:
    """Maps what the router left in the scope to a template like ``/items/{item_id}``.

    FastAPI puts the matched route in ``scope["route"]``; plain Starlette only
    leaves ``scope["endpoint"]``, which is looked up in a walk of the app's
    routes. Distinct templates are capped so memory stays bounded.
    """

    def __init__(self, app: object, max_routes: int = 1000) -> None:
        self._app = app
        self._max_routes = max_routes
        self._cache: dict[tuple[int, str, str], str] = {}
        self._keep: list[object] = []  # keeps cached ids from being reused
        self._endpoints: dict[int, tuple[object, str]] | None = None

    def _endpoint_map(self) -> dict[int, tuple[object, str]]:
        if self._endpoints is None:
            out: dict[int, tuple[object, str]] = {}
            router = getattr(self._app, "router", self._app)
            try:
                _walk(getattr(router, "routes", None), "", out)
            except Exception:
                pass
            self._endpoints = out
        return self._endpoints

    def name(self, route: object, endpoint: object, root_after: str, root_before: str) -> str:
        target = route if route is not None else endpoint
        if target is None:
            return UNMATCHED_ROUTE
        key = (id(target), root_after, root_before)
        template = self._cache.get(key)
        if template is not None:
            return template
        if len(self._cache) >= self._max_routes:
            return OTHER_ROUTE
        if route is not None:
            fmt = getattr(route, "path_format", None) or getattr(route, "path", None)
            prefix = ""
            if root_after and root_after.startswith(root_before or ""):
                prefix = root_after[len(root_before or ""):]
            template = prefix + fmt if isinstance(fmt, str) else UNMATCHED_ROUTE
        else:
            hit = self._endpoint_map().get(id(endpoint))
            template = hit[1] if hit is not None and hit[0] is endpoint else UNMATCHED_ROUTE
        self._cache[key] = template
        self._keep.append(target)
        return template
