"""The gRPC server of one API worker: the inference service, health, reflection.

BentoML 1.4 cannot serve `@bentoml.service` classes over gRPC, so each API worker starts this
grpc.aio server on its own event loop from the service's startup hook (service.py) and stops it
from the shutdown hook. Every worker binds `grpc_port` with SO_REUSEPORT, deliberately: with
several API workers the kernel spreads new connections over them, as BentoML's shared HTTP
socket does for HTTP. The price: a second tabserve started on the same host and port by the same
user shares the port instead of failing, so give each its own `TABSERVE_GRPC_PORT`. A port that
cannot be bound at all (taken by another program, or privileged) fails the worker's start-up.

The health service follows readiness (every model loaded in a runner that answers; read when a
client checks or watches, readiness_health.py): NOT_SERVING until then, SERVING, NOT_SERVING
again while the runner stops answering and once shutdown begins. Inference RPCs share the
worker's admission limit with HTTP (tabserve/admission.py): the excess is refused at once with
RESOURCE_EXHAUSTED.

Connections older than `grpc_max_connection_age_s` get a graceful GOAWAY, so clients reconnect
through the Kubernetes Service: onto pods added since, and off a terminating pod before its
server stops (calls that reach a stopping grpc.aio server are answered CANCELLED).

With a token configured (TABSERVE_API_TOKEN or TABSERVE_API_TOKEN_FILE), every inference RPC but
ServerLive and ServerReady needs `authorization: Bearer <token>` metadata, as every /v2 REST route
but the health ones does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
import grpc
from bentoml.exceptions import BentoMLException
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tabserve import admission, metrics
from tabserve.auth import token_is_valid
from tabserve.protocols.grpc import inference_pb2_grpc
from tabserve.protocols.grpc.readiness_health import ReadinessHealth
from tabserve.protocols.grpc.servicer import SERVICE_NAME, InferenceServicer, refuse
from tabserve.protocols.oip import OpenInference
from tabserve.settings import Settings

logger = logging.getLogger(__name__)

# Time in-flight calls get to finish once shutdown starts.
SHUTDOWN_GRACE_S = 5.0
POLL_S = 0.2
# RPCs a prober or load balancer may call without a token.
OPEN_METHODS = frozenset({f"/{SERVICE_NAME}/ServerLive", f"/{SERVICE_NAME}/ServerReady"})


class _AuthAndMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every unary call (tabserve_requests_total{protocol="grpc"}), refuses
    inference calls without a valid token when one is configured, and admits inference calls
    through the worker's admission limit (shed ones are counted in tabserve_shed_requests_total
    only). Health, reflection and the liveness/readiness RPCs are never limited.

    The token is checked on the call's metadata, before its message is read: a refused call
    gets a handler that never reads, let alone parses, the message. Parsing was the costly part
    of a refusal: an 8 MiB ModelInferRequest of tiny strings took ~260 ms of the worker's CPU to
    be answered UNAUTHENTICATED, now ~6 ms. Refused calls take no admission slot either, so
    clients without the token cannot crowd out those with it.

    An admitted inference call gets its message as bytes and parses it inside the handler,
    under the worker's message budget: what cannot be parsed is INVALID_ARGUMENT (counted like
    any bad request), not gRPC's UNKNOWN naming a Python exception."""

    def __init__(self, budget: admission.MessageBudget) -> None:
        self._budget = budget

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        # Unknown methods (None, answered UNIMPLEMENTED by gRPC) are not counted, so labels
        # stay bounded; streams (health Watch, reflection) are not timed as requests.
        if handler is None or handler.unary_unary is None:
            return handler
        service, _, method = details.method.lstrip("/").partition("/")
        limited = service == SERVICE_NAME and details.method not in OPEN_METHODS
        authorized = not limited or token_is_valid(
            dict(details.invocation_metadata or ()).get("authorization")
        )
        parse = handler.request_deserializer

        async def parsed(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = parse(raw)
            except DecodeError:
                return refuse(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the message is not a valid {method}Request",
                )
            return await handler.unary_unary(request, context)

        call = (
            (parsed if limited else handler.unary_unary) if authorized else _refuse_unauthenticated
        )

        async def admitted(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                async with admission.for_this_worker():
                    with self._budget.hold(len(raw)):
                        return await observed(raw, context)
            except admission.Overloaded:
                metrics.record_shed("grpc")
                return refuse(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server is overloaded; retry after {admission.RETRY_AFTER_S} s",
                )

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                with metrics.requests_in_progress("grpc"):
                    return await call(request, context)
            finally:
                code = context.code() or grpc.StatusCode.OK
                metrics.record_request(
                    "grpc", service, method, code.name, time.perf_counter() - started
                )

        if not authorized:
            # A client-streaming handler, for a call the client sends as unary (the wire is the
            # same: one message on one HTTP/2 stream): gRPC reads a message only when the
            # handler asks for it, and this one never does. A unary handler would wait for the
            # whole message and copy it into memory first, even with no deserializer.
            return grpc.stream_unary_rpc_method_handler(
                observed,
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            admitted if limited else observed,
            request_deserializer=None if limited else parse,  # limited: parsed() parses
            response_serializer=handler.response_serializer,
        )


async def _refuse_unauthenticated(unread: Any, context: grpc.aio.ServicerContext) -> None:
    refuse(
        context, grpc.StatusCode.UNAUTHENTICATED, "send metadata 'authorization: Bearer <token>'"
    )


class GrpcServer:
    def __init__(self, protocol: OpenInference, settings: Settings) -> None:
        self._address = f"{settings.grpc_host}:{settings.grpc_port}"
        self._server = grpc.aio.server(
            # Room for four of the largest messages per worker, each parsed at up to ~5x its size.
            interceptors=[_AuthAndMetrics(admission.MessageBudget(4 * settings.max_body_bytes))],
            options=[
                ("grpc.so_reuseport", 1),
                # The same request size limit as the HTTP routes.
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                *_connection_age_options(settings.grpc_max_connection_age_s),
            ],
        )
        self._health = ReadinessHealth(protocol.server_ready)
        self._serving: asyncio.Task[None] | None = None
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(protocol, settings.max_keys_per_instance), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )

    async def start(self) -> None:
        """Binds the port now (a port that cannot be bound fails the worker's start-up) and
        serves from the moment this worker is fully set up."""
        try:
            self._server.add_insecure_port(self._address)
        except RuntimeError as error:
            raise RuntimeError(f"gRPC server cannot listen on {self._address}: {error}") from None
        self._serving = asyncio.create_task(self._serve())
        self._serving.add_done_callback(_log_failure)

    async def stop(self) -> None:
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
        await self._health.stop()
        await self._server.stop(SHUTDOWN_GRACE_S)

    async def _serve(self) -> None:
        # BentoML connects this worker's runner client after the startup hooks have run, then
        # publishes the service instance; a call answered before that could not reach a model.
        while not _worker_is_set_up():
            await asyncio.sleep(POLL_S)
        await self._server.start()
        logger.info("gRPC (Open Inference Protocol) listening on %s", self._address)


def _connection_age_options(max_age_s: float) -> list[tuple[str, int]]:
    """Clients are moved to a fresh connection every max_age_s (gRPC adds +-10% jitter so they
    do not all reconnect at once); the calls in flight on the old one get SHUTDOWN_GRACE_S."""
    if not max_age_s:
        return []
    return [
        ("grpc.max_connection_age_ms", round(max_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", round(SHUTDOWN_GRACE_S * 1000)),
    ]


def _worker_is_set_up() -> bool:
    try:
        bentoml.get_current_service()
    except BentoMLException:  # "service isn't instantiated yet"
        return False
    return True


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("the gRPC server failed to start", exc_info=task.exception())
