"""A locust User for the Open Inference Protocol over gRPC (tabserve/protocols/grpc).

Locust has no gRPC client, so this user calls the generated stub itself and fires locust's
`request` event with the timing, which puts gRPC calls in the same statistics, CSV and HTML
report as the HTTP ones. Needs grpcio and the tabserve package (for the generated stubs).
LOADTEST_API_TOKEN, when set, goes with every call as `authorization: Bearer <token>` metadata.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

import grpc
import grpc.experimental.gevent as grpc_gevent
from grpc_requests import infer_request
from locust import User, constant, task
from payloads import auth_headers, complete_rows, oip_inputs

from tabserve.protocols.grpc import inference_pb2 as pb
from tabserve.protocols.grpc import inference_pb2_grpc

# grpcio's blocking calls would stall every greenlet of this locust process without this.
grpc_gevent.init_gevent()

TIMEOUT_S = 10.0


def grpc_target(host: str) -> str:
    """LOADTEST_GRPC_TARGET, else the HTTP host's name with LOADTEST_GRPC_PORT (8001)."""
    explicit = os.environ.get("LOADTEST_GRPC_TARGET")
    if explicit:
        return explicit
    hostname = urlsplit(host).hostname or "127.0.0.1"
    return f"{hostname}:{os.environ.get('LOADTEST_GRPC_PORT', '8001')}"


class GrpcInferUser(User):
    """Single-row churn inference over gRPC, one channel (HTTP/2 connection) per user."""

    weight = 2
    wait_time = constant(float(os.environ.get("LOADTEST_THINK_MS", "0")) / 1000)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(grpc_target(self.host or ""))
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.requests = [
            infer_request(pb, "churn", oip_inputs("churn", [row])) for row in complete_rows("churn")
        ]
        self.sent = 0
        # gRPC metadata keys are lower case.
        self.metadata = [(key.lower(), value) for key, value in auth_headers().items()]

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def model_infer(self) -> None:
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        started = time.perf_counter()
        length, error = 0, None
        try:
            length = self.stub.ModelInfer(
                request, timeout=TIMEOUT_S, metadata=self.metadata
            ).ByteSize()
        except grpc.RpcError as rpc_error:
            error = rpc_error
        self.environment.events.request.fire(
            request_type="grpc",
            name="ModelInfer churn [1 row]",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context={},
        )
