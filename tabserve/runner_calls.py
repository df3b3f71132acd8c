"""Calls from an API worker to the model runner: merged per model, retried when a connection broke.

Every runner call is a full HTTP exchange between two processes (pickling, the runner's server,
its batch dispatcher): about 0.6 ms of CPU, several times the model's own time for a single row.
So an API worker merges the predictions it is waiting to send for one model into one call, the
way a database driver pipelines queries:

- a request that finds no call in flight for its model is sent at once (no timer, so no added
  latency at low load);
- requests arriving while `max_in_flight` calls are out wait, and all of them go together in the
  next call (up to `max_rows` rows); each gets back its own slice of the answer.

Requests are validated before they get here, so one bad request never fails the others; a runner
error fails exactly the requests of that call. The runner's adaptive batching still merges the
calls of several API workers into one model call.

Every call has a deadline (`timeout_s`): a runner that stops answering (stopped, overloaded,
restarting) fails its calls with TimeoutError instead of holding them for BentoML's 60 s. A
request waits at most for the call in flight and then its own: 2 x timeout_s. Requests whose
caller is gone by the time their call is made (a cancelled gRPC call, an HTTP client that hung
up, see `caller_hung_up`) are left out of it: under overload those are many, and the runner's
time is better spent on callers who still wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import aiohttp
import numpy as np

T = TypeVar("T")
# A model's batched predict: a versioned batch (tabserve/model_input.py) -> its probabilities.
RunnerApi = Callable[[np.ndarray], Awaitable[Any]]
# Set per HTTP request by the admission middleware: true once the client has hung up.
HungUp = Callable[[], bool]
caller_hung_up: ContextVar[HungUp | None] = ContextVar("caller_hung_up", default=None)
Waiting = tuple[np.ndarray, "asyncio.Future[np.ndarray]", HungUp | None]


class CallerHungUp(Exception):
    """An HTTP caller hung up before its rows were sent: they never are. The HTTP app answers it
    as any client disconnect (499, no traceback), not as a server error."""


# Extra attempts after a connection-level failure calling the runner (see `call_with_retries`).
CONNECTION_RETRIES = 3


async def call_with_retries(api: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Call a runner API, retrying when a pooled connection broke before an answer came.

    BentoML's API->runner client keeps idle connections for 15 s, the runner's server closes
    them after 5 s, so a request can be written into a connection the runner is closing
    ("Broken pipe", bentoml/BentoML#4971). The broken connection leaves the pool; the next
    attempt takes another. Retrying is safe for every runner API: predictions and `describe`
    change nothing, and a repository call asks for a state (a version loaded or unloaded, an
    alias on a version) that a second attempt asks for again. If the runner did act on an
    attempt whose connection broke later (it died mid-answer and restarted), the retry meets the
    restarted runner, or an unload finds the version already gone and answers 404.
    """
    for _ in range(CONNECTION_RETRIES):
        try:
            return await api(*args, **kwargs)
        except aiohttp.ClientConnectionError:
            continue
    return await api(*args, **kwargs)


class MergedCalls:
    """One model's runner API, with concurrent requests merged into shared calls."""

    def __init__(self, api: RunnerApi, max_rows: int, max_in_flight: int, timeout_s: float) -> None:
        self._api = api
        self._max_rows = max_rows
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s
        self._in_flight = 0
        self._senders: set[asyncio.Task[None]] = set()  # referenced, so never collected mid-call
        self._waiting: deque[Waiting] = deque()

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), classes) probabilities for a versioned batch of rows
        (tabserve/model_input.py); TimeoutError when the runner did not answer in time."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future, caller_hung_up.get()))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            sender = asyncio.create_task(self._send_waiting())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await future

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch = self._take_batch()
                if batch:
                    await self._send(batch)
        finally:
            self._in_flight -= 1

    def _take_batch(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        """The waiting requests whose callers still wait, oldest first, up to max_rows rows."""
        batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        rows = 0
        while self._waiting and (not batch or rows + len(self._waiting[0][0]) <= self._max_rows):
            waiting, future, hung_up = self._waiting.popleft()
            if future.done():  # its caller was cancelled (gRPC cancels the handler)
                continue
            if hung_up is not None and hung_up():
                # Not future.cancel(): a CancelledError escaping the handler is logged as an
                # ASGI error and counted as a 500.
                future.set_exception(CallerHungUp())
                continue
            rows += len(waiting)
            batch.append((waiting, future))
        return batch

    async def _send(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        merged = batch[0][0] if len(batch) == 1 else np.concatenate([rows for rows, _ in batch])
        try:
            answer = np.asarray(
                await within_deadline(call_with_retries(self._api, merged), self._timeout_s)
            )
        except Exception as error:  # the runner's error is every caller's error
            for _, future in batch:
                if not future.done():  # a cancelled caller, or one that hung up, has its answer
                    future.set_exception(error)
            return
        start = 0
        for rows, future in batch:
            if not future.done():
                future.set_result(answer[start : start + len(rows)])
            start += len(rows)


async def within_deadline(call: Awaitable[T], timeout_s: float) -> T:
    """The call's result, or TimeoutError after timeout_s whatever the call does.

    Not `asyncio.timeout` around the call: that ends the wait only once the call gives up on
    being cancelled, and a client that swallows the cancellation (a wedged connection pool)
    would hold the waiter for good: a model's sender and every later request for the model, or
    the readiness check and with it /readyz and gRPC health."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()  # best effort; its outcome is nobody's any more
        task.add_done_callback(_forget)
        raise TimeoutError(f"the model runner did not answer within {timeout_s:g} s")
    return task.result()


def _forget(call: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome, so asyncio does not log it as never retrieved."""
    if not call.cancelled():
        call.exception()
