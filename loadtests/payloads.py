"""Request bodies (and the token header) for the load tests, built once per locust process from
payloads.json.

Only the standard library: the locust files must run on a stock locust image (loadtests/k8s).
payloads.json holds real rows of every model's data set (written by make_payloads.py).
"""

from __future__ import annotations

import itertools
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAYLOADS = json.loads(Path(__file__).with_name("payloads.json").read_text())
MODEL_NAMES = tuple(PAYLOADS)


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer <token>` with LOADTEST_API_TOKEN, for a server that requires one
    (TABSERVE_API_TOKEN); nothing when it is unset. The gRPC user sends it as metadata."""
    token = os.environ.get("LOADTEST_API_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def instances(model: str, count: int) -> list[dict[str, Any]]:
    """`count` real instances of a model, the stored ones repeated when more are asked for."""
    stored = PAYLOADS[model]["instances"]
    return list(itertools.islice(itertools.cycle(stored), count))


def v1_body(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps({"instances": rows}).encode()


def single_row_bodies(model: str) -> list[bytes]:
    """One V1 body per stored instance: requests differ, as real traffic does."""
    return [v1_body([row]) for row in PAYLOADS[model]["instances"]]


def oip_inputs(model: str, rows: list[dict[str, Any]]) -> list[tuple[str, str, list[Any]]]:
    """(feature, datatype, one value per row) for the Open Inference Protocol: one input per
    feature. Only rows with every feature are usable: JSON has no NaN for a missing value."""
    features = PAYLOADS[model]["features"]
    datatypes = PAYLOADS[model]["datatypes"]
    return [(name, datatypes[name], [row[name] for row in rows]) for name in features]


def complete_rows(model: str) -> list[dict[str, Any]]:
    features = PAYLOADS[model]["features"]
    return [row for row in PAYLOADS[model]["instances"] if all(f in row for f in features)]


def oip_json_body(model: str, row: dict[str, Any]) -> bytes:
    """A one-row V2 REST inference request, every input of shape [1]."""
    inputs = [
        {"name": name, "datatype": datatype, "shape": [1], "data": values}
        for name, datatype, values in oip_inputs(model, [row])
    ]
    return json.dumps({"inputs": inputs}).encode()


@dataclass(frozen=True)
class InvalidRequest:
    """A request the service must refuse with `expected_status` (never a 5xx or a hang)."""

    name: str
    path: str
    body: bytes
    expected_status: int


def invalid_requests() -> list[InvalidRequest]:
    row = PAYLOADS["churn"]["instances"][0]
    path = "/v1/models/churn:predict"
    return [
        InvalidRequest("malformed JSON", path, b'{"instances": [', 400),
        InvalidRequest("unknown model", "/v1/models/no-such-model:predict", v1_body([row]), 404),
        InvalidRequest("value out of range", path, v1_body([{**row, "age": -5}]), 422),
        InvalidRequest("number as text", path, v1_body([{**row, "age": "30"}]), 422),
        InvalidRequest(
            "missing feature",
            path,
            v1_body([{k: v for k, v in row.items() if k != "call_count"}]),
            422,
        ),
        InvalidRequest("no instances", path, v1_body([]), 422),
    ]


def parse_weights(text: str) -> dict[str, float]:
    """'churn=4,iris=1' -> {'churn': 4.0, 'iris': 1.0}; names must be known models."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition("=")
        if name not in PAYLOADS:
            raise ValueError(f"unknown model {name!r} in the model mix; one of {MODEL_NAMES}")
        weights[name] = float(weight or 1)
    if not weights or sum(weights.values()) <= 0:
        raise ValueError(f"the model mix {text!r} gives no model a positive weight")
    return weights


def weighted_choice(weights: dict[str, float]) -> str:
    return random.choices(list(weights), weights=list(weights.values()))[0]
