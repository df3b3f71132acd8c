"""The gRPC health service, following readiness only while someone asks.

grpc's own servicer answers from a status someone must keep setting; polling readiness for it
every second asked the runner for its models every second with no traffic at all, about half the
idle CPU of a served tree (docs/performance.md, "Where a lone request's CPU goes"). Here a
`Check` refreshes the status from readiness first (the data plane reuses a readiness answer for
a second, so probes cost at most one runner call per second), and the status is followed in the
background only while a `Watch` stream is open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from grpc_health.v1 import health, health_pb2

from tabserve.protocols.grpc.servicer import SERVICE_NAME

# How often readiness is re-read while a Watch stream is open.
WATCH_RECHECK_S = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealth(health.aio.HealthServicer):
    """Health of the whole server ("") and of the inference service: SERVING while `ready()`."""

    def __init__(self, ready: Callable[[], Awaitable[bool]]) -> None:
        super().__init__()
        self._ready = ready
        self._watchers = 0
        self._follower: asyncio.Task[None] | None = None

    async def follow_readiness(self) -> None:
        """Set the status from readiness now (ignored once shutdown has begun)."""
        status = SERVING if await self._ready() else NOT_SERVING
        for service in ("", SERVICE_NAME):  # "": the whole server, as probes ask
            await self.set(service, status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        await self.follow_readiness()
        return await super().Check(request, context)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        await self.follow_readiness()  # the first answer is fresh, not grpc's default SERVING
        self._watchers += 1
        if self._follower is None:
            self._follower = asyncio.create_task(self._follow_while_watched())
        try:
            await super().Watch(request, context)
        finally:
            self._watchers -= 1

    async def stop(self) -> None:
        """Stop following (before the server stops) and answer NOT_SERVING from now on."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.enter_graceful_shutdown()

    async def _follow_while_watched(self) -> None:
        try:
            while self._watchers:
                await self.follow_readiness()
                await asyncio.sleep(WATCH_RECHECK_S)
        finally:
            self._follower = None
