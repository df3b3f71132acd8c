"""Shared by the HTTP front ends: reading a bounded JSON body, finding the data plane, and
answering errors in each protocol's own error body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tabserve.dataplane import DataPlane
from tabserve.errors import PayloadTooLarge, ServingError, UnsupportedMediaType
from tabserve.settings import get_settings


async def dataplane() -> DataPlane:
    """FastAPI dependency: the data plane of the running API service instance. Async, so
    FastAPI calls it on the event loop instead of handing it to a worker thread per request."""
    return bentoml.get_current_service().dataplane


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in ("", "application/json") or media_type.endswith("+json")


async def read_json_body(request: Request) -> bytes:
    """The raw body, refused early when it is not JSON or larger than the configured limit."""
    if not _is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType(
            f"unsupported Content-Type {request.headers['content-type']!r}; "
            "send the body as application/json"
        )
    limit = get_settings().max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():  # also bounds chunked bodies that declare no length
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def error_route(render: Callable[[ServingError], dict[str, Any]]) -> type[APIRoute]:
    """A route class answering ServingErrors with `render(error)` as the JSON body, so a
    protocol with its own error shape (V2, TabPy) keeps the status table of errors.py."""

    class ProtocolErrorRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except ServingError as error:
                    return JSONResponse(
                        render(error), status_code=error.status, headers=error.headers
                    )

            return handle

    return ProtocolErrorRoute
