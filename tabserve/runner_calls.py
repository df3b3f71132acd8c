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
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np

from tabserve.schemas import Row

RunnerApi = Callable[[list[Row]], Awaitable[Any]]

# Extra attempts after a connection-level failure calling the runner (see `call_with_retries`).
CONNECTION_RETRIES = 3


async def call_with_retries(api: RunnerApi, rows: list[Row]) -> np.ndarray:
    """Call a runner API, retrying when a pooled connection broke before an answer came.

    BentoML's API->runner client keeps idle connections for 15 s, the runner's server closes
    them after 5 s, so a request can be written into a connection the runner is closing
    ("Broken pipe", bentoml/BentoML#4971). The broken connection leaves the pool; the next
    attempt takes another. Prediction has no side effects, so retrying is safe.
    """
    for _ in range(CONNECTION_RETRIES):
        try:
            return np.asarray(await api(rows))
        except aiohttp.ClientConnectionError:
            continue
    return np.asarray(await api(rows))


class MergedCalls:
    """One model's runner API, with concurrent requests merged into shared calls."""

    def __init__(self, api: RunnerApi, max_rows: int, max_in_flight: int) -> None:
        self._api = api
        self._max_rows = max_rows
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._senders: set[asyncio.Task[None]] = set()  # referenced, so never collected mid-call
        self._waiting: deque[tuple[list[Row], asyncio.Future[np.ndarray]]] = deque()

    async def predict(self, rows: list[Row]) -> np.ndarray:
        """(len(rows), classes) probabilities for these rows."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            sender = asyncio.create_task(self._send_waiting())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await future

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                await self._send(self._take_batch())
        finally:
            self._in_flight -= 1

    def _take_batch(self) -> list[tuple[list[Row], asyncio.Future[np.ndarray]]]:
        """The waiting requests, oldest first, up to max_rows rows (always at least one)."""
        batch = [self._waiting.popleft()]
        rows = len(batch[0][0])
        while self._waiting and rows + len(self._waiting[0][0]) <= self._max_rows:
            rows += len(self._waiting[0][0])
            batch.append(self._waiting.popleft())
        return batch

    async def _send(self, batch: list[tuple[list[Row], asyncio.Future[np.ndarray]]]) -> None:
        merged = batch[0][0] if len(batch) == 1 else [row for rows, _ in batch for row in rows]
        try:
            answer = await call_with_retries(self._api, merged)
        except Exception as error:  # the runner's error is every caller's error
            for _, future in batch:
                if not future.done():  # a caller that hung up has cancelled its future
                    future.set_exception(error)
            return
        start = 0
        for rows, future in batch:
            if not future.done():
                future.set_result(answer[start : start + len(rows)])
            start += len(rows)
