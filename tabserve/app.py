"""The HTTP application of the API service: routers, the error table, the OpenAPI document."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tabserve import __version__
from tabserve.auth import BearerTokenMiddleware
from tabserve.catalog import MODELS
from tabserve.errors import InvalidInput, ServingError
from tabserve.http_metrics import RestMetricsMiddleware
from tabserve.protocols import repository, tabpy, v1, v2
from tabserve.protocols.http import error_response
from tabserve.runner_calls import CallerHungUp
from tabserve.schemas import ErrorResponse, request_model
from tabserve.web import mount_pages

logger = logging.getLogger(__name__)


def _error_body(error: ServingError) -> dict[str, Any]:
    """The error body of V1 and of every route without its own (the web pages, FastAPI's own
    checks); V2 and TabPy routes answer in their protocol's body (http.error_route)."""
    return error.to_response().model_dump(exclude_none=True)


def _plain_error(
    text: str, status_code: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=text).model_dump(exclude_none=True), status_code, headers
    )


async def _serving_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServingError)
    return error_response(error, _error_body)


async def _request_validation_error(_: Request, error: Exception) -> JSONResponse:
    """FastAPI's own checks (path and query parameters), in our error shape."""
    assert isinstance(error, RequestValidationError)
    return error_response(InvalidInput.from_issues(error.errors()), _error_body)


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    """Starlette's 404/405 and friends, in our error shape."""
    assert isinstance(error, HTTPException)
    return _plain_error(str(error.detail), error.status_code, error.headers)


async def _client_disconnected(request: Request, _: Exception) -> JSONResponse:
    """The caller hung up before sending the whole body: nobody will read an answer, and it is
    not a server fault, so no traceback. 499 is nginx's code for it; it shows up in metrics."""
    logger.info("client disconnected during %s %s", request.method, request.url.path)
    return _plain_error("client closed request", 499)


async def _unexpected_error(request: Request, _: Exception) -> JSONResponse:
    # A bug, not the caller's fault: the traceback goes to the log, never to the caller.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return _plain_error("internal error; see the server log", 500)


def _openapi_with_request_schemas(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the per-model request schemas the predict routes refer to."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name in MODELS:
            model = request_model(name)
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        app.openapi_schema = document
    return app.openapi_schema


def create_app() -> FastAPI:
    app = FastAPI(
        title="tabserve",
        version=__version__,
        description="Scikit-learn and XGBoost models served by BentoML. "
        'Errors are JSON: `{"error": ..., "details": [{"field": ..., "reason": ...}]}`.',
        openapi_url="/v1/openapi.json",
        # /v1/docs is served by tabserve.web, from local assets instead of FastAPI's CDN links.
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(v1.router)
    app.include_router(tabpy.router)
    app.include_router(v2.router)
    app.include_router(repository.router)
    mount_pages(app)
    app.add_middleware(BearerTokenMiddleware)  # no-op unless a token is configured
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_exception_handler(CallerHungUp, _client_disconnected)
    app.add_exception_handler(Exception, _unexpected_error)
    app.openapi = lambda: _openapi_with_request_schemas(app)  # type: ignore[method-assign]
    # Added last, so outermost: it also counts what the other middleware answer (e.g. 401).
    app.add_middleware(RestMetricsMiddleware, routes=app.router.routes)
    return app
