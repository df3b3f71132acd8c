"""Graceful shutdown, as Kubernetes does it, against a real `bentoml serve`.

Kubernetes removes a terminating pod from the Service's endpoints and runs the preStop hook (a
pause, so every proxy stops sending new traffic), then sends SIGTERM to the container's PID 1
(`bentoml serve` in our image), and SIGKILLs it when the grace period ends. Here: steady load from
concurrent clients, SIGTERM to the `bentoml serve` process alone (not its group), no new request
after the signal (the endpoint is gone). Every request sent before the signal must be answered
200, and the server must exit well within the grace period.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tabserve.catalog import MODELS
from tests.server import ServerProcess

CLIENTS = 32
WARM_UP_S = 4.0
# The chart's terminationGracePeriodSeconds minus its preStop pause: what is left for the process.
EXIT_BUDGET_S = 20.0
MODEL = "churn"


@dataclass
class LoadResult:
    signal_at: float = 0.0
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    in_flight: int = 0
    in_flight_at_signal: int = 0


async def _client(url: str, body: dict, stop: asyncio.Event, result: LoadResult) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            result.in_flight += 1
            try:
                response = await client.post(f"/v1/models/{MODEL}:predict", json=body)
            except httpx.HTTPError as error:
                result.failures.append(f"{type(error).__name__}: {error}")
            else:
                result.statuses.append(response.status_code)
            finally:
                result.in_flight -= 1


async def _load_then_sigterm(server: ServerProcess) -> LoadResult:
    body = {"instances": [MODELS[MODEL].example_instance()]}
    result = LoadResult()
    stop = asyncio.Event()
    clients = [asyncio.create_task(_client(server.url, body, stop, result)) for _ in range(CLIENTS)]
    await asyncio.sleep(WARM_UP_S)
    # The endpoint is gone (preStop): no client starts a new request from here on.
    stop.set()
    result.in_flight_at_signal = result.in_flight
    result.signal_at = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*clients), timeout=EXIT_BUDGET_S)
    return result


@pytest.mark.slow
def test_sigterm_answers_every_accepted_request_and_exits_in_time(
    trained_store: Path, tmp_path: Path
) -> None:
    with ServerProcess.start(tmp_path / "bentoml-serve.log") as server:
        result = asyncio.run(_load_then_sigterm(server))
        try:
            server.process.wait(timeout=EXIT_BUDGET_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_BUDGET_S:.0f}s after SIGTERM")
        exit_s = time.monotonic() - result.signal_at
        log = server.log.read_text()

    print(
        f"\n{len(result.statuses)} requests answered, {result.in_flight_at_signal} in flight at "
        f"SIGTERM, exit {exit_s:.2f}s after it, return code {server.process.returncode}"
    )
    assert result.in_flight_at_signal > 0, "nothing was in flight: the test proves nothing"
    assert len(result.statuses) > CLIENTS, "too little load to mean anything"
    assert not result.failures, f"requests lost on SIGTERM: {result.failures[:5]}\n{log[-3000:]}"
    assert set(result.statuses) == {200}, f"non-200 answers: {set(result.statuses)}"
    assert exit_s < EXIT_BUDGET_S
    assert server.process.returncode == 0, log[-3000:]
