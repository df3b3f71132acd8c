"""A runner that stops answering or dies, on a real `bentoml serve` with real signals.

SIGSTOP of the runner worker under load: callers get 503 (never 500) within the runner-call
deadline, /readyz, V2 readiness and gRPC health go false; SIGCONT: all of them recover without
restarting anything; V2 REST, TabPy and gRPC say it their way (503 with Retry-After,
UNAVAILABLE). SIGKILL: BentoML's arbiter restarts the runner, and until it is back callers get
503, never 500. Plus the two BentoML replacements seen working live: the request
deadline (504) and the bounded batching wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tabserve.catalog import MODELS
from tests.oip_tensors import infer_inputs
from tests.raw_http import Connection
from tests.server import ServerProcess, run_training
from tests.test_overload import PREDICT, PREDICT_BODY, metric_total

RUNNER_TIMEOUT_S = 2.0
# A request waits at most for the call in flight and then its own (runner_calls.py).
WORST_WAIT_S = 2 * RUNNER_TIMEOUT_S + 1.0
# Readiness: one check interval plus one deadline, plus slack for a loaded machine.
READINESS_FOLLOWS_S = RUNNER_TIMEOUT_S + 1.0 + 3.0
CLIENTS = 8


@dataclass
class Load:
    statuses: list[tuple[float, int, float]] = field(default_factory=list)  # (end, status, s)
    retry_after: set[str] = field(default_factory=set)
    running: bool = True


async def _client(port: int, load: Load) -> None:
    connection = await Connection.open(port)
    while load.running:
        started = time.monotonic()
        async with asyncio.timeout(60):
            answer = await connection.call(PREDICT)
        ended = time.monotonic()
        load.statuses.append((ended, answer.status, ended - started))
        if answer.status == 503:
            load.retry_after.add(answer.headers.get("retry-after", "missing"))
            await asyncio.sleep(0.1)  # as a client honouring Retry-After would, a little
    await connection.close()


@contextlib.asynccontextmanager
async def _under_load(port: int, clients: int = CLIENTS) -> AsyncIterator[Load]:
    """`clients` connections sending predictions back to back until the block ends."""
    load = Load()
    tasks = [asyncio.create_task(_client(port, load)) for _ in range(clients)]
    try:
        yield load
    finally:
        load.running = False
        await asyncio.gather(*tasks)


async def _status(client: httpx.AsyncClient, path: str) -> int:
    return (await client.get(path)).status_code


def _grpc_health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


async def _until(check, expected, budget_s: float) -> float:
    """Seconds until `await check()` returns `expected`, polled every 0.25 s; fails after budget."""
    started = time.monotonic()
    while time.monotonic() - started < budget_s:
        if await check() == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"not {expected} within {budget_s} s")


@pytest.fixture(scope="module")
def server(
    trained_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("faults") / "serve.log"
    with ServerProcess.start(log, {"TABSERVE_RUNNER_TIMEOUT_S": str(RUNNER_TIMEOUT_S)}) as server:
        yield server


async def _stop_and_continue(server: ServerProcess) -> dict[str, float | int]:
    runner = server.worker("model_runner")
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as probe,
        _under_load(server.port) as load,
    ):
        await asyncio.sleep(2)
        stopped_at = time.monotonic()
        os.kill(runner.pid, signal.SIGSTOP)
        try:
            not_ready_s = await _until(lambda: _status(probe, "/readyz"), 503, READINESS_FOLLOWS_S)
            v2_ready = await _status(probe, "/v2/health/ready")
            grpc_health = await asyncio.to_thread(_grpc_health, server.grpc_port)
            await asyncio.sleep(WORST_WAIT_S)
        finally:
            os.kill(runner.pid, signal.SIGCONT)
        continued_at = time.monotonic()
        ready_s = await _until(lambda: _status(probe, "/readyz"), 200, READINESS_FOLLOWS_S)
        await asyncio.sleep(2)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as probe:
        grpc_health_after = await asyncio.to_thread(_grpc_health, server.grpc_port)
        v2_ready_after = await _status(probe, "/v2/health/ready")
    during = [(s, took) for end, s, took in load.statuses if stopped_at < end < continued_at]
    first_503 = min(end for end, s, _ in load.statuses if s == 503) - stopped_at
    return {
        "statuses": sorted({s for _, s, _ in load.statuses}),
        "retry_after": sorted(load.retry_after),
        "first_503_s": first_503,
        "slowest_during_s": max(took for _, took in during),
        "ok_after": sum(
            1 for end, s, _ in load.statuses if end > continued_at + ready_s and s == 200
        ),
        "not_ready_s": not_ready_s,
        "v2_ready": v2_ready,
        "grpc_health": grpc_health,
        "ready_again_s": ready_s,
        "grpc_health_after": grpc_health_after,
        "v2_ready_after": v2_ready_after,
    }


def test_a_stopped_runner_means_503_and_not_ready_until_it_continues(server) -> None:
    result = asyncio.run(_stop_and_continue(server))
    print(f"\nSIGSTOP/SIGCONT of the runner under load: {result}")

    assert result["statuses"] == [200, 503]
    assert result["retry_after"] == ["1"]
    assert result["first_503_s"] < WORST_WAIT_S
    assert result["slowest_during_s"] < WORST_WAIT_S
    assert result["not_ready_s"] < READINESS_FOLLOWS_S
    assert result["v2_ready"] == 503
    assert result["grpc_health"] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert result["ok_after"] > 0
    assert result["grpc_health_after"] == health_pb2.HealthCheckResponse.SERVING
    assert result["v2_ready_after"] == 200


async def _kill_and_restart(server: ServerProcess) -> dict[str, object]:
    runner = server.worker("model_runner")
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as probe,
        _under_load(server.port) as load,
    ):
        await asyncio.sleep(2)
        killed_at = time.monotonic()
        os.kill(runner.pid, signal.SIGKILL)
        await _until(lambda: _status(probe, "/readyz"), 503, READINESS_FOLLOWS_S)
        back_s = await _until(lambda: _status(probe, "/readyz"), 200, 90)
        await asyncio.sleep(2)
    restarted = server.worker("model_runner")
    return {
        "statuses": sorted({s for _, s, _ in load.statuses}),
        "slowest_s": max(took for end, _, took in load.statuses if end > killed_at),
        "ready_again_s": back_s,
        "restarted": restarted.pid != runner.pid,
        "ok_after": sum(1 for end, s, _ in load.statuses if end > killed_at + back_s and s == 200),
    }


@pytest.mark.slow
def test_a_killed_runner_is_restarted_and_nobody_gets_a_500(server) -> None:
    result = asyncio.run(_kill_and_restart(server))
    print(f"\nSIGKILL of the runner under load: {result}")

    assert set(result["statuses"]) <= {200, 503}
    assert result["slowest_s"] < WORST_WAIT_S
    assert result["restarted"]
    assert result["ok_after"] > 0


IRIS_ROW = MODELS["iris"].example_instance()


def _v2_infer(url: str) -> httpx.Response:
    inputs = [
        {"name": n, "datatype": "FP64", "shape": [1], "data": [v]} for n, v in IRIS_ROW.items()
    ]
    return httpx.post(f"{url}/v2/models/iris/infer", json={"inputs": inputs}, timeout=30)


def _tabpy_query(url: str) -> httpx.Response:
    columns = [[value] for value in IRIS_ROW.values()]
    return httpx.post(f"{url}/query/iris", json={"data": columns}, timeout=30)


def _grpc_infer(port: int) -> str:
    """The gRPC status of a ModelInfer call, as tritonclient names it."""
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        client.infer("iris", infer_inputs(tc, "iris", [IRIS_ROW], binary=True), client_timeout=30)
    except InferenceServerException as error:
        return str(error.status())
    finally:
        client.close()
    return "OK"


async def _ready_again(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
        await _until(lambda: _status(probe, "/readyz"), 200, READINESS_FOLLOWS_S)


def test_v2_tabpy_and_grpc_answer_unavailable_while_the_runner_is_stopped(server) -> None:
    """The other protocols' way of saying 503 (V1's is above), each counted under its code."""
    codes = ("503", "UNAVAILABLE")
    before = {code: metric_total(server, "tabserve_requests_total", code=code) for code in codes}
    runner = server.worker("model_runner")
    os.kill(runner.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(3) as callers:
            v2 = callers.submit(_v2_infer, server.url)
            tabpy = callers.submit(_tabpy_query, server.url)
            grpc_status = callers.submit(_grpc_infer, server.grpc_port)
            answers = (v2.result(), tabpy.result(), grpc_status.result())
    finally:
        os.kill(runner.pid, signal.SIGCONT)
    asyncio.run(_ready_again(server.url))
    counted = {
        code: metric_total(server, "tabserve_requests_total", code=code) - before[code]
        for code in codes
    }

    v2, tabpy, grpc_status = answers
    assert (v2.status_code, v2.headers.get("retry-after")) == (503, "1"), v2.text
    assert "the model runner" in v2.json()["error"]
    assert (tabpy.status_code, tabpy.headers.get("retry-after")) == (503, "1"), tabpy.text
    assert "the model runner" in tabpy.json()["message"]
    assert grpc_status == "StatusCode.UNAVAILABLE"
    assert counted == {"503": 2, "UNAVAILABLE": 1}
    assert _grpc_infer(server.grpc_port) == "OK"


def test_an_explanation_answers_503_while_the_runner_is_stopped(server) -> None:
    """DataPlane.explain has predict's fault handling: 503 with Retry-After within the
    runner-call deadline, never a 500 or a wait for BentoML's 60 s."""
    runner = server.worker("model_runner")
    os.kill(runner.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = httpx.post(
            f"{server.url}/v1/models/iris:explain", json={"instances": [IRIS_ROW]}, timeout=30
        )
        took_s = time.monotonic() - started
    finally:
        os.kill(runner.pid, signal.SIGCONT)
    asyncio.run(_ready_again(server.url))
    assert (answer.status_code, answer.headers.get("retry-after")) == (503, "1"), answer.text
    assert "the model runner did not answer" in answer.json()["error"]
    assert took_s < WORST_WAIT_S


def _iris_answers(server: ServerProcess) -> dict[str, str]:
    """Which iris version each way of asking names (or the error it got instead)."""

    def http(method: str, path: str, **options: Any) -> dict[str, Any]:
        answer = httpx.request(method, f"{server.url}{path}", timeout=30, **options)
        return answer.json() if answer.status_code == 200 else {}

    v2 = http("GET", "/v2/models/iris")
    client = tc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        inputs = infer_inputs(tc, "iris", [IRIS_ROW], binary=True)
        response = client.infer("iris", inputs, client_timeout=30).get_response()
        grpc_answer = f"iris:{response.model_version}"
    except InferenceServerException as error:
        grpc_answer = str(error.status())
    finally:
        client.close()
    return {
        "V1 prediction": http(
            "POST", "/v1/models/iris:predict", json={"instances": [IRIS_ROW]}
        ).get("model", "error"),
        "V1 model": http("GET", "/v1/models/iris").get("tag", "error"),
        "V2 metadata": f"iris:{v2['versions'][0]}" if v2 else "error",
        "gRPC inference": grpc_answer,
    }


@pytest.mark.slow
def test_a_restarted_runner_serves_the_newest_latest_version(
    trained_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`iris:latest` resolves when the runner loads it: a version trained since, and a runner
    restarted, and every protocol answers with (and names) the new version."""
    # A store of its own: the session's other servers keep the version they loaded.
    home = tmp_path / "home"
    shutil.copytree(trained_store / "models", home / "models")
    monkeypatch.setenv("BENTOML_HOME", str(home))
    with ServerProcess.start(tmp_path / "serve.log") as server:
        loaded = _iris_answers(server)["V1 model"]
        run_training("--fast", "--only", "iris")
        newest = (home / "models" / "iris" / "latest").read_text().strip()
        assert newest != loaded.partition(":")[2]
        runner = server.worker("model_runner")
        os.kill(runner.pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while server.workers("model_runner") in ([], [runner]):
            assert time.monotonic() < deadline, "the runner was not restarted"
            time.sleep(0.5)
        server.wait_ready()
        # Readiness answers are reused for a second: allow a few for the API to ask again.
        expected = f"iris:{newest}"
        answers = _iris_answers(server)
        while set(answers.values()) != {expected} and time.monotonic() < deadline:
            time.sleep(1)
            answers = _iris_answers(server)
        info = metric_total(server, "tabserve_model_info", model="iris", tag=expected)

    assert answers == dict.fromkeys(answers, expected), (loaded, answers)
    assert info == 1


# --- the BentoML replacements, live ---------------------------------------------------------------
def test_a_request_past_its_deadline_gets_504(trained_store: Path, tmp_path: Path) -> None:
    """_RequestDeadlineMiddleware on a live server: BentoML's request timeout, set to 1 s, and a
    runner that does not answer (stopped; the runner-call deadline set longer)."""
    env = {
        "BENTOML_CONFIG_OPTIONS": "services.tabserve.traffic.timeout=1",
        "TABSERVE_RUNNER_TIMEOUT_S": "30",
    }
    with ServerProcess.start(tmp_path / "serve.log", env) as server:
        runner = server.worker("model_runner")
        os.kill(runner.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = httpx.post(
                f"{server.url}/v1/models/churn:predict", json=PREDICT_BODY, timeout=30
            )
            took = time.monotonic() - started
        finally:
            os.kill(runner.pid, signal.SIGCONT)
        after = httpx.post(f"{server.url}/v1/models/churn:predict", json=PREDICT_BODY, timeout=30)
        counted = {
            code: metric_total(server, "tabserve_requests_total", code=code)
            for code in ("504", "500")
        }

    assert response.status_code == 504
    assert response.json() == {"error": "Not able to process the request in 1 seconds"}
    assert 1.0 <= took < 3.0
    assert after.status_code == 200
    # Our request metrics count what the client got, not a 500 for the cancelled app.
    assert counted == {"504": 1, "500": 0}


BURST_CLIENTS = 64
BURST_S = 3.0
LONE_REQUESTS = 30


async def _lone_latencies(url: str) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(LONE_REQUESTS):
            started = time.perf_counter()
            response = await client.post("/v1/models/churn:predict", json=PREDICT_BODY)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
    return sorted(latencies)


async def _burst(port: int) -> None:
    async with _under_load(port, BURST_CLIENTS):
        await asyncio.sleep(BURST_S)


def test_a_lone_request_after_a_burst_does_not_wait_for_a_batch(server) -> None:
    """_BoundedWaitOptimizer on a live server: after a burst, BentoML's own estimate made a lone
    request wait ~15 ms in the runner for company (docs/performance.md); capped at 0 it does
    not wait, so lone requests are as fast after the burst as before it."""
    before = asyncio.run(_lone_latencies(server.url))
    asyncio.run(_burst(server.port))
    after = asyncio.run(_lone_latencies(server.url))
    median_before, median_after = before[LONE_REQUESTS // 2], after[LONE_REQUESTS // 2]
    print(
        f"\nlone request p50: {median_before * 1000:.1f} ms before a burst, "
        f"{median_after * 1000:.1f} ms after"
    )
    assert median_after - median_before < 0.008
