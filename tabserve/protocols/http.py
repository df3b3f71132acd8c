"""Shared by the HTTP front ends: reading a bounded JSON body, finding the data plane."""

from __future__ import annotations

import bentoml
from starlette.requests import Request

from tabserve.dataplane import DataPlane
from tabserve.errors import PayloadTooLarge, UnsupportedMediaType
from tabserve.settings import get_settings


def dataplane() -> DataPlane:
    """FastAPI dependency: the data plane of the running API service instance."""
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
