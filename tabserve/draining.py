"""`Connection: close` on every HTTP response once the pod is terminating.

Kubernetes takes a terminating pod out of the Service at once, but that only steers NEW
connections: a client's pooled keep-alive connection still leads to this pod. If the server
closes such a connection at SIGTERM while the client is sending on it, that request fails
(seen on the local cluster: 1 of 13,162 requests while every pod was evicted). So the chart's
preStop hook creates `drain_file` before its pause; from then on every response tells its
client to close the connection, and the client's next request opens one to a live pod. By
SIGTERM the busy connections are gone.
"""

from __future__ import annotations

import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tabserve.settings import get_settings

# Look at the file at most this often: a stat per request would be cheap, this is cheaper.
_CHECK_INTERVAL_S = 0.2


class DrainingMiddleware:
    """Adds `Connection: close` to every HTTP response while `drain_file` exists."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.drain_file = get_settings().drain_file
        self._draining = False
        self._checked_at = float("-inf")

    def draining(self) -> bool:
        now = time.monotonic()
        if not self._draining and now - self._checked_at > _CHECK_INTERVAL_S:
            self._checked_at = now
            self._draining = os.path.exists(self.drain_file)
        return self._draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.draining():
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
