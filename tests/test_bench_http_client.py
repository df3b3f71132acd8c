"""The bench's minimal HTTP client against real servers: keep-alive reuse with tabserve, a new
connection per request with a server that closes (HTTP/1.0, as gunicorn's sync workers close),
and a clear error for an answer it does not understand."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtests.bench.http_client import HttpError, Pool
from loadtests.payloads import single_row_bodies


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 (the default): the connection closes after each answer. /chunked answers
    without Content-Length."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        if self.path != "/chunked":
            self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def closing_server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _statuses(pool: Pool, path: str, body: bytes, count: int) -> tuple[list[int], int]:
    """`count` requests in turn: their statuses, and how many connections were left open."""

    async def send() -> tuple[list[int], int]:
        try:
            statuses = [await pool.send(pool.request(path, body)) for _ in range(count)]
            return statuses, len(pool.idle)
        finally:
            pool.close()

    return asyncio.run(send())


@pytest.mark.slow
def test_keep_alive_connections_are_reused(server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    body = single_row_bodies("churn")[0]
    statuses, kept = _statuses(Pool("127.0.0.1", port, 5), "/v1/models/churn:predict", body, 5)
    assert (statuses, kept) == ([200] * 5, 1)  # one connection, used five times


def test_a_server_that_closes_gets_a_new_connection_each_time(closing_server: int) -> None:
    assert _statuses(Pool("127.0.0.1", closing_server, 5), "/", b"{}", 3) == ([201] * 3, 0)


def test_an_answer_without_content_length_is_an_error(closing_server: int) -> None:
    pool = Pool("127.0.0.1", closing_server, 5)
    with pytest.raises(HttpError, match="without Content-Length"):
        _statuses(pool, "/chunked", b"{}", 1)
