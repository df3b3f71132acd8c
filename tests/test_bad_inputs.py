"""Every kind of bad request gets a 4xx JSON error naming the field and the reason; never a 500."""

from __future__ import annotations

import httpx
import pytest

from tabserve.catalog import MODELS
from tabserve.settings import Settings

IRIS = MODELS["iris"].example_instance()
DRUG = MODELS["drug"].example_instance()
CHURN = MODELS["churn"].example_instance()
LIMITS = Settings()


def _iris(**changes: object) -> dict:
    return {"instances": [{**IRIS, **changes}]}


def _drug(**changes: object) -> dict:
    return {"instances": [{**DRUG, **changes}]}


def _without(instance: dict, name: str) -> dict:
    return {"instances": [{k: v for k, v in instance.items() if k != name}]}


# (case id, model, body: dict to send as JSON or raw bytes, status, field or None, reason part)
CASES = [
    ("unknown model", "nope", _iris(), 404, None, "unknown model 'nope'"),
    ("malformed JSON", "iris", b'{"instances": [', 400, None, "not valid JSON"),
    ("empty body", "iris", b"", 400, None, "not valid JSON"),
    ("not UTF-8", "iris", b'{"instances": ["\xff\xfe"]}', 400, None, "not valid JSON"),
    ("body is a list", "iris", [IRIS], 422, "body", "an object"),
    ("instances missing", "iris", {"rows": [IRIS]}, 422, "instances", "required field"),
    ("instances not a list", "iris", {"instances": IRIS}, 422, "instances", "valid array"),
    ("instances empty", "iris", {"instances": []}, 422, "instances", "at least 1 item"),
    (
        "too many instances",
        "iris",
        {"instances": [IRIS] * (LIMITS.max_instances + 1)},
        422,
        "instances",
        f"at most {LIMITS.max_instances} items",
    ),
    (
        "instance not an object",
        "iris",
        {"instances": [[5.1, 3.5, 1.4, 0.2]]},
        422,
        "instances[0]",
        "an object",
    ),
    (
        "feature missing",
        "iris",
        _without(IRIS, "petal_width_cm"),
        422,
        "instances[0].petal_width_cm",
        "required field is missing",
    ),
    (
        "string for a number",
        "iris",
        _iris(sepal_length_cm="5.1"),
        422,
        "instances[0].sepal_length_cm",
        "valid number",
    ),
    (
        "bool for a number",
        "iris",
        _iris(sepal_length_cm=True),
        422,
        "instances[0].sepal_length_cm",
        "valid number",
    ),
    (
        "null for a required number",
        "iris",
        _iris(sepal_length_cm=None),
        422,
        "instances[0].sepal_length_cm",
        "valid number",
    ),
    (
        "NaN",
        "iris",
        b'{"instances": [{"sepal_length_cm": NaN, "sepal_width_cm": 3.5, '
        b'"petal_length_cm": 1.4, "petal_width_cm": 0.2}]}',
        422,
        "instances[0].sepal_length_cm",
        "finite number",
    ),
    (
        "Infinity",
        "iris",
        b'{"instances": [{"sepal_length_cm": 5.1, "sepal_width_cm": Infinity, '
        b'"petal_length_cm": 1.4, "petal_width_cm": 0.2}]}',
        422,
        "instances[0].sepal_width_cm",
        "finite number",
    ),
    (
        "overflowing number",
        "iris",
        b'{"instances": [{"sepal_length_cm": 5.1, '
        b'"sepal_width_cm": 3.5, "petal_length_cm": 1e999, "petal_width_cm": 0.2}]}',
        422,
        "instances[0].petal_length_cm",
        "finite number",
    ),
    (
        "negative length",
        "iris",
        _iris(petal_width_cm=-0.2),
        422,
        "instances[0].petal_width_cm",
        "greater than or equal to 0",
    ),
    ("absurd age", "drug", _drug(age=430), 422, "instances[0].age", "less than or equal to 120"),
    ("fractional integer", "drug", _drug(age=47.5), 422, "instances[0].age", "valid integer"),
    (
        "unknown category",
        "drug",
        _drug(bp="VERY HIGH"),
        422,
        "instances[0].bp",
        "'HIGH', 'LOW' or 'NORMAL'",
    ),
    ("category in the wrong case", "drug", _drug(sex="m"), 422, "instances[0].sex", "'F' or 'M'"),
    (
        "number for a category",
        "drug",
        _drug(cholesterol=1),
        422,
        "instances[0].cholesterol",
        "'HIGH' or 'NORMAL'",
    ),
    (
        "unknown feature",
        "drug",
        _drug(weight_kg=80),
        422,
        "instances[0].weight_kg",
        "not a feature of this model",
    ),
    (
        "unknown top-level field",
        "drug",
        {**_drug(), "parameters": {}},
        422,
        "parameters",
        "unknown field",
    ),
    (
        "string for a boolean",
        "churn",
        {"instances": [{**CHURN, "complains": "no"}]},
        422,
        "instances[0].complains",
        "valid boolean",
    ),
    (
        "error in a later instance",
        "iris",
        {"instances": [IRIS, IRIS, {**IRIS, "sepal_width_cm": "x"}]},
        422,
        "instances[2].sepal_width_cm",
        "valid number",
    ),
    (
        "empty text",
        "spam",
        {"instances": [{"text": ""}]},
        422,
        "instances[0].text",
        "at least 1 character",
    ),
    (
        "over-long text",
        "spam",
        {"instances": [{"text": "a" * (LIMITS.max_text_chars + 1)}]},
        422,
        "instances[0].text",
        f"at most {LIMITS.max_text_chars} characters",
    ),
    (
        "number for text",
        "spam",
        {"instances": [{"text": 42}]},
        422,
        "instances[0].text",
        "valid string",
    ),
    (
        "vital out of range",
        "admission",
        {
            "instances": [
                {
                    "age": 71,
                    "sex": "male",
                    "arrival_mode": "walk_in",
                    "injury": False,
                    "mental_state": "alert",
                    "pain": False,
                    "triage_acuity": 3,
                    "o2_saturation": 130,
                }
            ]
        },
        422,
        "instances[0].o2_saturation",
        "less than or equal to 100",
    ),
]


@pytest.mark.parametrize(
    ("model", "body", "status", "field", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_is_refused_with_field_and_reason(
    server, model: str, body: object, status: int, field: str | None, reason: str
) -> None:
    url = f"{server.url}/v1/models/{model}:predict"
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(url, json=body)

    assert response.status_code == status, response.text
    error = response.json()
    assert reason in error["error"]
    if field is not None:
        assert error["error"].startswith(f"{field}: ")
        assert any(d["field"] == field and reason in d["reason"] for d in error["details"])


def test_every_problem_in_a_request_is_listed(server) -> None:
    body = {"instances": [{**IRIS, "sepal_length_cm": "x", "petal_width_cm": -1, "color": "blue"}]}
    response = httpx.post(f"{server.url}/v1/models/iris:predict", json=body)
    assert response.status_code == 422
    fields = [detail["field"] for detail in response.json()["details"]]
    assert sorted(fields) == [
        "instances[0].color",
        "instances[0].petal_width_cm",
        "instances[0].sepal_length_cm",
    ]
    assert "(and 2 more)" in response.json()["error"]


def test_wrong_content_type_is_415(server) -> None:
    response = httpx.post(
        f"{server.url}/v1/models/iris:predict",
        content=b"a,b\n1,2",
        headers={"content-type": "text/csv"},
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_body_over_the_limit_is_413(server) -> None:
    too_big = b'{"instances": [' + b" " * LIMITS.max_body_bytes + b"]}"
    response = httpx.post(
        f"{server.url}/v1/models/iris:predict",
        content=too_big,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert f"limit is {LIMITS.max_body_bytes}" in response.json()["error"]


def test_chunked_body_over_the_limit_is_413(server) -> None:
    def chunks():
        yield b'{"instances": ['
        for _ in range(LIMITS.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    response = httpx.post(
        f"{server.url}/v1/models/iris:predict",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PATCH", "/v1/models/churn:predict", 405),
        ("PUT", "/v1/models/churn:predict", 405),
        ("GET", "/v1/models/nope", 404),
        ("DELETE", "/v1/models", 405),
    ],
)
def test_wrong_method_or_unknown_model_on_other_routes(
    server, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, f"{server.url}{path}")
    assert response.status_code == status
    assert response.json()["error"]


def test_the_service_still_answers_after_all_that(server) -> None:
    response = httpx.post(f"{server.url}/v1/models/iris:predict", json={"instances": [IRIS]})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "setosa"
