"""Payload logging (tabserve/payloads) against a real `bentoml serve` with it turned on: every
row of a sampled request in the JSON Lines files with its exact inputs and outputs (V1, OIP REST
and gRPC), rotation, CloudEvents to a receiver on 127.0.0.1 (aiohttp, in this process), and a
receiver that hangs, fails or refuses costing records (counted) but not predictions."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from devtools.local_process import free_port
from tabserve.catalog import MODELS
from tabserve.model_input import from_rows
from tabserve.payloads.files import FileSink
from tabserve.payloads.records import Payload
from tests.data import instances
from tests.declared_metrics import PAYLOAD_LOG
from tests.oip_tensors import infer_inputs
from tests.server import ServerProcess
from tests.test_metrics import scrape, total

MAX_BYTES = 32 * 1024
MAX_FILES = 3
SINK_TIMEOUT_S = 0.5
SINK_CONCURRENCY = 2
QUEUE = 10
# A prediction is answered within the runner's deadline, twice at worst (settings.py): any
# request slower than this waited for a sink.
ANSWERED_WITHIN_S = 6.0


# --- a CloudEvents receiver ----------------------------------------------------------------------
class Receiver:
    """An HTTP server on 127.0.0.1, in a thread of its own, that keeps the events it receives
    and answers as `mode` says: "ok" (200), "fail" (500) or "hang" (never, until released);
    `refuse()` closes its port (connection refused) until `accept()`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.mode = "ok"
        self.events: list[tuple[dict[str, str], Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._released = self._call(self._make_event)
        app = web.Application()
        app.router.add_post("/events", self._receive)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        self._call(self._runner.setup)
        self._site: web.TCPSite | None = None
        self.accept()

    def _call(self, coroutine: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine(), self._loop).result(10)

    @staticmethod
    async def _make_event() -> asyncio.Event:
        return asyncio.Event()

    async def _receive(self, request: web.Request) -> web.Response:
        if self.mode == "hang":
            await self._released.wait()
            return self._closing(web.Response(status=200))
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.events.append((headers, json.loads(await request.read())))
        return self._closing(web.Response(status=500 if self.mode == "fail" else 200))

    @staticmethod
    def _closing(response: web.Response) -> web.Response:
        # No keep-alive: once `refuse` closes the port, every POST finds it closed.
        response.force_close()
        return response

    def answer(self, mode: str) -> None:
        self.mode = mode
        if mode != "hang":
            self._loop.call_soon_threadsafe(self._released.set)
        else:
            self._loop.call_soon_threadsafe(self._released.clear)

    def refuse(self) -> None:
        site, self._site = self._site, None
        if site is not None:
            self._call(site.stop)

    def accept(self) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        self._call(self._site.start)

    def close(self) -> None:
        self.answer("ok")
        self._call(self._runner.cleanup)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# --- the server ---------------------------------------------------------------------------------
class Logged:
    def __init__(self, server: ServerProcess, directory: Path, receiver: Receiver) -> None:
        self.server = server
        self.directory = directory
        self.receiver = receiver
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("payloads-*.jsonl"))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for path in self.files() for line in path.read_text().splitlines()]

    def predict(self, model: str, rows: list[dict], request_id: str | None = None) -> dict:
        headers = {"X-Request-ID": request_id} if request_id else {}
        response = self.http.post(
            f"/v1/models/{model}:predict", json={"instances": rows}, headers=headers
        )
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"still waiting for {what}"
            time.sleep(0.2)

    def count(self, name: str, **labels: str) -> float:
        return total(scrape(self.server), name, **labels)


@pytest.fixture(scope="module")
def logged(trained_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    directory = tmp_path_factory.mktemp("payloads")
    receiver = Receiver()
    env = {
        "TABSERVE_PAYLOAD_LOG_SAMPLE_RATE": "1.0",
        "TABSERVE_PAYLOAD_LOG_DIR": str(directory),
        "TABSERVE_PAYLOAD_LOG_MAX_BYTES": str(MAX_BYTES),
        "TABSERVE_PAYLOAD_LOG_MAX_FILES": str(MAX_FILES),
        "TABSERVE_PAYLOAD_LOG_URL": receiver.url,
        "TABSERVE_PAYLOAD_LOG_TIMEOUT_S": str(SINK_TIMEOUT_S),
        "TABSERVE_PAYLOAD_LOG_CONCURRENCY": str(SINK_CONCURRENCY),
        "TABSERVE_PAYLOAD_LOG_QUEUE": str(QUEUE),
    }
    log = tmp_path_factory.mktemp("payload-server") / "bentoml-serve.log"
    try:
        with ServerProcess.start(log, env) as server:
            served = Logged(server, directory, receiver)
            yield served
            served.http.close()
    finally:
        receiver.close()


def expected_inputs(model: str, instance: dict[str, Any]) -> dict[str, Any]:
    """What the model was given: the instance, with None for an optional feature left out."""
    return {name: instance.get(name) for name in MODELS[model].feature_names}


def by_request(records: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [record for record in records if record["request_id"] == request_id]


# --- every row, exactly --------------------------------------------------------------------------
def test_every_row_is_logged_with_its_exact_inputs_and_outputs_over_v1(logged: Logged) -> None:
    sent = {}
    for model in MODELS:
        rows = instances(model, 3, seed=11)
        sent[f"v1-{model}"] = (model, rows, logged.predict(model, rows, f"v1-{model}"))
    expected_rows = sum(len(rows) for _, rows, _ in sent.values())
    logged.wait_for(
        lambda: sum(len(by_request(logged.records(), rid)) for rid in sent) == expected_rows,
        f"{expected_rows} records",
    )
    records = logged.records()
    for request_id, (model, rows, answer) in sent.items():
        logged_rows = by_request(records, request_id)
        assert [record["inputs"] for record in logged_rows] == [
            expected_inputs(model, row) for row in rows
        ]
        assert [record["outputs"] for record in logged_rows] == answer["predictions"]
        for record in logged_rows:
            assert record["model"] == model
            assert record["version"] == answer["model"].split(":")[1]
            assert record["protocol"] == "v1"
            assert record["latency_ms"] > 0
            assert record["time"].endswith("Z")  # RFC 3339, UTC


def test_oip_rest_and_grpc_rows_are_logged_exactly(logged: Logged) -> None:
    model = "churn"
    rows = instances(model, 4, seed=5)
    server = logged.server
    with http_client.InferenceServerClient(server.url.removeprefix("http://")) as rest:
        rest_answer = rest.infer(
            model,
            infer_inputs(http_client, model, rows, binary=True),
            headers={"X-Request-ID": "oip-rest"},
        )
    grpc = grpc_client.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    grpc_answer = grpc.infer(
        model,
        infer_inputs(grpc_client, model, rows, binary=True),
        headers={"x-request-id": "oip-grpc"},
    )
    grpc.close()

    logged.wait_for(
        lambda: all(
            len(by_request(logged.records(), rid)) == 4 for rid in ("oip-rest", "oip-grpc")
        ),
        "the OIP records",
    )
    classes = MODELS[model].class_names
    for request_id, protocol, answer in (
        ("oip-rest", "v2", rest_answer),
        ("oip-grpc", "grpc", grpc_answer),
    ):
        logged_rows = by_request(logged.records(), request_id)
        assert [record["protocol"] for record in logged_rows] == [protocol] * 4
        assert [record["inputs"] for record in logged_rows] == [
            expected_inputs(model, row) for row in rows
        ]
        labels = [label.decode() for label in answer.as_numpy("label")]
        probabilities = [
            dict(zip(classes, row, strict=True))
            for row in answer.as_numpy("probabilities").tolist()
        ]
        assert [record["outputs"] for record in logged_rows] == [
            {"label": label, "probabilities": row}
            for label, row in zip(labels, probabilities, strict=True)
        ]


def test_tabpy_rows_are_logged(logged: Logged) -> None:
    rows = instances("iris", 2, seed=9)
    columns = {name: [row[name] for row in rows] for name in MODELS["iris"].feature_names}
    response = logged.http.post(
        "/query/iris", json={"data": columns}, headers={"X-Request-ID": "tabpy-1"}
    )
    assert response.status_code == 200, response.text
    logged.wait_for(lambda: len(by_request(logged.records(), "tabpy-1")) == 2, "2 records")
    logged_rows = by_request(logged.records(), "tabpy-1")
    assert [record["protocol"] for record in logged_rows] == ["tabpy", "tabpy"]
    assert [record["inputs"] for record in logged_rows] == rows
    assert [record["outputs"]["label"] for record in logged_rows] == response.json()["response"]


def test_a_request_without_an_id_gets_one(logged: Logged) -> None:
    before = {record["request_id"] for record in logged.records()}
    logged.predict("iris", instances("iris", 1))

    # Waits for a record with an id not seen before: earlier requests logged several records
    # under one id, so counting records against ids would stop waiting too soon.
    def new_records() -> list[dict]:
        return [r for r in logged.records() if r["request_id"] not in before]

    logged.wait_for(lambda: len(new_records()) > 0, "the record")
    (new,) = new_records()
    assert re.fullmatch("[0-9a-f]{32}", new["request_id"])  # a new random id


# --- CloudEvents ---------------------------------------------------------------------------------
def test_the_receiver_gets_request_and_response_events_in_kserves_format(logged: Logged) -> None:
    rows = instances("drug", 2, seed=3)
    answer = logged.predict("drug", rows, "ce-1")
    events = logged.receiver.events
    logged.wait_for(
        lambda: sum(headers.get("ce-id") == "ce-1" for headers, _ in events) == 2, "2 events"
    )
    by_type = {
        headers["ce-type"]: (headers, body)
        for headers, body in events
        if headers["ce-id"] == "ce-1"
    }
    assert set(by_type) == {
        "org.kubeflow.serving.inference.request",
        "org.kubeflow.serving.inference.response",
    }
    for headers, _ in by_type.values():
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-source"].startswith("http://")
        assert headers["ce-inferenceservicename"] == "drug"
        assert headers["ce-endpoint"] == "default"
        assert headers["ce-time"].endswith("Z")
        assert headers["content-type"] == "application/json"
    _, request = by_type["org.kubeflow.serving.inference.request"]
    assert request == {"instances": [expected_inputs("drug", row) for row in rows]}
    _, response = by_type["org.kubeflow.serving.inference.response"]
    assert response == answer


# --- rotation ------------------------------------------------------------------------------------
def test_rotation_keeps_at_most_the_configured_files(logged: Logged) -> None:
    written = logged.count("tabserve_payload_records_written_total", sink="jsonl")
    requests, rows = 12, 100  # ~25 KB of records a request: a new file every other request
    for index in range(requests):
        logged.predict("iris", instances("iris", rows, seed=index), f"rotate-{index}")
    logged.wait_for(
        lambda: (
            logged.count("tabserve_payload_records_written_total", sink="jsonl")
            >= written + requests * rows
        ),
        "every rotation record written",
    )
    files = logged.files()
    assert 1 < len(files) <= MAX_FILES
    assert all(path.name.startswith("payloads-w1-") for path in files)  # one API worker
    # A file ends once it holds MAX_BYTES, so it holds at most one request's rows more.
    longest_line = max(len(line) for path in files for line in path.read_bytes().splitlines())
    assert all(path.stat().st_size <= MAX_BYTES + rows * (longest_line + 1) for path in files)
    kept = {record["request_id"] for record in logged.records()}
    assert f"rotate-{requests - 1}" in kept and "rotate-0" not in kept  # the oldest went


# --- a sink that hangs or fails ------------------------------------------------------------------
def latencies(logged: Logged, count: int, prefix: str) -> list[float]:
    seconds = []
    for index in range(count):
        started = time.perf_counter()
        logged.predict("iris", instances("iris", 1, seed=index), f"{prefix}-{index}")
        seconds.append(time.perf_counter() - started)
    return seconds


def test_a_hanging_receiver_drops_records_but_not_predictions(logged: Logged) -> None:
    dropped = "tabserve_payload_records_dropped_total"
    working = latencies(logged, 40, "working")
    full_before = logged.count(dropped, sink="http", reason="queue_full")
    timeout_before = logged.count(dropped, sink="http", reason="timeout")
    logged.receiver.answer("hang")
    try:
        hanging = latencies(logged, 40, "hanging")
        print(
            f"\nV1 single-row predictions, p50: {statistics.median(working) * 1000:.1f} ms with "
            f"a working receiver, {statistics.median(hanging) * 1000:.1f} ms with a hanging one "
            f"(max {max(hanging) * 1000:.1f} ms)"
        )
        assert max(hanging) < ANSWERED_WITHIN_S
        # 2 POSTs in flight, 10 queued: most of 40 requests are dropped at once, the queued
        # ones when their POST times out.
        logged.wait_for(
            lambda: logged.count(dropped, sink="http", reason="timeout") > timeout_before,
            "timeouts counted",
        )
        assert logged.count(dropped, sink="http", reason="queue_full") > full_before
    finally:
        logged.receiver.answer("ok")
    # The file sink has its own queue: it lost nothing.
    logged.wait_for(
        lambda: len([r for r in logged.records() if r["request_id"].startswith("hanging-")]) == 40,
        "the hanging phase's records in the files",
    )


@pytest.mark.parametrize("failure", ["fail", "refuse"])
def test_a_failing_receiver_drops_records_counted_by_reason(logged: Logged, failure: str) -> None:
    reason = {"fail": "status", "refuse": "connection"}[failure]
    dropped = "tabserve_payload_records_dropped_total"
    # Let the hanging test's queue drain first (each queued payload times out in turn).
    logged.wait_for(lambda: _settled(logged), "the CloudEvents queue to drain", timeout_s=30)
    before = logged.count(dropped, sink="http", reason=reason)
    if failure == "refuse":
        logged.receiver.refuse()
    else:
        logged.receiver.answer("fail")
    try:
        latencies(logged, 5, failure)
        logged.wait_for(
            lambda: logged.count(dropped, sink="http", reason=reason) == before + 5,
            f"5 records dropped for {reason}",
        )
    finally:
        logged.receiver.answer("ok")
        if failure == "refuse":
            logged.receiver.accept()


def _settled(logged: Logged) -> bool:
    """No CloudEvent outcome changed in the last second."""

    def outcomes() -> float:
        samples = scrape(logged.server)
        return total(samples, "tabserve_payload_records_dropped_total", sink="http") + total(
            samples, "tabserve_payload_records_written_total", sink="http"
        )

    first = outcomes()
    time.sleep(1)
    return outcomes() == first


def test_the_payload_metrics_are_exposed_as_declared(logged: Logged) -> None:
    dropped = "tabserve_payload_records_dropped_total"
    before = logged.count(dropped, sink="http", reason="status")
    logged.receiver.answer("fail")  # so that a dropped series exists
    try:
        logged.predict("iris", instances("iris", 1))
        logged.wait_for(lambda: logged.count(dropped, sink="http") > before, "a drop")
    finally:
        logged.receiver.answer("ok")
    response = httpx.get(logged.server.metrics_url, timeout=30)
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    for name, (kind, labels) in PAYLOAD_LOG.items():
        family = families[name.removesuffix("_total")]
        assert family.type == kind, name
        assert {label for sample in family.samples for label in sample.labels} == labels, name
    sinks = {
        sample.labels["sink"] for sample in families["tabserve_payload_records_written"].samples
    }
    assert sinks == {"jsonl", "http"}


# --- the file sink alone (in this process, no server) --------------------------------------------
def _payload(model: str, rows: list[dict[str, Any]], request_id: str) -> Payload:
    spec = MODELS[model]
    probabilities = np.full((len(rows), len(spec.class_names)), 1 / len(spec.class_names))
    return Payload(
        time=time.time(),
        spec=spec,
        version="test",
        request_id=request_id,
        protocol="v1",
        latency_ms=1.0,
        rows=from_rows(spec, [tuple(row.get(name) for name in spec.feature_names) for row in rows]),
        labels=[spec.class_names[0]] * len(rows),
        probabilities=probabilities,
    )


def _written(sink: str) -> float:
    return REGISTRY.get_sample_value("tabserve_payload_records_written_total", {"sink": sink}) or 0


def _dropped(sink: str, reason: str) -> float:
    labels = {"sink": sink, "reason": reason}
    return REGISTRY.get_sample_value("tabserve_payload_records_dropped_total", labels) or 0


def _file_sink(directory: Path, format: str, **limits: Any) -> FileSink:
    options = {"capacity": 10, "max_bytes": 1 << 20, "max_age_s": 60.0, "max_files": 5}
    return FileSink(directory, format, "7", **{**options, **limits})


def test_parquet_files_end_by_age_hold_every_row_and_are_pruned(tmp_path: Path) -> None:
    sink = _file_sink(tmp_path, "parquet", max_age_s=0.3, max_files=2)
    written = _written("parquet")
    payloads = [_payload("spam", instances("spam", 3, seed=i), f"p-{i}") for i in range(3)]

    async def feed() -> None:
        await sink.start()
        for payload in payloads:
            sink.offer(payload)
            await asyncio.sleep(1.5)  # longer than max_age_s and the writer's idle wake-up
        await sink.stop()

    asyncio.run(feed())
    files = sorted(tmp_path.iterdir())
    assert [path.name.startswith("payloads-w7-") for path in files] == [True, True]
    assert all(path.suffix == ".parquet" for path in files)  # no partial file left
    rows = [row for path in files for row in pq.read_table(path).to_pylist()]
    expected = [record for payload in payloads[1:] for record in payload.records()]
    assert [row["request_id"] for row in rows] == [r["request_id"] for r in expected]
    assert [json.loads(row["inputs"]) for row in rows] == [r["inputs"] for r in expected]
    assert [json.loads(row["outputs"]) for row in rows] == [r["outputs"] for r in expected]
    assert _written("parquet") == written + 9  # the pruned file's rows were written too


def test_a_file_sink_that_cannot_write_drops_and_counts_then_recovers(tmp_path: Path) -> None:
    directory = tmp_path / "payloads"
    sink = _file_sink(directory, "jsonl", max_bytes=1024)  # a new file for every payload
    dropped, written = _dropped("jsonl", "write_error"), _written("jsonl")

    def wait(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.05)

    async def run() -> None:
        await sink.start()
        sink.offer(_payload("iris", instances("iris", 10), "first"))
        await asyncio.to_thread(wait, lambda: _written("jsonl") == written + 10)
        shutil.rmtree(directory)
        directory.write_text("not a directory")  # every new file fails now
        sink.offer(_payload("iris", instances("iris", 4), "lost"))
        await asyncio.to_thread(wait, lambda: _dropped("jsonl", "write_error") == dropped + 4)
        directory.unlink()
        directory.mkdir()
        sink.offer(_payload("iris", instances("iris", 2), "again"))
        await asyncio.to_thread(wait, lambda: _written("jsonl") == written + 12)
        await sink.stop()

    asyncio.run(run())
    (path,) = directory.iterdir()
    assert [json.loads(line)["request_id"] for line in path.read_text().splitlines()] == [
        "again",
        "again",
    ]
