"""Who asked for the prediction being made: its protocol, request id and arrival time.

The protocol front ends set it when a request arrives (HTTP: `RequestContextMiddleware`, only
installed while payload logging is on; gRPC: the servicer) and the data plane reads it to log
the request's rows (tabserve.payloads), so no protocol route has to pass it down by hand.
A context variable: each request runs in its own task, with its own value.
"""

from __future__ import annotations

import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

# The header a client or a proxy (Envoy, nginx, Istio) names a request with.
REQUEST_ID_HEADER = "x-request-id"
# Client-chosen ids end up in files and CloudEvents headers: clipped, and printable ASCII only
# (any other is replaced by a new one).
MAX_REQUEST_ID_CHARS = 128

# HTTP path prefix -> the protocol it serves (the web page calls the V1 routes).
_HTTP_PROTOCOLS = (("/v1/", "v1"), ("/v2/", "v2"), ("/query/", "tabpy"), ("/evaluate", "tabpy"))


@dataclass(frozen=True)
class RequestContext:
    protocol: str  # v1, v2, grpc, tabpy; "unknown" for a prediction made outside a request
    given_id: str | None = None  # the client's X-Request-ID, if it sent one
    started: float = field(default_factory=time.perf_counter)

    @property
    def request_id(self) -> str:
        """The client's id, or a new random one, 32 hex digits (made only when asked: most
        requests are not logged)."""
        return self.given_id or secrets.token_hex(16)

    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


_current: ContextVar[RequestContext | None] = ContextVar("tabserve_request", default=None)


def current() -> RequestContext:
    return _current.get() or RequestContext("unknown")


def begin(protocol: str, given_id: str | None) -> None:
    """The request being handled in this task (and the tasks it starts) is this one."""
    usable = given_id and given_id.isascii() and given_id.isprintable()
    _current.set(RequestContext(protocol, given_id[:MAX_REQUEST_ID_CHARS] if usable else None))


def http_protocol(path: str) -> str:
    return next((name for prefix, name in _HTTP_PROTOCOLS if path.startswith(prefix)), "unknown")


class RequestContextMiddleware:
    """Sets the request context of every HTTP request: the protocol from the path, the id from
    the X-Request-ID header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next(
                (
                    value.decode("latin-1")
                    for name, value in scope["headers"]
                    if name == REQUEST_ID_HEADER.encode()
                ),
                None,
            )
            begin(http_protocol(scope["path"]), given)
        await self.app(scope, receive, send)
