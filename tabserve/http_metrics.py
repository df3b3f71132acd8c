"""HTTP request metrics labelled by route template, never by the raw path.

Two jobs, one rule (a path becomes the template of the route it matches, or `<unmatched>`):

* `RestMetricsMiddleware` counts and times every request our HTTP app answers
  (`tabserve_requests_total` / `tabserve_request_duration_seconds`, protocol="rest").
* `endpoint_labeller` gives BentoML's own `bentoml_service_*` series their `endpoint` label
  (bentoml_runtime.bound_metric_paths). BentoML labels them with the raw request path, so every
  404 probe or fuzzer path would add samples to the per-process files and series to Prometheus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tabserve import metrics

# What BentoML answers when a request's deadline (its traffic.timeout) expires first.
DEADLINE_STATUS = 504
# Routes BentoML itself serves on a service's port (its Starlette app, outside our FastAPI app).
BENTOML_ROUTES = frozenset(
    {"/", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json"}
)


def route_template(routes: Sequence[BaseRoute], scope: Scope, any_method: bool = False) -> str:
    """The template of the route the request matches ('/v1/models/{model_name}'), as Starlette's
    router picks it: the first full match, else the first partial one (wrong method: a 405).
    `any_method`: the first route whose path matches, whatever the method."""
    partial: str | None = None
    for route in _leaf_routes(routes):
        match, _ = route.matches(scope)
        if match is Match.FULL or (any_method and match is Match.PARTIAL):
            return _template(route)
        if match is Match.PARTIAL and partial is None:
            partial = _template(route)
    return partial or metrics.UNMATCHED_ROUTE


def _leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """FastAPI (0.120+) keeps an included router as one entry wrapping the original router,
    whose routes carry the full paths: match against those. `original_router` is not public
    API and FastAPI offers none for it; tests/test_metrics.py sends a path of every router and
    fails, naming this function, if an upgrade moves it."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is None:
            yield route
        else:
            yield from _leaf_routes(included.routes)


def _template(route: BaseRoute) -> str:
    return getattr(route, "path_format", None) or getattr(route, "path", metrics.UNMATCHED_ROUTE)


class RestMetricsMiddleware:
    """Pure ASGI middleware (no body buffering); add it last so it is outermost and also sees
    the answers of the middleware inside it (e.g. 401 from the token check)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None  # until the app answers

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # Before the call: routing rewrites the scope (a mount changes root_path).
        route = route_template(self.routes, scope)
        started = time.perf_counter()
        try:
            with metrics.requests_in_progress("rest"):
                await self.app(scope, receive, send_and_note_status)
        except asyncio.CancelledError:
            # Cancelled before it answered: the request deadline expired. BentoML's deadline
            # middleware (bentoml_runtime._RequestDeadlineMiddleware) cancels the app and
            # answers 504 itself; that is what the client got, not the 500 of a bug.
            status = status or DEADLINE_STATUS
            raise
        finally:
            seconds = time.perf_counter() - started
            method = metrics.http_method_label(scope["method"])
            # 500: what the client gets when the app raises before answering.
            metrics.record_request("rest", route, method, status or 500, seconds)


def endpoint_labeller(
    routes: Sequence[BaseRoute], known_paths: Iterable[str]
) -> Callable[[str], str]:
    """Raw path -> bounded `endpoint` value: a known literal path stays, a path of our app
    becomes its route template, anything else `<unmatched>`."""
    known = BENTOML_ROUTES | frozenset(known_paths)

    def label(path: str) -> str:
        if path in known:
            return path
        scope = {"type": "http", "path": path, "method": "GET"}
        return route_template(routes, scope, any_method=True)

    return label
