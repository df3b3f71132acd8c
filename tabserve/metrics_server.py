"""`/metrics` on a port of its own (setting `metrics_port`), away from the prediction routes.

On the HTTP port, whoever may scrape may also predict, and an Ingress in front of that port
publishes the metrics (model names, traffic, errors) to the Internet. On a port of its own, a
NetworkPolicy lets the monitoring namespace reach the metrics and nothing else, and the Ingress
never routes to it. The HTTP port then answers `/metrics` with 404 (`MetricsMovedMiddleware`).

Each API worker runs this small aiohttp server on its own event loop, started and stopped by the
service's hooks (service.py), and binds the port with SO_REUSEPORT as the gRPC server does
(tabserve/protocols/grpc/server.py): any worker answers a scrape, with every process's samples,
since they all come from BentoML's multiprocess collector (the same text as BentoML's own
`/metrics`). Scrapes are never refused by admission control: they do not pass through it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

from aiohttp import web
from bentoml._internal.configuration.containers import BentoMLContainer
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


class MetricsServer:
    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        app = web.Application()
        app.router.add_get(METRICS_PATH, _metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        """Binds the port now: a port that cannot be bound fails the worker's start-up."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_port=True)
        try:
            await site.start()
        except OSError as error:
            raise RuntimeError(
                f"the metrics server cannot listen on {self._host}:{self._port}: {error}"
            ) from None
        logger.info("/metrics listening on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        await self._runner.cleanup()


async def _metrics(_: web.Request) -> web.Response:
    client = BentoMLContainer.metrics_client.get()
    # Reading and merging every process's sample files is file I/O and CPU: off the event loop,
    # as BentoML does with its own /metrics route.
    body = await asyncio.to_thread(client.generate_latest)
    return web.Response(
        body=body,
        headers={"Content-Type": client.CONTENT_TYPE_LATEST, "X-Content-Type-Options": "nosniff"},
    )


class MetricsMovedMiddleware:
    """On the HTTP port, `/metrics` answers 404 (with where the metrics are) once they have a
    port of their own: BentoML's route cannot be removed without turning its metrics off."""

    def __init__(self, app: ASGIApp, metrics_port: int) -> None:
        self.app = app
        self.body = json.dumps(
            {"error": f"not found: the metrics are served on port {metrics_port}"}
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != METRICS_PATH:
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": HTTPStatus.NOT_FOUND,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body})
