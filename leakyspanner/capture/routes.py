"""Owns ``RouteNamer``'s route-template cache, filled on the event loop's thread, read by the sampler.

Route templates for request records: bounded, never one key per raw path.
"""

from __future__ import annotations

from typing import Any

from ..schema import OTHER_ROUTE, UNMATCHED_ROUTE

__all__ = ["RouteNamer", "METHODS"]

METHODS = frozenset(
    {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "WS"}
)


def _walk(routes: Any, prefix: str, out: dict[int, tuple[object, str]]) -> None:
    """Full templates (mount prefixes included) keyed by id of each route, endpoint and app."""
    for route in routes or ():
        fmt = getattr(route, "path_format", None)
        if fmt is None:
            continue
        sub = getattr(route, "routes", None)
        if sub:  # a Mount around a router: recurse with its prefix template
            _walk(sub, prefix + fmt[: -len("/{path}")] if fmt.endswith("/{path}") else prefix, out)
        for target in (route, getattr(route, "endpoint", None), getattr(route, "app", None)):
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
        self._walked: dict[int, str] = {}
        self._keep: list[object] = []  # keeps cached ids from being reused
        self._endpoints: dict[int, tuple[object, str]] | None = None
        #: every route, endpoint or app named so far by id, with its latest template: routers
        #: the walk cannot see into (FastAPI's lazily included routers) are found here
        self._named: dict[int, tuple[object, str]] = {}

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

    def name_by_id(self, target_id: int) -> str | None:
        """The template of a route, endpoint or app known only by its id (the heap engine stores addresses)."""
        template = self._walked.get(target_id)
        if template is not None:
            return template
        hit = self._named.get(target_id) or self._endpoint_map().get(target_id)
        return hit[1] if hit is not None else None

    def code_ranges(self, limit: int = 1000) -> list[dict[str, object]]:
        """Per route, where its endpoint function's code lives: a growing site inside
        that range belongs to that endpoint even when nothing else tells."""
        out: list[dict[str, object]] = []
        seen: set[int] = set()
        for target, template in [*self._endpoint_map().values(), *list(self._named.values())]:
            endpoint = getattr(target, "endpoint", None)
            code = getattr(endpoint, "__code__", None)
            if code is None or id(code) in seen:
                continue
            seen.add(id(code))
            lines = [line for _, _, line in code.co_lines() if line is not None]
            methods = sorted(getattr(target, "methods", None) or ()) or [""]
            for method in methods:
                out.append({"method": method, "route": template, "file": code.co_filename,
                            "first_line": code.co_firstlineno, "last_line": max(lines, default=code.co_firstlineno),
                            "function": getattr(code, "co_qualname", code.co_name)})
            if len(out) >= limit:
                break
        return out

    def is_static(self, route: object, endpoint: object) -> bool:
        """True when the template of this target never depends on the root path."""
        return id(route if route is not None else endpoint) in self._walked

    def name(self, route: object, endpoint: object, root_after: str, root_before: str) -> str:
        target = route if route is not None else endpoint
        if target is None:
            return UNMATCHED_ROUTE
        template = self._walked.get(id(target))
        if template is not None:  # full template from the walk: the raw root path does not matter
            return template
        key = (id(target), root_after, root_before)
        template = self._cache.get(key)
        if template is not None:
            return template
        if len(self._cache) >= self._max_routes:
            return OTHER_ROUTE
        known = self._endpoint_map()
        hit = known.get(id(route)) if route is not None else None
        if hit is None or hit[0] is not route:
            hit = known.get(id(endpoint)) if endpoint is not None else None
            if hit is not None and hit[0] is not endpoint:
                hit = None
        if hit is not None:
            template = hit[1]
            self._walked[id(target)] = template
            self._keep.append(target)
            return template
        elif route is not None and isinstance(getattr(route, "path_format", None), str):
            # a route added after the walk: its own template under the mount's raw prefix
            prefix = ""
            if root_after and root_after.startswith(root_before or ""):
                prefix = root_after[len(root_before or ""):]
            template = prefix + route.path_format  # type: ignore[attr-defined]
        else:
            template = UNMATCHED_ROUTE
        self._cache[key] = template
        self._keep.append(target)
        if template != UNMATCHED_ROUTE:
            self._named[id(target)] = (target, template)
        return template

    @property
    def named_count(self) -> int:
        """How many routes were named outside the walk: a new one means a new routes record."""
        return len(self._named)
