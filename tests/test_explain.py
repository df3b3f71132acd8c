"""Explanations over every protocol, against the session's real server: V1 `:explain`, the Open
Inference output `contributions` over REST and gRPC (tritonclient), the cap, bad bodies, the
latency metric. The web page's Explain action is in tests/test_web.py.

The check that makes an explanation right: its contributions plus the base value are the model's
margin, and that margin, through the model's link (sigmoid for a binary model's log-odds, softmax
for a multi-class one's, none on the probability scale), gives the probabilities `:predict`
serves. Contributions are float32, so the sum of up to 14 of them is good to ~1e-6 on a margin of
a few units: probabilities must agree within PROBABILITY_TOLERANCE.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from tritonclient.utils import InferenceServerException

from tabserve.catalog import MODELS
from tabserve.settings import Settings
from tests.data import instances
from tests.oip_tensors import contribution_columns, infer_inputs, v1_answers
from tests.server import ServerProcess

PROBABILITY_TOLERANCE = 1e-5
ROWS = 5
EXPLAIN_MAX_ROWS = Settings.model_fields["explain_max_rows"].default


def probabilities_from_margins(scale: str, margins: np.ndarray) -> np.ndarray:
    """(rows, outputs) margins -> (rows, classes) probabilities, by the model's link."""
    if margins.shape[1] == 1:  # a binary model explains its second class
        second = margins[:, 0] if scale == "probability" else 1 / (1 + np.exp(-margins[:, 0]))
        return np.column_stack([1 - second, second])
    if scale == "probability":
        return margins
    exponentials = np.exp(margins - margins.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def explain(server: ServerProcess, model: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{model}:explain", json=body, timeout=60)


def explained_classes(model: str) -> tuple[str, ...]:
    """A binary model explains its second class, a multi-class model every class."""
    classes = MODELS[model].class_names
    return classes[1:] if len(classes) == 2 else classes


# --- V1 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_v1_contributions_add_up_to_the_served_probabilities(server, model: str) -> None:
    spec = MODELS[model]
    rows = instances(model, ROWS)
    response = explain(server, model, {"instances": rows})
    assert response.status_code == 200, response.text
    answer = response.json()
    labels, probabilities = v1_answers(server.url, model, rows)
    assert answer["model"].startswith(f"{model}:")
    explanations = answer["explanations"]
    assert [e["label"] for e in explanations] == labels

    margins = []
    for explanation in explanations:
        outputs = explanation["outputs"]
        assert tuple(output["class"] for output in outputs) == explained_classes(model)
        for output in outputs:
            contributions = output["contributions"]
            assert list(contributions) == spec.feature_names
            total = sum(contributions.values()) + output["base_value"]
            assert output["margin"] == pytest.approx(total, abs=1e-9)
            ranked = [abs(item["contribution"]) for item in output["top"]]
            assert ranked == sorted(ranked, reverse=True)
            assert {item["feature"] for item in output["top"]} == set(spec.feature_names)
        margins.append([output["margin"] for output in outputs])
        assert ("tokens" in explanation) == (model == "spam")
    scale = explanations[0]["scale"]
    assert scale in ("log-odds", "probability")
    np.testing.assert_allclose(
        probabilities_from_margins(scale, np.array(margins)),
        probabilities,
        atol=PROBABILITY_TOLERANCE,
    )


def test_v1_explanations_are_in_the_openapi_document(server) -> None:
    document = httpx.get(f"{server.url}/v1/openapi.json").json()
    for model in MODELS:
        route = document["paths"][f"/v1/models/{model}:explain"]["post"]
        schema = route["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ExplainResponse"}
        assert "413" in route["responses"]
    output = document["components"]["schemas"]["OutputExplanation"]
    assert "class" in output["properties"]


# --- the cap, bad bodies ----------------------------------------------------------------------
def test_v1_over_the_cap_is_a_413_naming_the_limit(server) -> None:
    rows = instances("churn", 1) * (EXPLAIN_MAX_ROWS + 1)
    response = explain(server, "churn", {"instances": rows})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert f"{EXPLAIN_MAX_ROWS + 1} rows" in error
    assert f"limit is {EXPLAIN_MAX_ROWS}" in error
    assert "explain_max_rows" in error
    # The same rows are fine to predict: the cap is on explanations only.
    predicted = httpx.post(f"{server.url}/v1/models/churn:predict", json={"instances": rows})
    assert predicted.status_code == 200


BAD_BODIES = {
    "not json": (b"{", "application/json"),
    "not application/json": (b"{}", "text/plain"),
    "no instances": (b"{}", "application/json"),
    "empty instances": (b'{"instances": []}', "application/json"),
    "unknown feature": (
        b'{"instances": [{"call_failures": 1, "colour": "red"}]}',
        "application/json",
    ),
    "out of range": (b'{"instances": [{"age": 500}]}', "application/json"),
    "a string for a number": (b'{"instances": [{"age": "30"}]}', "application/json"),
}


@pytest.mark.parametrize("case", BAD_BODIES)
def test_bad_bodies_get_the_predict_routes_answer(server, case: str) -> None:
    body, content_type = BAD_BODIES[case]
    answers = [
        httpx.post(
            f"{server.url}/v1/models/churn:{verb}",
            content=body,
            headers={"Content-Type": content_type},
        )
        for verb in ("predict", "explain")
    ]
    predicted, explained = answers
    assert 400 <= explained.status_code < 500
    assert (explained.status_code, explained.json()) == (predicted.status_code, predicted.json())


def test_unknown_model_is_a_404(server) -> None:
    response = explain(server, "nosuchmodel", {"instances": [{}]})
    assert response.status_code == 404
    assert "unknown model 'nosuchmodel'" in response.json()["error"]
    assert httpx.get(f"{server.url}/v1/models/churn:explain").status_code == 405


# --- Open Inference Protocol --------------------------------------------------------------------
def check_contributions(
    server: ServerProcess, model: str, rows: list[dict[str, Any]], contributions: np.ndarray
) -> None:
    """[N, outputs x (features + 1)], class by class with the base value last, adds up to the
    probabilities V1 serves for the rows, on the scale V1's :explain names."""
    _, served = v1_answers(server.url, model, rows)
    scale = explain(server, model, {"instances": rows[:1]}).json()["explanations"][0]["scale"]
    outputs = len(explained_classes(model))
    assert contributions.dtype == np.float32
    assert contributions.shape == (len(served), contribution_columns(model))
    margins = contributions.reshape(len(served), outputs, -1).astype(np.float64).sum(axis=2)
    np.testing.assert_allclose(
        probabilities_from_margins(scale, margins), served, atol=PROBABILITY_TOLERANCE
    )


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", MODELS)
def test_oip_rest_contributions(server, model: str, binary: bool) -> None:
    rows = instances(model, ROWS)
    client = http_client.InferenceServerClient(server.url.removeprefix("http://"))
    result = client.infer(
        model,
        infer_inputs(http_client, model, rows, binary),
        outputs=[
            http_client.InferRequestedOutput("contributions", binary_data=binary),
            http_client.InferRequestedOutput("probabilities", binary_data=binary),
        ],
    )
    _, served = v1_answers(server.url, model, rows)
    np.testing.assert_allclose(result.as_numpy("probabilities"), served, rtol=1e-12)
    check_contributions(server, model, rows, result.as_numpy("contributions"))


@pytest.mark.parametrize("model", MODELS)
def test_oip_grpc_contributions(server, model: str) -> None:
    rows = instances(model, ROWS)
    client = grpc_client.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    result = client.infer(
        model,
        infer_inputs(grpc_client, model, rows, binary=True),
        outputs=[grpc_client.InferRequestedOutput("contributions")],
    )
    assert [output.name for output in result.get_response().outputs] == ["contributions"]
    check_contributions(server, model, rows, result.as_numpy("contributions"))


def test_oip_contributions_only_when_requested_and_in_the_metadata(server) -> None:
    client = http_client.InferenceServerClient(server.url.removeprefix("http://"))
    result = client.infer("churn", infer_inputs(http_client, "churn", instances("churn", 2), True))
    assert [output["name"] for output in result.get_response()["outputs"]] == [
        "label",
        "probabilities",
    ]
    for model in MODELS:
        outputs = {o["name"]: o for o in client.get_model_metadata(model)["outputs"]}
        assert outputs["contributions"]["datatype"] == "FP32"
        assert outputs["contributions"]["shape"] == [-1, contribution_columns(model)]


def test_oip_over_the_cap_is_refused_naming_the_limit(server) -> None:
    rows = instances("churn", 1) * (EXPLAIN_MAX_ROWS + 1)
    rest = http_client.InferenceServerClient(server.url.removeprefix("http://"))
    wanted = [http_client.InferRequestedOutput("contributions")]
    with pytest.raises(InferenceServerException) as refused:
        rest.infer("churn", infer_inputs(http_client, "churn", rows, True), outputs=wanted)
    assert refused.value.status() == "413"
    assert f"the limit is {EXPLAIN_MAX_ROWS}" in refused.value.message()

    grpc = grpc_client.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    with pytest.raises(InferenceServerException) as refused:
        grpc.infer(
            "churn",
            infer_inputs(grpc_client, "churn", rows, True),
            outputs=[grpc_client.InferRequestedOutput("contributions")],
        )
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "explain_max_rows" in refused.value.message()


# --- the metric ---------------------------------------------------------------------------------
def test_explanation_latency_is_exported_apart_from_predictions(server) -> None:
    def count(text: str, metric: str) -> float:
        prefix = f'{metric}_count{{model="churn"}} '
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0].removeprefix(prefix)) if lines else 0.0

    before = httpx.get(server.metrics_url).text
    assert explain(server, "churn", {"instances": instances("churn", 3)}).status_code == 200
    after = httpx.get(server.metrics_url).text
    explanations = "tabserve_explanation_duration_seconds"
    assert count(after, explanations) == count(before, explanations) + 1
    inferences = "tabserve_inference_duration_seconds"
    assert count(after, inferences) == count(before, inferences)
