"""Junk traffic and overload against a real `bentoml serve` (issue 11).

* 20,000 distinct unknown paths leave the multiprocess metrics files and /metrics as they were.
* A flood of 400 connections (several times what one API worker serves) is shed at once with
  503, the accepted requests keep a bounded latency, memory stays put, probes answer, and the
  server serves normally afterwards.
* With tiny limits: the shed answer (503 + Retry-After, gRPC RESOURCE_EXHAUSTED), probes never
  shed, and the rows of callers that hung up while waiting never reach the runner.

Every flood and loop is bounded in count and time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as tc
from prometheus_client.parser import text_string_to_metric_families

from loadtests.soak.windows import percentile_ms
from tabserve.catalog import MODELS
from tests.oip_tensors import infer_inputs
from tests.raw_http import Connection, request_bytes
from tests.server import ServerProcess

PREDICT_BODY = {"instances": [MODELS["churn"].example_instance()]}
PREDICT = request_bytes("POST", "/v1/models/churn:predict", PREDICT_BODY)


def metric_total(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(server.metrics_url, timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def multiprocess_bytes(server: ServerProcess) -> int:
    return sum(f.stat().st_size for f in server.metrics_dir.iterdir())


# --- A: unknown paths ---------------------------------------------------------------------------
JUNK_PATHS = 20_000
JUNK_CONNECTIONS = 32
JUNK_BUDGET_S = 240
# What 20,000 unknown paths may add: the `<unmatched>` 404 series once (BentoML's count, duration
# histogram and in-progress gauge, ~4 KB of exposition); the files grow not at all.
METRICS_GROWTH_BYTES = 8_000
FILES_GROWTH_BYTES = 0


async def _get_junk_paths(port: int, count: int) -> dict[int, int]:
    paths = iter(range(count))
    statuses: dict[int, int] = {}

    async def client() -> None:
        connection = await Connection.open(port)
        for _ in paths:  # shared: the clients take the next path until all are sent
            # ~200 characters, as a scanner or fuzzer sends them
            path = "/" + "/".join(uuid.uuid4().hex for _ in range(6))
            answer = await connection.call(request_bytes("GET", path))
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
        await connection.close()

    async with asyncio.timeout(JUNK_BUDGET_S):
        await asyncio.gather(*(client() for _ in range(JUNK_CONNECTIONS)))
    return statuses


def test_unknown_paths_add_nothing_to_the_metrics_files_or_the_scrape(server) -> None:
    httpx.get(f"{server.url}/no/such/path")  # the <unmatched> 404 series exist from here on
    files_before = multiprocess_bytes(server)
    scrape_before = len(httpx.get(server.metrics_url).content)

    started = time.monotonic()
    statuses = asyncio.run(_get_junk_paths(server.port, JUNK_PATHS))
    sending_s = time.monotonic() - started
    scrape_started = time.monotonic()
    scrape_after = len(httpx.get(server.metrics_url, timeout=60).content)
    scrape_s = time.monotonic() - scrape_started
    files_after = multiprocess_bytes(server)

    print(
        f"\n{JUNK_PATHS} unknown paths in {sending_s:.1f}s: multiprocess files "
        f"{files_before / 1e6:.2f} -> {files_after / 1e6:.2f} MB, /metrics "
        f"{scrape_before / 1e3:.1f} -> {scrape_after / 1e3:.1f} KB, scrape {scrape_s:.2f}s"
    )
    assert statuses == {404: JUNK_PATHS}
    assert files_after - files_before <= FILES_GROWTH_BYTES
    assert scrape_after - scrape_before <= METRICS_GROWTH_BYTES
    assert scrape_s < 2.0


# --- B: a flood ----------------------------------------------------------------------------------
FLOOD_CONNECTIONS = 400
FLOOD_S = 15.0
# Each connection sends a request every 0.4 s (at once if the answer took longer): 1000 req/s
# offered, several times what one API worker serves on this 2-core machine shared with the
# client (~300-500 req/s). Back-to-back retries would only measure how fast the client and the
# server can trade 503s on the same two cores.
FLOOD_INTERVAL_S = 0.4
# Accepted: at most max_in_flight + max_queued (256) requests ahead, at a few hundred
# requests/s on this box. Shed: answered at once, but a turn of the worker's event loop under
# the flood and a machine shared with other builds (load average ~10 on 2 cores in the runs
# so far) put the tail near 0.4 s: the median is held to 100 ms, the tail to 1 s.
ACCEPTED_P99_S = 3.0
SHED_P50_S = 0.1
SHED_P99_S = 1.0
RSS_GROWTH_BYTES = 50 * 2**20


async def _flood(server: ServerProcess) -> tuple[dict[int, list[float]], list[float]]:
    """FLOOD_CONNECTIONS connections sending single-row predictions back to back for FLOOD_S;
    meanwhile /livez, /readyz and /metrics are asked every 0.5 s. Returns latencies by status
    and the probes' latencies."""
    latencies: dict[int, list[float]] = {}
    probe_latencies: list[float] = []
    stop_at = time.monotonic() + FLOOD_S

    async def client(number: int) -> None:
        connection = await Connection.open(server.port)
        await asyncio.sleep(FLOOD_INTERVAL_S * number / FLOOD_CONNECTIONS)  # spread the starts
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            answer = await connection.call(PREDICT)
            took = time.perf_counter() - started
            latencies.setdefault(answer.status, []).append(took)
            await asyncio.sleep(max(0.0, FLOOD_INTERVAL_S - took))
        await connection.close()

    async def probes() -> None:
        urls = (f"{server.url}/livez", f"{server.url}/readyz", server.metrics_url)
        async with httpx.AsyncClient(timeout=10) as probe:
            while time.monotonic() < stop_at:
                for probed in urls:
                    started = time.perf_counter()
                    assert (await probe.get(probed)).status_code == 200, probed
                    probe_latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.5)

    async with asyncio.timeout(FLOOD_S + 60):
        await asyncio.gather(probes(), *(client(n) for n in range(FLOOD_CONNECTIONS)))
    return latencies, probe_latencies


@pytest.mark.slow
def test_a_flood_is_shed_at_once_and_accepted_requests_stay_bounded(
    trained_store: Path, tmp_path: Path
) -> None:
    with ServerProcess.start(tmp_path / "serve.log") as server:
        api = server.worker("tabserve")
        rss_before = api.memory_info().rss
        latencies, probes = asyncio.run(_flood(server))
        rss_after = api.memory_info().rss
        after = [
            httpx.post(f"{server.url}/v1/models/churn:predict", json=PREDICT_BODY)
            for _ in range(20)
        ]
        shed_counted = metric_total(server, "tabserve_shed_requests_total", protocol="rest")

    accepted, shed = latencies.get(200, []), latencies.get(503, [])
    print(
        f"\nflood: {FLOOD_CONNECTIONS} connections, {FLOOD_S:.0f}s: "
        f"{len(accepted) / FLOOD_S:.0f} accepted/s (p50 {percentile_ms(accepted, 0.5):.0f} ms, "
        f"p99 {percentile_ms(accepted, 0.99):.0f} ms), {len(shed) / FLOOD_S:.0f} shed/s "
        f"(p50 {percentile_ms(shed, 0.5):.1f} ms, p99 {percentile_ms(shed, 0.99):.1f} ms), "
        f"probes max {max(probes) * 1000:.0f} ms, API RSS {rss_before / 2**20:.0f} -> "
        f"{rss_after / 2**20:.0f} MB"
    )
    assert set(latencies) <= {200, 503}, {status: len(v) for status, v in latencies.items()}
    assert shed, "nothing was shed: the flood did not exceed the limits, the test proves nothing"
    assert shed_counted == len(shed)
    assert percentile_ms(shed, 0.5) < SHED_P50_S * 1000
    assert percentile_ms(shed, 0.99) < SHED_P99_S * 1000
    assert percentile_ms(accepted, 0.99) < ACCEPTED_P99_S * 1000
    assert max(probes) < 1.0
    assert rss_after - rss_before < RSS_GROWTH_BYTES
    assert [response.status_code for response in after] == [200] * len(after)


# --- B: tiny limits, a stopped runner to hold the slots ------------------------------------------
LIMITS = {
    "TABSERVE_MAX_IN_FLIGHT": "4",
    "TABSERVE_MAX_QUEUED": "4",
    "TABSERVE_RUNNER_TIMEOUT_S": "60",  # the stopped runner holds the calls, never times out
}


@pytest.fixture
def limited(trained_store: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess.start(tmp_path / "serve.log", LIMITS) as server:
        yield server


async def _answered_soon(connection: Connection) -> bool:
    """Whether an answer is already on its way (the request was not held)."""
    try:
        async with asyncio.timeout(0.5):
            await connection.answer()
    except TimeoutError:
        return False
    return True


async def _hold_slots_then_hang_up(server: ServerProcess) -> dict[str, object]:
    runner = server.worker("model_runner")
    rows_before = metric_total(server, "tabserve_inference_rows_sum", model="churn")
    connections = [await Connection.open(server.port) for _ in range(9)]
    os.kill(runner.pid, signal.SIGSTOP)
    try:
        # 1 goes to the (stopped) runner, 3 wait for its call: the 4 in-flight slots; 4 more
        # wait for a slot. Sent one by one, so the order is known.
        for connection in connections[:8]:
            connection.send(PREDICT)
            await asyncio.sleep(0.2)
        held = [not await _answered_soon(c) for c in connections[:8]]
        shed = await connections[8].call(PREDICT)
        grpc_code = await _grpc_infer_code(server.grpc_port)
        async with httpx.AsyncClient(timeout=5) as probe:
            probes = {
                "livez": (await probe.get(f"{server.url}/livez")).status_code,
                "metrics": (await probe.get(server.metrics_url)).status_code,
            }
        # Callers 2, 3 (waiting for the runner call) and 5-8 (waiting for a slot) give up.
        for connection in [*connections[1:3], *connections[4:8]]:
            await connection.close()
        await asyncio.sleep(0.5)  # the server sees the connections close
    finally:
        os.kill(runner.pid, signal.SIGCONT)
    stayed = [(await connections[i].answer()).status for i in (0, 3)]
    await asyncio.sleep(2)  # what the hung-up requests would do, they have done by now
    rows_after = metric_total(server, "tabserve_inference_rows_sum", model="churn")
    return {
        "held": held,
        "shed": shed,
        "grpc_code": grpc_code,
        "probes": probes,
        "stayed": stayed,
        "rows_sent": rows_after - rows_before,
    }


async def _grpc_infer_code(port: int) -> grpc.StatusCode:
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    started = time.monotonic()
    try:
        await asyncio.to_thread(
            client.infer, "churn", infer_inputs(tc, "churn", PREDICT_BODY["instances"], binary=True)
        )
    except Exception as error:  # tritonclient's InferenceServerException carries the status
        code = error.status()
    else:
        code = "StatusCode.OK"
    assert time.monotonic() - started < 1.0, "the gRPC call was not refused at once"
    return code


def test_over_the_limits_http_and_grpc_are_refused_at_once_probes_never(limited) -> None:
    shed_before = metric_total(limited, "tabserve_shed_requests_total")
    result = asyncio.run(_hold_slots_then_hang_up(limited))
    print(f"\n{result}")

    assert result["held"] == [True] * 8, "the first 8 requests should be in flight or queued"
    shed = result["shed"]
    assert shed.status == 503
    assert shed.headers["retry-after"] == "1"
    assert b"overloaded" in shed.body
    assert result["grpc_code"] == "StatusCode.RESOURCE_EXHAUSTED"
    assert result["probes"] == {"livez": 200, "metrics": 200}
    assert metric_total(limited, "tabserve_shed_requests_total") - shed_before == 2
    assert result["stayed"] == [200, 200]
    # Only the two callers that waited were sent to the runner; the six that hung up were not.
    assert result["rows_sent"] == 2
