"""V1 instances as Open Inference Protocol tensors, built with tritonclient as its users do.

Shared by the REST (tritonclient.http) and gRPC (tritonclient.grpc) tests: both modules have the
same `InferInput` API, so the caller passes the module.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import httpx
import numpy as np

from tabserve.catalog import MODELS
from tabserve.features import Feature, Kind


def feature_array(feature: Feature, values: list[Any]) -> tuple[str, np.ndarray]:
    """One feature's column as (datatype, array); a missing value is NaN in a float tensor."""
    if feature.kind in (Kind.CATEGORY, Kind.TEXT):
        return "BYTES", np.array([value.encode() for value in values], dtype=object)
    if feature.kind is Kind.BOOLEAN:
        return "BOOL", np.array(values, dtype=bool)
    if feature.kind is Kind.INTEGER and None not in values:
        return "INT64", np.array(values, dtype=np.int64)
    return "FP64", np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def infer_inputs(
    client_module: ModuleType, model_name: str, instances: list[dict[str, Any]], binary: bool
) -> list[Any]:
    """One input per feature; an optional feature no instance has is left out."""
    inputs = []
    for feature in MODELS[model_name].features:
        values = [instance.get(feature.name) for instance in instances]
        if all(value is None for value in values):
            continue
        datatype, array = feature_array(feature, values)
        tensor = client_module.InferInput(feature.name, list(array.shape), datatype)
        if client_module.__name__.endswith("http"):
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def v1_answers(
    url: str, model_name: str, instances: list[dict[str, Any]], headers: dict | None = None
) -> tuple[list[str], np.ndarray]:
    """The V1 API's labels and probabilities (columns in class order) for the same instances."""
    response = httpx.post(
        f"{url}/v1/models/{model_name}:predict",
        json={"instances": instances},
        headers=headers,
        timeout=30,
    )
    response.raise_for_status()
    predictions = response.json()["predictions"]
    classes = MODELS[model_name].class_names
    labels = [prediction["label"] for prediction in predictions]
    matrix = np.array([[p["probabilities"][name] for name in classes] for p in predictions])
    return labels, matrix


def assert_same_answers(result: Any, expected: tuple[list[str], np.ndarray]) -> None:
    labels, probabilities = expected
    # BYTES come back as bytes from binary data, as str from JSON data.
    received = [v if isinstance(v, str) else v.decode() for v in result.as_numpy("label")]
    assert received == labels
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-12)


def contribution_columns(model_name: str) -> int:
    """Columns of the `contributions` output: (features + 1) per explained class, one class for
    a binary model, every class for a multi-class one (docs/protocols.md, Explanations)."""
    spec = MODELS[model_name]
    explained = 1 if len(spec.class_names) == 2 else len(spec.class_names)
    return explained * (len(spec.features) + 1)
