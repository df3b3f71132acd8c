"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for floods from the test process.

httpx and aiohttp spend ~0.5 ms of CPU per request; on the two cores the server also uses,
that client would be the bottleneck and its own event-loop lag would show up as server latency.
This one writes prepared request bytes and reads the status line, headers and a
Content-Length body: a few tens of microseconds per request. Only for our own server's answers
(every one carries Content-Length).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


def request_bytes(method: str, path: str, body: Any = None) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(payload)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    return (head + "\r\n").encode() + payload


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive connection to 127.0.0.1:port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, request: bytes) -> None:
        self.writer.write(request)

    async def answer(self) -> Answer:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(int(status_line.split()[1]), headers, body)

    async def call(self, request: bytes) -> Answer:
        self.send(request)
        return await self.answer()

    async def close(self) -> None:
        """Hang up (as a client that gave up does)."""
        self.writer.close()
        await self.writer.wait_closed()
