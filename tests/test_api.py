"""The V1 REST API of a real `bentoml serve` process: every route, answers equal the models'."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tabserve.catalog import MODELS
from tabserve.settings import Settings
from tests.data import expected_probabilities, instances


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as session:
        yield session


@pytest.fixture(scope="module")
def listed(client: httpx.Client) -> dict[str, dict]:
    response = client.get("/v1/models")
    assert response.status_code == 200
    return {model["name"]: model for model in response.json()["models"]}


def test_livez_and_readyz(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_model_list_has_every_model_with_tag_metrics_and_schema(listed: dict) -> None:
    assert set(listed) == set(MODELS)
    for name, model in listed.items():
        spec = MODELS[name]
        assert model["tag"].startswith(f"{name}:") and not model["tag"].endswith(":latest")
        assert model["framework"] == spec.framework
        assert 0.5 <= model["metrics"]["accuracy"] <= 1.0
        assert [f["name"] for f in model["features"]] == spec.feature_names
        assert model["class_names"] == list(spec.class_names)


def test_describe_one_model(client: httpx.Client, listed: dict) -> None:
    response = client.get("/v1/models/drug")
    assert response.status_code == 200
    assert response.json() == listed["drug"]
    features = {f["name"]: f for f in response.json()["features"]}
    assert features["bp"]["categories"] == ["HIGH", "LOW", "NORMAL"]
    assert features["age"] == {
        "name": "age",
        "kind": "integer",
        "required": True,
        "description": "Age in years.",
        "minimum": 0,
        "maximum": 120,
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_predictions_equal_the_stored_models_answers(
    client: httpx.Client, listed: dict, name: str
) -> None:
    rows = instances(name, 25)
    response = client.post(f"/v1/models/{name}:predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == listed[name]["tag"]

    expected = expected_probabilities(body["model"], rows)
    classes = list(MODELS[name].class_names)
    served = np.array([[p["probabilities"][c] for c in classes] for p in body["predictions"]])
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-12)
    assert [p["label"] for p in body["predictions"]] == [classes[i] for i in expected.argmax(1)]


def test_admission_imputes_vitals_that_were_not_measured(client: httpx.Client) -> None:
    patient = {
        "age": 71,
        "sex": "male",
        "arrival_mode": "public_ambulance",
        "injury": False,
        "mental_state": "alert",
        "pain": True,
        "triage_acuity": 2,
    }
    omitted = client.post("/v1/models/admission:predict", json={"instances": [patient]})
    nulls = client.post(
        "/v1/models/admission:predict",
        json={"instances": [{**patient, "sbp": None, "o2_saturation": None}]},
    )
    assert omitted.status_code == nulls.status_code == 200
    assert omitted.json()["predictions"] == nulls.json()["predictions"]
    assert sum(omitted.json()["predictions"][0]["probabilities"].values()) == pytest.approx(1.0)


def test_the_largest_allowed_request_is_answered_in_full(client: httpx.Client) -> None:
    limit = Settings().max_instances
    rows = instances("iris", limit, seed=1)
    response = client.post("/v1/models/iris:predict", json={"instances": rows})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == limit


def test_openapi_documents_each_models_request_schema(client: httpx.Client) -> None:
    document = client.get("/v1/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name in MODELS:
        operation = document["paths"][f"/v1/models/{name}:predict"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        request_schema = schemas[ref.rsplit("/", 1)[1]]
        instance_ref = request_schema["properties"]["instances"]["items"]["$ref"]
        instance_schema = schemas[instance_ref.rsplit("/", 1)[1]]
        assert list(instance_schema["properties"]) == MODELS[name].feature_names
        assert {"422", "404", "413"} <= set(operation["responses"])
