"""DataPlane.ready against a stand-in runner: a broken pooled connection is a fault of the
connection, not of the runner, so readiness must not flicker for it.

Found on a real server: /readyz answered 503 to one probe after the server had idled. The API
re-reads the runner every 5 s and uvicorn closes a connection idle for 5 s; an aiohttp client
reusing a connection from 2 ms before to 1 ms after 5 s since its last answer broke in 7 of 24
tries, and in none of 54 outside that window (uvicorn, `timeout_keep_alive=5`, 2026-12-02).
The race cannot be produced on demand, so the broken connection is raised here."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tabserve.dataplane import DataPlane
from tabserve.runner_calls import CONNECTION_RETRIES
from tabserve.settings import get_settings


class DescribingRunner:
    """Describes no models (so ready means: the runner answered), after the given failures."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def describe(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return []


def _ready(runner: DescribingRunner) -> bool:
    return asyncio.run(DataPlane(runner, get_settings(), models={}).ready())


def test_a_connection_the_runner_closed_while_idle_is_retried() -> None:
    runner = DescribingRunner([aiohttp.ServerDisconnectedError()] * CONNECTION_RETRIES)

    assert _ready(runner)
    assert runner.calls == CONNECTION_RETRIES + 1


def test_a_runner_that_cannot_be_reached_is_not_ready() -> None:
    runner = DescribingRunner([aiohttp.ClientConnectionError()] * (CONNECTION_RETRIES + 1))

    assert not _ready(runner)
