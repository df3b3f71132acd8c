"""The Open Inference Protocol over REST, driven by NVIDIA's tritonclient against a real server.

Answers must equal the V1 API's for the same rows; every bad tensor must get the protocol's error
body (`{"error": ...}`) with a 4xx status, never a 500 or a dead server.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException

from tabserve.catalog import MODELS
from tests.data import instances
from tests.oip_tensors import (
    assert_same_answers,
    contribution_columns,
    infer_inputs,
    v1_answers,
)

ROWS = 25


@pytest.fixture(scope="module")
def client(server) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)


@pytest.fixture(scope="module")
def versions(client: tc.InferenceServerClient) -> dict[str, str]:
    return {name: client.get_model_metadata(name)["versions"][0] for name in MODELS}


def test_server_live_ready_and_metadata(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "tabserve"
    assert "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize("model_name", list(MODELS))
def test_model_ready_and_metadata(
    client: tc.InferenceServerClient, server, model_name: str
) -> None:
    spec = MODELS[model_name]
    metadata = client.get_model_metadata(model_name)
    version = metadata["versions"][0]
    assert client.is_model_ready(model_name)
    assert client.is_model_ready(model_name, version)
    assert not client.is_model_ready(model_name, "no-such-version")
    assert client.get_model_metadata(model_name, version) == metadata
    listed = httpx.get(f"{server.url}/v1/models/{model_name}").json()
    assert metadata["parameters"]["tag"] == listed["tag"] == f"{model_name}:{version}"
    assert metadata["platform"] == spec.framework
    declared = {"number": "FP64", "integer": "INT64", "boolean": "BOOL"}
    assert metadata["inputs"] == [
        {"name": f.name, "datatype": declared.get(f.kind, "BYTES"), "shape": [-1]}
        for f in spec.features
    ]
    assert metadata["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(spec.class_names)]},
        {
            "name": "contributions",
            "datatype": "FP32",
            "shape": [-1, contribution_columns(model_name)],
        },
    ]
    assert metadata["parameters"]["class_names"] == list(spec.class_names)


def test_unknown_model_is_not_ready_and_has_no_metadata(client: tc.InferenceServerClient) -> None:
    assert not client.is_model_ready("no-such-model")
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("no-such-model")
    assert raised.value.status() == "404"
    assert "unknown model 'no-such-model'" in raised.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_inference_equals_the_v1_answers(
    client: tc.InferenceServerClient, server, model_name: str, binary: bool
) -> None:
    rows = instances(model_name, ROWS, seed=3)
    outputs = [
        tc.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")
    ]
    result = client.infer(
        model_name, infer_inputs(tc, model_name, rows, binary), outputs=outputs, request_id="r-1"
    )
    assert result.get_response()["id"] == "r-1"
    assert_same_answers(result, v1_answers(server.url, model_name, rows))


def test_default_outputs_are_binary_and_complete(client: tc.InferenceServerClient, server) -> None:
    rows = instances("churn", 5)
    result = client.infer("churn", infer_inputs(tc, "churn", rows, binary=True))
    outputs = result.get_response()["outputs"]
    assert [output["name"] for output in outputs] == ["label", "probabilities"]
    assert all("binary_data_size" in output["parameters"] for output in outputs)
    assert_same_answers(result, v1_answers(server.url, "churn", rows))


def test_one_requested_output_only(client: tc.InferenceServerClient) -> None:
    rows = instances("iris", 3)
    result = client.infer(
        "iris",
        infer_inputs(tc, "iris", rows, binary=False),
        outputs=[tc.InferRequestedOutput("label", binary_data=False)],
    )
    assert [output["name"] for output in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None


def test_versioned_infer_and_an_unknown_version(
    client: tc.InferenceServerClient, versions: dict[str, str]
) -> None:
    rows = instances("drug", 4)
    result = client.infer(
        "drug", infer_inputs(tc, "drug", rows, True), model_version=versions["drug"]
    )
    assert result.get_response()["model_version"] == versions["drug"]
    with pytest.raises(InferenceServerException) as raised:
        client.infer("drug", infer_inputs(tc, "drug", rows, True), model_version="v0")
    assert raised.value.status() == "404"
    assert "has no version or alias 'v0'" in raised.value.message()


def test_optional_features_missing_as_nan_or_left_out(
    client: tc.InferenceServerClient, server
) -> None:
    """Admission vitals are optional: NaN in some rows, a whole input left out, as V1 omits them."""
    rows = instances("admission", 30, seed=5)
    for row in rows[::3]:  # NaN in a float tensor; pain_score (integer) goes as FP64 then
        row.pop("sbp", None)
        row.pop("pain_score", None)
    for row in rows:  # no row has it: the input is left out
        row.pop("o2_saturation", None)
    result = client.infer("admission", infer_inputs(tc, "admission", rows, binary=True))
    assert_same_answers(result, v1_answers(server.url, "admission", rows))


def _json_infer(
    server, model_name: str, inputs: list[dict[str, Any]], **extra: Any
) -> httpx.Response:
    body = {"inputs": inputs, **extra}
    return httpx.post(f"{server.url}/v2/models/{model_name}/infer", json=body, timeout=30)


def _iris_inputs(rows: int = 2, **changes: dict[str, Any]) -> list[dict[str, Any]]:
    inputs = {
        name: {"name": name, "datatype": "FP64", "shape": [rows], "data": [1.5] * rows}
        for name in MODELS["iris"].feature_names
    }
    for name, change in changes.items():
        inputs[name] = {**inputs.get(name, {"name": name}), **change}
    return list(inputs.values())


def test_nested_data_and_n_by_1_shapes_are_accepted(server) -> None:
    inputs = [
        {"name": name, "datatype": "FP32", "shape": [2, 1], "data": [[1.5], [4.5]]}
        for name in MODELS["iris"].feature_names
    ]
    response = _json_infer(server, "iris", inputs)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][1]["shape"] == [2, 3]


BAD_TENSORS = {
    "wrong shape": (_iris_inputs(petal_width_cm={"shape": [1, 2]}), 400, "expected [N] or [N, 1]"),
    "too few elements": (_iris_inputs(petal_width_cm={"shape": [3]}), 400, "needs 3 elements"),
    "wrong datatype": (
        _iris_inputs(petal_width_cm={"datatype": "BYTES", "data": ["a", "b"]}),
        400,
        "has datatype BYTES",
    ),
    "unknown datatype": (
        _iris_inputs(petal_width_cm={"datatype": "FP128"}),
        400,
        "unknown datatype",
    ),
    "string in a FP64 tensor": (
        _iris_inputs(petal_width_cm={"data": [1.0, "1.0"]}),
        400,
        "is not a FP64 value",
    ),
    "unknown input": (
        _iris_inputs(stem_length_cm={"datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}),
        400,
        "unknown input 'stem_length_cm'",
    ),
    "missing required input": (
        _iris_inputs()[:3],
        400,
        "missing required input(s): petal_width_cm",
    ),
    "batch sizes differ": (
        _iris_inputs(petal_width_cm={"shape": [3], "data": [1.0, 2.0, 3.0]}),
        400,
        "same number of rows",
    ),
    "empty batch": (_iris_inputs(rows=0), 400, "batch size 0"),
    "input given twice": (_iris_inputs() + _iris_inputs()[:1], 400, "more than once"),
    "value out of bounds": (
        _iris_inputs(petal_width_cm={"data": [1.0, 1000.0]}),
        422,
        "petal_width_cm[1]: Input should be less than or equal to 100",
    ),
    "no data": (_iris_inputs(petal_width_cm={"data": None}), 400, "neither data nor"),
    "shape of strings": (_iris_inputs(petal_width_cm={"shape": ["2"]}), 400, "inputs[3].shape[0]"),
}


@pytest.mark.parametrize("inputs, status, message", BAD_TENSORS.values(), ids=BAD_TENSORS.keys())
def test_bad_tensors_get_the_protocol_error_body(
    server, inputs: list[dict[str, Any]], status: int, message: str
) -> None:
    response = _json_infer(server, "iris", inputs)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_batch_larger_than_the_limit_is_refused(server) -> None:
    rows = 1001  # Settings.max_instances defaults to 1000
    response = _json_infer(server, "iris", _iris_inputs(rows=rows))
    assert response.status_code == 400
    # Refused on the first input's shape, before any element is read.
    error = "input 'sepal_length_cm': batch size 1001 is outside 1..1000 rows"
    assert response.json() == {"error": error}


def test_unknown_output_is_refused(server) -> None:
    response = _json_infer(server, "iris", _iris_inputs(), outputs=[{"name": "logits"}])
    assert response.status_code == 400
    assert "unknown output 'logits'" in response.json()["error"]


def test_unknown_model_and_not_json(server) -> None:
    response = _json_infer(server, "no-such-model", _iris_inputs())
    assert response.status_code == 404
    assert response.json() == {
        "error": "unknown model 'no-such-model'; available: churn, drug, iris, spam, admission"
    }
    broken = httpx.post(f"{server.url}/v2/models/iris/infer", content=b"{not json", timeout=30)
    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["error"]


def _binary_request(
    header: dict[str, Any], blobs: bytes, header_length: str | None = None
) -> tuple:
    encoded = json.dumps(header).encode()
    length = str(len(encoded)) if header_length is None else header_length
    return encoded + blobs, {"Inference-Header-Content-Length": length}


BINARY_CASES = {
    "size past the end": ({"binary_data_size": 64}, np.zeros(2).tobytes(), None, "does not fit"),
    "leftover bytes": ({"binary_data_size": 16}, np.zeros(3).tobytes(), None, "belong to no input"),
    "not whole elements": (
        {"binary_data_size": 15},
        np.zeros(2).tobytes()[:15],
        None,
        "whole number",
    ),
    "bad header length": ({"binary_data_size": 16}, np.zeros(2).tobytes(), "99999", "JSON header"),
}


@pytest.mark.parametrize(
    "parameters, blob, header_length, message", BINARY_CASES.values(), ids=BINARY_CASES.keys()
)
def test_bad_binary_tensor_data(
    server, parameters: dict, blob: bytes, header_length, message: str
) -> None:
    inputs = _iris_inputs(petal_width_cm={"data": None, "parameters": parameters})
    body, headers = _binary_request({"inputs": inputs}, blob, header_length)
    response = httpx.post(
        f"{server.url}/v2/models/iris/infer", content=body, headers=headers, timeout=30
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_binary_nan_in_a_required_feature_and_bad_utf8(server) -> None:
    nan = _iris_inputs(petal_width_cm={"data": None, "parameters": {"binary_data_size": 16}})
    body, headers = _binary_request({"inputs": nan}, np.array([1.0, math.nan]).tobytes())
    response = httpx.post(
        f"{server.url}/v2/models/iris/infer", content=body, headers=headers, timeout=30
    )
    assert response.status_code == 422
    assert response.json()["error"] == "petal_width_cm[1]: Input should be a finite number"

    text = b"\xff\xfe"
    spam = [
        {"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}
    ]
    body, headers = _binary_request({"inputs": spam}, struct.pack("<I", len(text)) + text)
    response = httpx.post(
        f"{server.url}/v2/models/spam/infer", content=body, headers=headers, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"] == "input 'text'[0] is not valid UTF-8"


def test_tritonclient_sees_errors_as_exceptions_and_the_server_lives_on(
    client: tc.InferenceServerClient,
) -> None:
    rows = instances("churn", 3)
    inputs = infer_inputs(tc, "churn", rows, binary=True)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("churn", inputs[:-1])
    assert raised.value.status() == "400"
    assert "missing required input(s): customer_value" in raised.value.message()
    assert client.is_server_ready()


def test_binary_bodies_may_be_labelled_octet_stream(server) -> None:
    """Triton's binary data extension documents its bodies as application/octet-stream: with the
    Inference-Header-Content-Length header that label is accepted; without it, the body cannot
    be binary tensors and the label is refused (415) as on every JSON route."""
    widths = np.array([0.2, 1.8])
    inputs = _iris_inputs(petal_width_cm={"data": None, "parameters": {"binary_data_size": 16}})
    body, headers = _binary_request({"inputs": inputs}, widths.tobytes())
    url = f"{server.url}/v2/models/iris/infer"
    octet = {"Content-Type": "application/octet-stream"}
    labelled = httpx.post(url, content=body, headers={**headers, **octet}, timeout=30)
    unlabelled = httpx.post(url, content=body, headers=headers, timeout=30)
    assert labelled.status_code == unlabelled.status_code == 200, labelled.text
    assert labelled.json()["outputs"] == unlabelled.json()["outputs"]

    refused = httpx.post(url, json={"inputs": _iris_inputs()}, headers=octet, timeout=30)
    assert refused.status_code == 415
    assert "application/json" in refused.json()["error"]
