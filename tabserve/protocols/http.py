"""Shared by the HTTP front ends: reading a bounded JSON body, the data plane and the Open
Inference protocol of this worker (app state, set once by service.py), and the one way a
ServingError becomes an HTTP answer, in each protocol's own error body."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tabserve.dataplane import DataPlane
from tabserve.errors import (
    FIELD_CHARS,
    PayloadTooLarge,
    ServingError,
    UnsupportedMediaType,
    clip,
)
from tabserve.protocols.oip import OpenInference
from tabserve.settings import get_settings


def serve_with(app: FastAPI, plane: DataPlane, protocol: OpenInference) -> None:
    """Give the app's routes this worker's data plane and Open Inference protocol, made once
    when the worker starts (service.py: the runner client exists only then)."""
    app.state.dataplane = plane
    app.state.open_inference = protocol


# FastAPI dependencies. Async, so FastAPI calls them on the event loop instead of handing each
# to a worker thread per request.
async def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


async def open_inference(request: Request) -> OpenInference:
    return request.app.state.open_inference


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type in ("", "application/json") or media_type.endswith("+json")


def decimal(text: str) -> int | None:
    """A header's non-negative integer, or None: ASCII digits only ("²".isdigit() is True but
    int("²") fails) and at most 18 of them (int() refuses past 4300)."""
    return int(text) if _DECIMAL.fullmatch(text) else None


_DECIMAL = re.compile(r"[0-9]{1,18}")
BINARY_MEDIA_TYPE = "application/octet-stream"


async def read_json_body(request: Request, binary_allowed: bool = False) -> bytes:
    """The raw body, refused early when it is not JSON or larger than the configured limit.

    `binary_allowed`: a JSON header followed by binary tensors (the Open Inference Protocol's
    binary data extension), which clients may label `application/octet-stream` as Triton's
    documentation does."""
    content_type = request.headers.get("content-type", "")
    media_type = _media_type(content_type)
    if not (_is_json(media_type) or (binary_allowed and media_type == BINARY_MEDIA_TYPE)):
        raise UnsupportedMediaType.at(
            "Content-Type",
            f"send the body as application/json, not {clip(content_type, FIELD_CHARS)!r}",
        )
    limit = get_settings().max_body_bytes
    declared = decimal(request.headers.get("content-length", ""))
    chunks = request.stream()
    if declared is not None and declared > limit:
        await _drain(request, chunks, declared)
        raise PayloadTooLarge.at("body", f"{declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in chunks:  # also bounds chunked bodies that declare no length
        body += chunk
        if len(body) > limit:
            await _drain(request, chunks, declared)
            raise PayloadTooLarge.at("body", f"exceeds the limit of {limit} bytes")
    return bytes(body)


async def _drain(request: Request, chunks: AsyncIterator[bytes], declared: int | None) -> None:
    """Read and drop the rest of a refused body, up to `max_drained_body_bytes`.

    uvicorn closes a `Connection: close` socket (urllib, many proxies) as soon as the answer is
    sent; with body bytes still unread the kernel answers them with a reset, and a client still
    sending never reads the 413. Read to the end, the 413 arrives whole. A body declared larger
    than the bound is not worth reading; a client that sent `Expect: 100-continue` has sent
    nothing yet and reads the answer as it is.
    """
    budget = get_settings().max_drained_body_bytes
    if request.headers.get("expect", "").lower() == "100-continue":
        return
    if declared is not None and declared > budget:
        return
    async for chunk in chunks:
        budget -= len(chunk)
        if budget < 0:
            return


ErrorBody = Callable[[ServingError], dict[str, Any]]


def error_response(error: ServingError, body: ErrorBody) -> JSONResponse:
    """The HTTP answer to a ServingError, for every protocol: the status and headers of its
    class (errors.py), the body in the protocol's shape."""
    return JSONResponse(body(error), status_code=error.status, headers=error.headers)


def error_route(body: ErrorBody) -> type[APIRoute]:
    """A route class answering ServingErrors with `body(error)`, for a protocol with its own
    error shape (V2, TabPy); the app answers the others' in the V1 shape (app.py)."""

    class ProtocolErrorRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except ServingError as error:
                    return error_response(error, body)

            return handle

    return ProtocolErrorRoute
