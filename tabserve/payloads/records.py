"""What is logged of a sampled request, and its rows as the records the sinks write.

A `Payload` is taken on the hot path (the data plane's rows and answer, no copy, no encoding);
the sinks turn it into records later, off the request's path. One record per served row:

    {"time": "2026-12-01T20:17:19.123Z", "model": "churn", "version": "<tag's version>",
     "request_id": "...", "protocol": "v1|v2|grpc|tabpy", "latency_ms": 3.1,
     "inputs": {feature: value, ...}, "outputs": {"label": ..., "probabilities": {class: p}}}

`python -m tabserve.drift` reads these JSON Lines files: keep the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tabserve.catalog import ModelSpec
from tabserve.model_input import to_rows


@dataclass(frozen=True)
class Payload:
    """One sampled prediction request: its rows and the model's answer for them."""

    time: float  # Unix time the answer was ready
    spec: ModelSpec
    version: str  # the version of the model's tag that answered
    request_id: str
    protocol: str
    latency_ms: float  # from the request's arrival to its answer
    rows: np.ndarray  # the model's input array (tabserve/model_input.py)
    labels: list[str]
    probabilities: np.ndarray  # (rows, classes), columns in spec.class_names order

    def inputs(self) -> list[dict[str, Any]]:
        names = self.spec.feature_names
        return [dict(zip(names, row, strict=True)) for row in to_rows(self.spec, self.rows)]

    def outputs(self) -> list[dict[str, Any]]:
        classes = self.spec.class_names
        return [
            {"label": label, "probabilities": dict(zip(classes, row, strict=True))}
            for label, row in zip(self.labels, self.probabilities.tolist(), strict=True)
        ]

    def records(self) -> list[dict[str, Any]]:
        """One record per row (the module's docstring shows one)."""
        common = {
            "time": rfc3339(self.time),
            "model": self.spec.name,
            "version": self.version,
            "request_id": self.request_id,
            "protocol": self.protocol,
            "latency_ms": round(self.latency_ms, 3),
        }
        return [
            {**common, "inputs": inputs, "outputs": outputs}
            for inputs, outputs in zip(self.inputs(), self.outputs(), strict=True)
        ]


def rfc3339(unix_time: float) -> str:
    """RFC 3339 in UTC with milliseconds: 2026-12-01T20:17:19.123Z."""
    moment = datetime.fromtimestamp(unix_time, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
