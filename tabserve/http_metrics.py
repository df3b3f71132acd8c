"""HTTP request metrics labelled by route template, never by the raw path.

Two jobs, one rule (a path becomes the template of the route it matches, or `<unmatched>`):

* `RestMetricsMiddleware` counts and times every request our HTTP app answers
  (`tabserve_requests_total` / `tabserve_request_duration_seconds`, protocol="rest").
* `bound_endpoint_labels` rewrites BentoML's own `bentoml_service_*` series before `/metrics`
  serves them. BentoML labels them `endpoint=<raw request path>`, so every 404 probe or fuzzer
  path would add series for good (unbounded cardinality in Prometheus). BentoML's metrics
  middleware is the outermost layer of its app, so the path cannot be changed before it records;
  the exposition is the one place left. The per-process sample files still hold one entry per
  distinct raw path until the worker restarts; what Prometheus stores stays bounded.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tabserve import metrics

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
    whose routes carry the full paths: match against those."""
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
        status = 500  # what the client gets if the app raises before answering

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
        finally:
            seconds = time.perf_counter() - started
            method = metrics.http_method_label(scope["method"])
            metrics.record_request("rest", route, method, status, seconds)


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


def bound_endpoint_labels(exposition: str, label: Callable[[str], str]) -> str:
    """The exposition with every `endpoint` label replaced by `label(endpoint)`; samples that
    end up with the same labels are summed (counters, histogram buckets, in-progress gauges:
    all of BentoML's endpoint-labelled series are sums)."""
    families = list(text_string_to_metric_families(exposition))
    # One route match per distinct path, not per sample (a histogram has ~15 per path); the
    # cache lives for this call only, so junk paths cannot grow it.
    label = functools.cache(label)
    for family in families:
        if any("endpoint" in sample.labels for sample in family.samples):
            family.samples = _merged(family.samples, label)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry).decode()


def _merged(samples: Iterable[Sample], label: Callable[[str], str]) -> list[Sample]:
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in samples:
        labels = dict(sample.labels)
        if "endpoint" in labels:
            labels["endpoint"] = label(labels["endpoint"])
        key = (sample.name, tuple(labels.items()))
        totals[key] = totals.get(key, 0.0) + sample.value
    return [Sample(name, dict(labels), value) for (name, labels), value in totals.items()]


class _Fixed:
    """A collector that yields already-collected families (to reuse the text renderer)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families
