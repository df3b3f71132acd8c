"""The Open Inference Protocol over gRPC, against a real `bentoml serve` with a token configured.

Clients: tritonclient.grpc (raw tensor contents, as it always sends), its protobuf stub with
typed `contents` (as other clients send), the standard health and reflection clients. This process
never imports tabserve's own stubs: they and tritonclient's both define the protobuf package
`inference`, which one process's descriptor pool cannot hold twice.
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from devtools.local_process import free_port
from tabserve.catalog import MODELS
from tabserve.dataplane import RUNNER_REFRESH_S
from tests.data import instances
from tests.oip_tensors import (
    assert_same_answers,
    contribution_columns,
    infer_inputs,
    v1_answers,
)
from tests.server import PROJECT, ServerProcess
from tests.test_metrics import scrape, total

TOKEN = "grpc-test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SERVICE = "inference.GRPCInferenceService"
MAX_CONNECTION_AGE_S = 1.0


class Served:
    def __init__(self, server: ServerProcess, grpc_address: str) -> None:
        self.http = server
        self.address = grpc_address
        self.client = tc.InferenceServerClient(grpc_address)
        self.channel = grpc.insecure_channel(grpc_address)


@pytest.fixture(scope="module")
def served(trained_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    env = {
        "TABSERVE_GRPC_PORT": str(port),
        "TABSERVE_GRPC_HOST": "127.0.0.1",
        # With the trailing newline a Secret's value often has: not part of the token.
        "TABSERVE_API_TOKEN": f"{TOKEN}\n",
        # Every test here then also runs across connection rotations.
        "TABSERVE_GRPC_MAX_CONNECTION_AGE_S": str(MAX_CONNECTION_AGE_S),
    }
    log = tmp_path_factory.mktemp("grpc") / "bentoml-serve.log"
    with ServerProcess.start(log, env=env) as server:
        served = Served(server, f"127.0.0.1:{port}")
        wait_serving(served.channel)
        yield served
        served.client.close()
        served.channel.close()


def wait_serving(channel: grpc.Channel) -> None:
    """The gRPC server reports SERVING once the models are loaded (bounded wait)."""
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(50):
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
        except grpc.RpcError:
            status = None
        if status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.2)
    raise TimeoutError("the gRPC server never reported SERVING")


def test_health_check_serves_the_whole_server_and_the_inference_service(served: Served) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel)
    for service in ("", SERVICE):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as raised:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_the_readiness(served: Served) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()


def test_idle_the_runner_is_asked_for_its_models_only_now_and_then(served: Served) -> None:
    """With no traffic and no client checking health, the API re-reads the runner's models every
    RUNNER_REFRESH_S (a health loop asked every second: half the idle CPU of the served tree)."""

    def runner_describes() -> float:
        samples = scrape(served.http)
        return total(samples, "bentoml_service_request_total", endpoint="/describe")

    window_s = 6.0
    before = runner_describes()
    time.sleep(window_s)
    assert runner_describes() - before <= window_s // RUNNER_REFRESH_S + 1


def test_reflection_lists_and_describes_the_services(served: Served) -> None:
    database = ProtoReflectionDescriptorDatabase(served.channel)
    assert set(database.get_services()) == {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    described = database.FindFileContainingSymbol(SERVICE)
    methods = {method.name for method in described.service[0].method}
    assert methods == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }


def test_server_live_ready_and_metadata(served: Served) -> None:
    client = served.client
    assert client.is_server_live()  # open: no token needed
    assert client.is_server_ready()
    metadata = client.get_server_metadata(headers=AUTH)
    assert metadata.name == "tabserve"
    assert list(metadata.extensions) == ["binary_tensor_data"]


@pytest.mark.parametrize("model_name", list(MODELS))
def test_model_ready_metadata_and_inference_equal_v1(served: Served, model_name: str) -> None:
    spec = MODELS[model_name]
    client = served.client
    assert client.is_model_ready(model_name, headers=AUTH)
    metadata = client.get_model_metadata(model_name, headers=AUTH)
    assert [tensor.name for tensor in metadata.inputs] == spec.feature_names
    assert [list(tensor.shape) for tensor in metadata.outputs] == [
        [-1],
        [-1, len(spec.class_names)],
        [-1, contribution_columns(model_name)],  # tests/test_explain.py checks their values
    ]
    assert client.is_model_ready(model_name, metadata.versions[0], headers=AUTH)

    rows = instances(model_name, 25, seed=7)
    result = client.infer(
        model_name, infer_inputs(tc, model_name, rows, binary=True), headers=AUTH, request_id="g1"
    )
    assert result.get_response().id == "g1"
    assert result.get_response().model_version == metadata.versions[0]
    headers = {"Authorization": AUTH["authorization"]}
    assert_same_answers(result, v1_answers(served.http.url, model_name, rows, headers))


def _typed_request(rows: int = 2, **changes: dict) -> service_pb2.ModelInferRequest:
    """An iris request with typed `contents` instead of raw bytes."""
    request = service_pb2.ModelInferRequest(model_name="iris")
    for name in MODELS["iris"].feature_names:
        tensor = request.inputs.add(name=name, datatype="FP64", shape=[rows])
        tensor.contents.fp64_contents.extend([1.5] * rows)
    for name, change in changes.items():
        tensor = next((t for t in request.inputs if t.name == name), None)
        if tensor is None:
            tensor = request.inputs.add(name=name)
        for field, value in change.items():
            if field == "shape":
                del tensor.shape[:]
                tensor.shape.extend(value)
            elif field == "contents":
                tensor.ClearField("contents")
                tensor.contents.CopyFrom(value)
            else:
                setattr(tensor, field, value)
    return request


def test_typed_contents_give_the_same_answer_as_v1(served: Served) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(served.channel)
    answer = stub.ModelInfer(_typed_request(), metadata=tuple(AUTH.items()), timeout=10)
    probabilities = np.frombuffer(answer.raw_output_contents[1], dtype="<f8").reshape(2, 3)
    instance = dict.fromkeys(MODELS["iris"].feature_names, 1.5)
    headers = {"Authorization": AUTH["authorization"]}
    _, expected = v1_answers(served.http.url, "iris", [instance, instance], headers)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-12)


def _contents(**fields: list) -> service_pb2.InferTensorContents:
    return service_pb2.InferTensorContents(**fields)


BAD_REQUESTS = {
    "wrong shape": (_typed_request(petal_width_cm={"shape": [1, 2]}), "expected [N] or [N, 1]"),
    "wrong datatype": (
        _typed_request(
            petal_width_cm={"datatype": "BYTES", "contents": _contents(bytes_contents=[b"a", b"b"])}
        ),
        "has datatype BYTES",
    ),
    "contents do not match the datatype": (
        _typed_request(petal_width_cm={"datatype": "INT64"}),
        "needs 2 elements, got 0",
    ),
    "unknown input": (
        _typed_request(
            stem={"datatype": "FP64", "shape": [2], "contents": _contents(fp64_contents=[1, 2])}
        ),
        "unknown input 'stem'",
    ),
    "missing required input": (
        service_pb2.ModelInferRequest(model_name="iris", inputs=_typed_request().inputs[:3]),
        "missing required input(s): petal_width_cm",
    ),
    "batch sizes differ": (
        _typed_request(
            petal_width_cm={"shape": [3], "contents": _contents(fp64_contents=[1, 2, 3])}
        ),
        "same number of rows",
    ),
    "value out of bounds": (
        _typed_request(petal_width_cm={"contents": _contents(fp64_contents=[1, 500])}),
        "petal_width_cm[1]: Input should be less than or equal to 100",
    ),
    "FP16 without raw contents": (
        _typed_request(petal_width_cm={"datatype": "FP16"}),
        "FP16 must be sent as raw contents",
    ),
    "raw contents for some inputs only": (
        service_pb2.ModelInferRequest(
            model_name="iris", inputs=_typed_request().inputs, raw_input_contents=[b"\0" * 16]
        ),
        "raw_input_contents has 1 entries for 4 inputs",
    ),
}


def test_an_aged_connection_is_replaced_without_failing_a_call(served: Served) -> None:
    """The server sends GOAWAY to connections older than the maximum age; a client busy on one
    channel reconnects and loses no call, as a client of a terminating pod must not (the chart
    rotates connections every half preStop pause so all have moved by SIGTERM)."""
    channel = grpc.insecure_channel(served.address)
    states: list[grpc.ChannelConnectivity] = []
    channel.subscribe(states.append)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    calls, failures = 0, []
    deadline = time.monotonic() + 4 * MAX_CONNECTION_AGE_S
    with channel, ThreadPoolExecutor(4) as callers:
        while time.monotonic() < deadline:
            futures = [
                callers.submit(
                    stub.ModelInfer, _typed_request(), metadata=tuple(AUTH.items()), timeout=10
                )
                for _ in range(4)
            ]
            for future in futures:
                calls += 1
                try:
                    future.result()
                except grpc.RpcError as error:
                    failures.append(f"{error.code()}: {error.details()}")
        channel.unsubscribe(states.append)
    connections = states.count(grpc.ChannelConnectivity.READY)
    print(f"{calls} calls over {connections} connections, {len(failures)} failed")
    assert failures == [], failures[:5]
    assert connections >= 3, states  # one per age (+-10% jitter) over 4 ages


@pytest.mark.parametrize("request_, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_tensors_are_invalid_argument(
    served: Served, request_: service_pb2.ModelInferRequest, message: str
) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(served.channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request_, metadata=tuple(AUTH.items()), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()


def test_unknown_model_or_version_is_not_found(served: Served) -> None:
    rows = instances("iris", 2)
    inputs = infer_inputs(tc, "iris", rows, binary=True)
    for call in (
        lambda: served.client.infer("no-such-model", inputs, headers=AUTH),
        lambda: served.client.infer("iris", inputs, model_version="v0", headers=AUTH),
        lambda: served.client.get_model_metadata("no-such-model", headers=AUTH),
    ):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_inference_needs_the_token(served: Served) -> None:
    inputs = infer_inputs(tc, "iris", instances("iris", 2), binary=True)
    for headers in (None, {"authorization": "Bearer wrong-token-0123456789"}):
        with pytest.raises(InferenceServerException) as raised:
            served.client.infer("iris", inputs, headers=headers)
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    assert served.client.is_server_ready()


def _big_infer_inputs(rows: int) -> list[tc.InferInput]:
    """A valid iris request of `rows` rows as raw FP64 tensors: 32 bytes a row."""
    inputs = []
    for name in MODELS["iris"].feature_names:
        tensor = tc.InferInput(name, [rows], "FP64")
        tensor.set_data_from_numpy(np.full(rows, 1.5))
        inputs.append(tensor)
    return inputs


def test_a_big_unauthenticated_request_is_refused_and_the_channel_stays_usable(
    served: Served,
) -> None:
    """7.6 MiB of valid ModelInferRequest (a message under max_body_bytes), refused on its
    metadata; the refused calls leave the connection fit for the next, authenticated, call."""
    inputs = _big_infer_inputs(250_000)
    for _ in range(3):
        with pytest.raises(InferenceServerException) as raised:
            served.client.infer("iris", inputs)
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    rows = instances("iris", 2)
    answer = served.client.infer("iris", infer_inputs(tc, "iris", rows, True), headers=AUTH)
    assert len(answer.as_numpy("label")) == 2


# Not a protobuf message: a varint longer than 10 bytes.
GARBAGE = b"\xff" * 64


def _raw_model_infer(channel: grpc.Channel, message: bytes, metadata: tuple = ()) -> None:
    """ModelInfer with the message sent as given: the client serializes nothing."""
    infer = channel.unary_unary(f"/{SERVICE}/ModelInfer")  # no serializers: bytes in, bytes out
    infer(message, metadata=metadata, timeout=10)


def test_an_unauthenticated_message_is_never_parsed(served: Served) -> None:
    """The token is checked before the message is parsed: bytes no protobuf parser accepts
    (INVALID_ARGUMENT when they are parsed, with the token; gRPC's own UNKNOWN "... Error parsing
    message" before) get UNAUTHENTICATED without it. So a refusal costs no parsing."""
    with pytest.raises(grpc.RpcError) as parsed:
        _raw_model_infer(served.channel, GARBAGE, metadata=tuple(AUTH.items()))
    assert parsed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert parsed.value.details() == "the message is not a valid ModelInferRequest"
    for metadata in ((), (("authorization", "Bearer wrong-token-0123456789"),)):
        with pytest.raises(grpc.RpcError) as refused:
            _raw_model_infer(served.channel, GARBAGE, metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.details() == "send metadata 'authorization: Bearer <token>'"


def test_grpc_calls_are_counted_in_prometheus_metrics(served: Served) -> None:
    with pytest.raises(InferenceServerException):
        served.client.infer("iris", infer_inputs(tc, "iris", instances("iris", 1), True))
    exposition = httpx.get(served.http.metrics_url, timeout=10).text
    counted = [
        line
        for line in exposition.splitlines()
        if line.startswith("tabserve_requests_total{") and 'protocol="grpc"' in line
    ]
    expected = {
        ("ModelInfer", "OK"),
        ("ModelInfer", "INVALID_ARGUMENT"),
        ("ModelInfer", "UNAUTHENTICATED"),
        ("ServerLive", "OK"),
    }
    found = {
        (line.split('method="')[1].split('"')[0], line.split('code="')[1].split('"')[0])
        for line in counted
    }
    assert expected <= found, counted
    assert 'tabserve_request_duration_seconds_count{code="OK",method="ModelInfer"' in exposition


SEPARATE_CONNECTIONS = 16


def test_two_api_workers_both_serve_grpc(trained_store: Path, tmp_path: Path) -> None:
    """With TABSERVE_API_WORKERS=2 both workers listen on the gRPC port (SO_REUSEPORT) and the
    kernel spreads new connections over them: of 16 connections each worker holds some (all on
    one: 1 chance in 32768), and every one of them is answered."""
    with ServerProcess.start(tmp_path / "serve.log", {"TABSERVE_API_WORKERS": "2"}) as server:
        address = f"127.0.0.1:{server.grpc_port}"
        # A subchannel pool per channel: a TCP connection per channel, not one shared by all.
        channels = [
            grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(SEPARATE_CONNECTIONS)
        ]
        try:
            answers = []
            for channel in channels:
                wait_serving(channel)
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                answers.append(stub.ModelInfer(_typed_request(), timeout=30))
            held = {
                worker.pid: sum(
                    connection.status == psutil.CONN_ESTABLISHED
                    and connection.laddr.port == server.grpc_port
                    for connection in worker.net_connections("tcp")
                )
                for worker in server.workers("tabserve")
            }
        finally:
            for channel in channels:
                channel.close()

    assert len(held) == 2 and sum(held.values()) == SEPARATE_CONNECTIONS, held
    assert all(held.values()), f"one API worker held every gRPC connection: {held}"
    assert len({answer.SerializeToString() for answer in answers}) == 1


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """The stubs are what `make grpc-stubs` makes from the committed .proto."""
    proto = "tabserve/protocols/grpc/inference.proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            proto,
        ],
        cwd=PROJECT,
        check=True,
        timeout=60,
    )
    for name in ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py"):
        generated = tmp_path / "tabserve/protocols/grpc" / name
        assert filecmp.cmp(generated, PROJECT / "tabserve/protocols/grpc" / name, shallow=False), (
            f"{name} is stale: run `make grpc-stubs`"
        )
