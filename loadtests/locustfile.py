"""HTTP load scenarios for tabserve (locust 2.x; see loadtests/README.md).

    HotPathUser      single-row churn, V1 REST: the hot path; ~2% invalid requests
    BatchUser        100- and 1000-row churn requests
    MixedModelUser   single rows over every model, weighted by LOADTEST_MODEL_MIX
    OipRestUser      single-row churn over the Open Inference Protocol REST route
    (GrpcInferUser   in grpc_user.py: the same over gRPC; pass both files to locust)

Every user is a FastHttpUser (geventhttpclient), so one locust process is not the bottleneck.
A refused invalid request counts as a success only when it gets the expected 4xx status.
LOADTEST_API_TOKEN, when set, goes with every request as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from payloads import (
    auth_headers,
    complete_rows,
    instances,
    invalid_requests,
    oip_json_body,
    parse_weights,
    single_row_bodies,
    v1_body,
    weighted_choice,
)

JSON = {"Content-Type": "application/json", **auth_headers()}
THINK_S = float(os.environ.get("LOADTEST_THINK_MS", "0")) / 1000
MODEL_MIX = parse_weights(
    os.environ.get("LOADTEST_MODEL_MIX", "churn=4,drug=1,iris=1,spam=1,admission=1")
)


@events.init.add_listener
def record_user_classes(environment: Environment, **_kwargs: Any) -> None:
    """Write the user classes that spawned to LOADTEST_USER_CLASSES_FILE (when set): the
    thresholds (loadtests/thresholds.py) judge only the requests of classes that ran. Rewritten
    each time spawning completes: a step-load shape spawns once per step."""
    path = os.environ.get("LOADTEST_USER_CLASSES_FILE")
    if not path or isinstance(environment.runner, WorkerRunner):
        return
    ran: set[str] = set()

    def spawned(**_kwargs: Any) -> None:
        # The spawn plan: on a master (in the cluster) the users run on the workers, so the
        # master's own user_classes_count is all zeros.
        counts = environment.runner.target_user_classes_count
        ran.update(name for name, count in counts.items() if count)
        Path(path).write_text(json.dumps(sorted(ran)) + "\n")

    environment.events.spawning_complete.add_listener(spawned)


class TabserveUser(FastHttpUser):
    abstract = True
    wait_time = constant(THINK_S)
    # A bound on every request: a hung server shows up as failures, not as a stuck test.
    network_timeout = 30.0
    connection_timeout = 10.0

    def post_expecting(self, path: str, body: bytes, name: str, status: int = 200) -> None:
        with self.client.post(
            path, data=body, headers=JSON, name=name, catch_response=True
        ) as response:
            if response.status_code != status:
                response.failure(f"expected HTTP {status}, got {response.status_code}")
            elif status == 200 and b'"error"' in (response.content or b""):
                response.failure("an error body with HTTP 200")
            else:
                response.success()


class HotPathUser(TabserveUser):
    """Single-row churn predictions: the path the SLO is about."""

    weight = 10

    def on_start(self) -> None:
        self.bodies = single_row_bodies("churn")
        self.invalid = invalid_requests()

    @task(49)
    def predict_one_row(self) -> None:
        self.post_expecting(
            "/v1/models/churn:predict", random.choice(self.bodies), "v1 churn [1 row]"
        )

    @task(1)
    def invalid_request(self) -> None:
        bad = random.choice(self.invalid)
        self.post_expecting(bad.path, bad.body, f"invalid: {bad.name}", bad.expected_status)


class BatchUser(TabserveUser):
    """Batch requests: how the service handles large bodies next to the single-row traffic."""

    weight = 1

    def on_start(self) -> None:
        self.batch_100 = v1_body(instances("churn", 100))
        self.batch_1000 = v1_body(instances("churn", 1000))

    @task(5)
    def predict_100_rows(self) -> None:
        self.post_expecting("/v1/models/churn:predict", self.batch_100, "v1 churn [100 rows]")

    @task(1)
    def predict_1000_rows(self) -> None:
        self.post_expecting("/v1/models/churn:predict", self.batch_1000, "v1 churn [1000 rows]")


class MixedModelUser(TabserveUser):
    """Single rows for every model, chosen by the LOADTEST_MODEL_MIX weights."""

    weight = 2

    def on_start(self) -> None:
        self.bodies = {model: single_row_bodies(model) for model in MODEL_MIX}

    @task
    def predict_some_model(self) -> None:
        model = weighted_choice(MODEL_MIX)
        body = random.choice(self.bodies[model])
        self.post_expecting(f"/v1/models/{model}:predict", body, f"v1 {model} [1 row]")


class OipRestUser(TabserveUser):
    """Single-row churn over the Open Inference Protocol (KServe V2) REST route."""

    weight = 2

    def on_start(self) -> None:
        self.bodies = [oip_json_body("churn", row) for row in complete_rows("churn")]

    @task
    def infer(self) -> None:
        self.post_expecting(
            "/v2/models/churn/infer", random.choice(self.bodies), "v2 churn infer [1 row]"
        )
