"""Admission control: a bounded number of requests per API worker, the excess shed at once.

An API worker is one event loop. Past a few dozen concurrent requests it gets no faster (the
runner calls are already merged, docs/performance.md); more only makes every request wait
longer, until clients time out and retry into a queue that never drains. So each worker runs at
most `max_in_flight` requests (HTTP and gRPC together), lets up to `max_queued` more wait for a
slot, oldest first, and refuses the rest at once: HTTP 503 with Retry-After, gRPC
RESOURCE_EXHAUSTED. A refused request costs a few microseconds and never reaches validation or
the runner, so a flood several times the capacity leaves the accepted requests' latency bounded
by (max_in_flight + max_queued) / throughput. Probes and /metrics are never limited: a
saturated pod must still be seen as alive, and its overload must be visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Iterator
from types import TracebackType

from starlette.types import ASGIApp, Receive, Scope, Send

from tabserve import metrics
from tabserve.runner_calls import caller_hung_up
from tabserve.settings import get_settings

# BentoML's probe and metrics routes: answered whatever the load.
UNLIMITED_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
RETRY_AFTER_S = 1
_SHED_BODY = b'{"error":"the server is overloaded; retry after %d s"}' % RETRY_AFTER_S
_SHED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_SHED_BODY)).encode()),
    (b"retry-after", str(RETRY_AFTER_S).encode()),
]


class Overloaded(Exception):
    """Every slot is taken and the wait queue is full: refuse the request now."""


class Admission:
    """At most `max_in_flight` holders at a time, `max_queued` more waiting in arrival order.

    `async with admission:` holds a slot for the block, or raises Overloaded at once. One per
    worker process (`for_this_worker`), shared by the HTTP middleware and the gRPC server.
    """

    def __init__(self, max_in_flight: int, max_queued: int) -> None:
        self._free = max_in_flight
        self._max_queued = max_queued
        # A waiter's future is resolved by the holder that hands its slot over.
        self._queue: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self._free:  # waiters exist only while no slot is free
            self._free -= 1
            return
        if len(self._queue) >= self._max_queued:
            raise Overloaded
        turn = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.cancelled():  # gave up waiting (a gRPC caller cancelled, a deadline)
                with contextlib.suppress(ValueError):  # unless a release skipped it already
                    self._queue.remove(turn)
            else:  # was handed a slot in the same instant: pass it on
                self._release()
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():  # cancelled waiters leave the queue on their next step
                turn.set_result(None)
                return
        self._free += 1


@functools.cache
def for_this_worker() -> Admission:
    """The admission of this worker process (made on first use, in the worker)."""
    settings = get_settings()
    return Admission(settings.max_in_flight, settings.max_queued)


class AdmissionMiddleware:
    """HTTP admission (pure ASGI). It also lets the runner calls see whether the caller is
    still connected (`runner_calls.caller_hung_up`), so the rows of a caller that hung up while
    waiting are never sent to the runner."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            async with for_this_worker():
                token = caller_hung_up.set(functools.partial(_disconnected, receive))
                try:
                    await self.app(scope, receive, send)
                finally:
                    caller_hung_up.reset(token)
        except Overloaded:
            metrics.record_shed("rest")
            await send({"type": "http.response.start", "status": 503, "headers": _SHED_HEADERS})
            await send({"type": "http.response.body", "body": _SHED_BODY})


def _disconnected(receive: Receive) -> bool:
    """Whether the client has closed the connection, asked once its body has been read.

    `receive()` then completes without waiting only when the connection is gone (what
    Starlette's Request.is_disconnected relies on too); otherwise it waits for that. So the
    call is run one step, synchronously: finished means look at the message, suspended means
    still connected, and the suspended call is closed. No task and no turn of the event loop.
    """
    step = receive()
    try:
        step.send(None)
    except StopIteration as finished:
        return finished.value["type"] == "http.disconnect"
    step.close()
    return False


class MessageBudget:
    """Bytes of gRPC inference messages one worker holds at once (tabserve/protocols/grpc): a
    call that would exceed it is refused like an overloaded one. A message stays in memory,
    with its parsed form (up to ~5 times its size: 8 MiB of one-byte strings parse to ~41 MB),
    while its call waits for the runner; 128 admitted calls of 8 MiB would hold gigabytes. The
    bound is on bytes, not calls, so ordinary small messages never meet it."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[None]:
        if self.held_bytes and self.held_bytes + size > self.limit_bytes:
            raise Overloaded
        self.held_bytes += size
        try:
            yield
        finally:
            self.held_bytes -= size
