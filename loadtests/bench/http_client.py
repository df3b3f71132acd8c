"""A minimal HTTP/1.1 client for the bench's open loop: POSTs of ready-made bodies over a pool
of keep-alive connections, answering only the status.

Why not aiohttp: on this 2-core machine the client shares the CPU with the server it measures,
and every request aiohttp builds (headers, a response object, its reader) costs several times
what writing a prepared request and finding the end of the answer does. Only what the benched
servers send is understood: a status line, headers with Content-Length (uvicorn, werkzeug and
gunicorn all send it for these JSON answers); "Connection: close" or HTTP/1.0 closes the
connection after the answer (gunicorn's sync workers do that on every request).
"""

from __future__ import annotations

import asyncio
import re

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)


class HttpError(Exception):
    """The connection broke, or the answer was not one this client understands."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bool]] | None = None
        self.transport: asyncio.Transport | None = None
        self.open = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None or self.answer.done():
            return
        head = bytes(self.buffer[: end + 2])
        length = CONTENT_LENGTH.search(head)
        if length is None:
            self.answer.set_exception(HttpError("an answer without Content-Length"))
            return
        if len(self.buffer) < end + 4 + int(length[1]):
            return
        del self.buffer[: end + 4 + int(length[1])]
        keep_alive = head.startswith(b"HTTP/1.1") and not CLOSE.search(head)
        self.answer.set_result((int(head[9:12]), keep_alive))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(HttpError("connection closed before the answer"))


class Pool:
    """Keep-alive connections to one host:port, opened as needed; an answered connection goes
    back to the pool, a broken or timed-out one is closed."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.idle: list[_Connection] = []

    def request(self, path: str, body: bytes) -> bytes:
        """The bytes of a JSON POST of `body` to `path`, built once, sent many times."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def send(self, request: bytes) -> int:
        """Send a request built by `request()`; its answer's status."""
        connection = await self._connection()
        connection.answer = asyncio.get_running_loop().create_future()
        try:
            assert connection.transport is not None
            connection.transport.write(request)
            async with asyncio.timeout(self.timeout_s):
                status, keep_alive = await connection.answer
        except BaseException:
            self._close(connection)
            raise
        if keep_alive and connection.open:
            self.idle.append(connection)
        else:
            self._close(connection)
        return status

    async def _connection(self) -> _Connection:
        while self.idle:
            connection = self.idle.pop()  # the most recently used: least likely timed out
            if connection.open:
                return connection
        async with asyncio.timeout(self.timeout_s):
            _, connection = await asyncio.get_running_loop().create_connection(
                _Connection, self.host, self.port
            )
        return connection

    @staticmethod
    def _close(connection: _Connection) -> None:
        if connection.transport is not None:
            connection.transport.close()

    def close(self) -> None:
        for connection in self.idle:
            self._close(connection)
        self.idle.clear()
