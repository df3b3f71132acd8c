"""Optional API authentication: a bearer token (setting `api_token`, env `TABSERVE_API_TOKEN`,
or read at start-up from the file `TABSERVE_API_TOKEN_FILE` names, e.g. a mounted Secret).

When no token is configured everything is open. When one is, every route of our HTTP app needs
`Authorization: Bearer <token>` except the few listed in `OPEN_PATHS` (documentation, the web
page's static assets, health). HTTP Basic with the token as password (any user name) is taken
too: Tableau's TabPy connection and the TabPy client can only send a user name and password.
BentoML's own routes (/livez, /readyz, /metrics) and the metrics port never reach this app, so
probes and Prometheus scrapes never need the token. The gRPC server's interceptor
(tabserve/protocols/grpc/server.py) calls `token_is_valid` on a call's `authorization` metadata,
before the message is parsed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from http import HTTPStatus

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tabserve.schemas import ErrorDetail, ErrorResponse
from tabserve.settings import get_settings

# Path prefixes served without a token: nothing here predicts or reveals a model's data.
OPEN_PATHS = ("/ui", "/v1/docs", "/v1/openapi.json", "/v2/health/")


def _offered_token(authorization_header: str) -> str | None:
    """The token in `Bearer <token>`, or the password in `Basic base64(user:password)`."""
    scheme, _, credentials = authorization_header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon else None
    return None


def token_is_valid(authorization_header: str | None) -> bool:
    """True when no token is configured, or the header carries it (Bearer, or Basic password).

    The comparison takes the same time whatever the offered token, so the token cannot be
    guessed character by character from response times.
    """
    expected = get_settings().api_token
    if expected is None:
        return True
    offered = _offered_token(authorization_header or "")
    if offered is None:
        return False
    return hmac.compare_digest(offered.encode(), expected.get_secret_value().encode())


def _is_open(path: str) -> bool:
    # `/` only redirects to the web page; as a prefix it would open every route.
    return path == "/" or path.startswith(OPEN_PATHS)


def _unauthorized(authorization_header: str | None) -> JSONResponse:
    reason = (
        "missing Authorization header; send 'Authorization: Bearer <token>'"
        if authorization_header is None
        else "the bearer token is not valid"
    )
    body = ErrorResponse(
        error="authentication required", details=[ErrorDetail(field="Authorization", reason=reason)]
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=HTTPStatus.UNAUTHORIZED,
        headers={"WWW-Authenticate": 'Bearer realm="tabserve"'},
    )


class BearerTokenMiddleware:
    """ASGI middleware refusing unauthenticated HTTP requests with 401 and a JSON error.

    A plain ASGI class rather than Starlette's BaseHTTPMiddleware: it never buffers or wraps the
    response, so streaming and request-body limits downstream behave as without it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.enabled = get_settings().api_token is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or _is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = _authorization_header(scope)
        if token_is_valid(header):
            await self.app(scope, receive, send)
            return
        await _unauthorized(header)(scope, receive, send)


def _authorization_header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return None
