"""The TabPy-compatible endpoints of a real server, called by TabPy's own client and as Tableau
calls /evaluate; every answer is compared with the V1 API's answer for the same rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from tabpy.tabpy_tools.client import Client
from tabpy.tabpy_tools.rest import ResponseError

from tabserve.catalog import MODELS
from tests.server import ServerProcess

IRIS_ROWS = [
    {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2},
    {"sepal_length_cm": 6.4, "sepal_width_cm": 3.2, "petal_length_cm": 4.5, "petal_width_cm": 1.5},
    {"sepal_length_cm": 6.3, "sepal_width_cm": 3.3, "petal_length_cm": 6.0, "petal_width_cm": 2.5},
]
# fmt: off
CHURN_ROWS = [
    {
        "call_failures": 8, "complains": False, "subscription_months": 38, "charge_amount": 0,
        "seconds_of_use": 4370, "call_count": 71, "sms_count": 5, "distinct_called_numbers": 17,
        "age_group": 3, "tariff_plan": 1, "status": 1, "age": 30, "customer_value": 197.64,
    },
    {
        "call_failures": 0, "complains": True, "subscription_months": 9, "charge_amount": 1,
        "seconds_of_use": 20, "call_count": 2, "sms_count": 0, "distinct_called_numbers": 1,
        "age_group": 2, "tariff_plan": 1, "status": 2, "age": 25, "customer_value": 1.5,
    },
]
# fmt: on

# What Tableau posts for a calculated field such as
#   SCRIPT_STR("return tabpy.query('iris',_arg1,_arg2,_arg3,_arg4)['response']",
#              ATTR([Sepal Length]), ATTR([Sepal Width]), ATTR([Petal Length]), ATTR([Petal Width]))
# one list per argument, one value per mark, keys in Tableau's own order.
TABLEAU_EVALUATE = """{"script":"return tabpy.query('iris',_arg1,_arg2,_arg3,_arg4)['response']",
"data":{"_arg1":[5.1,6.4,6.3],"_arg2":[3.5,3.2,3.3],"_arg3":[1.4,4.5,6.0],"_arg4":[0.2,1.5,2.5]}}"""


def columns(rows: list[dict[str, Any]], model: str) -> list[list[Any]]:
    return [[row[name] for row in rows] for name in MODELS[model].feature_names]


def v1_predictions(server, model: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answer = httpx.post(f"{server.url}/v1/models/{model}:predict", json={"instances": rows})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def evaluate(server, script: str, data: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/evaluate", json={"script": script, "data": data})


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(f"{server.url}/")


# --- TabPy's own client ---------------------------------------------------------------------------
def test_client_query_positional_columns_equals_v1(server, client: Client) -> None:
    answer = client.query("iris", *columns(IRIS_ROWS, "iris"))
    expected = [p["label"] for p in v1_predictions(server, "iris", IRIS_ROWS)]
    assert answer["response"] == expected
    assert answer["model"] == "iris"
    assert answer["tag"].startswith("iris:")
    assert len(set(expected)) == 3  # the three rows really are three different species


def test_client_query_named_probability_equals_v1(server, client: Client) -> None:
    named = dict(zip(MODELS["churn"].feature_names, columns(CHURN_ROWS, "churn"), strict=True))
    answer = client.query("churn_probability", **named)
    expected = [p["probabilities"]["churned"] for p in v1_predictions(server, "churn", CHURN_ROWS)]
    assert answer["response"] == pytest.approx(expected, abs=1e-12)


def test_client_lists_the_endpoints_with_their_argument_order(client: Client) -> None:
    endpoints = client.get_endpoints()
    assert {"churn", "churn_probability", "drug", "iris", "spam", "admission"} <= set(endpoints)
    assert "drug_probability" not in endpoints  # multi-class: no single positive class
    assert "_arg2 = sex" in endpoints["drug"].docstring


def test_client_unknown_endpoint_is_404(client: Client) -> None:
    with pytest.raises(ResponseError) as raised:
        client.query("no_such_model", [1])
    assert raised.value.status_code == 404
    assert "no_such_model" in raised.value.message


def test_client_bad_value_names_row_and_feature(client: Client) -> None:
    bad = columns(IRIS_ROWS, "iris")
    bad[2][1] = 1000.0  # petal_length_cm of row 1
    with pytest.raises(ResponseError) as raised:
        client.query("iris", *bad)
    assert raised.value.status_code == 422
    fields = [detail["field"] for detail in raised.value.info["details"]]
    assert fields == ["instances[1].petal_length_cm"]


def test_info_has_what_tableau_reads(server) -> None:
    info = httpx.get(f"{server.url}/info").json()
    assert info["versions"]["v1"]["features"]["evaluate_enabled"] is True
    assert {"description", "server_version", "name", "creation_time"} <= set(info)


# --- /evaluate as Tableau calls it ----------------------------------------------------------------
def test_recorded_tableau_evaluate_request(server) -> None:
    answer = httpx.post(
        f"{server.url}/evaluate",
        content=TABLEAU_EVALUATE,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == [p["label"] for p in v1_predictions(server, "iris", IRIS_ROWS)]


@pytest.mark.parametrize(
    "script",
    [
        'return tabpy.query("iris", _arg1, _arg2, _arg3, _arg4)["response"]',
        "\n  return tabpy.query( 'iris' ,\n    _arg1,_arg2, _arg3,_arg4 ) [ 'response' ]\n",
        "return tabpy.query('iris', _arg1, _arg2, _arg3, _arg4)['response']  # species\r\n",
        "# Tableau: species\nreturn tabpy.query('iris',_arg1,_arg2,_arg3,_arg4,)['response']",
    ],
    ids=["double-quotes", "spaces-and-newlines", "comment-crlf", "leading-comment"],
)
def test_evaluate_accepts_formatting_variations(server, script: str) -> None:
    data = json.loads(TABLEAU_EVALUATE)["data"]
    answer = evaluate(server, script, data)
    assert answer.status_code == 200, answer.text
    assert answer.json() == [p["label"] for p in v1_predictions(server, "iris", IRIS_ROWS)]


def test_evaluate_maps_columns_by_argument_name(server) -> None:
    """`_arg4, _arg3, ...` in the script: feature i takes the column the i-th argument names."""
    data = json.loads(TABLEAU_EVALUATE)["data"]
    reordered = {"_arg1": data["_arg4"], "_arg2": data["_arg3"], "_arg3": data["_arg2"]}
    reordered["_arg4"] = data["_arg1"]
    script = "return tabpy.query('iris', _arg4, _arg3, _arg2, _arg1)['response']"
    answer = evaluate(server, script, reordered)
    assert answer.status_code == 200, answer.text
    assert answer.json() == [p["label"] for p in v1_predictions(server, "iris", IRIS_ROWS)]


def test_evaluate_takes_tableau_numbers_for_integers_and_flags(server) -> None:
    """SUM([Calls]) arrives as 8.0 and a 0/1 flag as a number; both mean the same row."""
    cols = columns(CHURN_ROWS, "churn")
    loose = [[float(v) if not isinstance(v, bool) else int(v) for v in col] for col in cols]
    data = {f"_arg{i}": column for i, column in enumerate(loose, 1)}
    arguments = ", ".join(data)
    answer = evaluate(
        server, f"return tabpy.query('churn_probability', {arguments})['response']", data
    )
    assert answer.status_code == 200, answer.text
    expected = [p["probabilities"]["churned"] for p in v1_predictions(server, "churn", CHURN_ROWS)]
    assert answer.json() == pytest.approx(expected, abs=1e-12)


IRIS_ARGS = "_arg1, _arg2, _arg3, _arg4"
REJECTED_SCRIPTS = {
    "import": f"import os\nreturn tabpy.query('iris', {IRIS_ARGS})['response']",
    "os-call": "return os.system('id')",
    "dunder-import": "return __import__('os').system('id')",
    "eval": "return eval('1 + 1')",
    "other-function": f"return len([{IRIS_ARGS}])",
    "open-file": "return open('{marker}', 'w').write('x')",
    "no-response-key": f"return tabpy.query('iris', {IRIS_ARGS})",
    "other-key": f"return tabpy.query('iris', {IRIS_ARGS})['model']",
    "attribute-on-result": f"return tabpy.query('iris', {IRIS_ARGS})['response'].__class__",
    "attribute-on-argument": "return tabpy.query('iris', _arg1.__class__, _arg2, _arg3, _arg4)"
    "['response']",
    "attribute-on-tabpy": "return tabpy.query.__globals__['os']",
    "other-tabpy-method": f"return tabpy.evaluate('iris', {IRIS_ARGS})['response']",
    "string-concatenation": f"return tabpy.query('ir' + 'is', {IRIS_ARGS})['response']",
    "f-string": f"return tabpy.query(f'{{_arg1}}', {IRIS_ARGS})['response']",
    "bytes-name": f"return tabpy.query(b'iris', {IRIS_ARGS})['response']",
    "starred-argument": "return tabpy.query('iris', *_arg1)['response']",
    "keyword-argument": f"return tabpy.query('iris', {IRIS_ARGS}, timeout=1)['response']",
    "literal-argument": "return tabpy.query('iris', 5.1, 3.5, 1.4, 0.2)['response']",
    "lambda": f"return (lambda: tabpy.query('iris', {IRIS_ARGS}))()['response']",
    "extra-statement-after": f"return tabpy.query('iris', {IRIS_ARGS})['response']; x = 1",
    "extra-statement-before": f"x = 1\nreturn tabpy.query('iris', {IRIS_ARGS})['response']",
    "function-definition": "def f():\n    return 1",
    "endless-loop": "while True:\n    pass",
    "not-a-return": f"tabpy.query('iris', {IRIS_ARGS})['response']",
    "wrong-model": f"return tabpy.query('no_such_model', {IRIS_ARGS})['response']",
    "too-few-arguments": "return tabpy.query('iris', _arg1, _arg2)['response']",
    "too-many-arguments": f"return tabpy.query('iris', {IRIS_ARGS}, _arg1)['response']",
    "argument-not-in-data": "return tabpy.query('iris', _arg1, _arg2, _arg3, _arg9)['response']",
    "not-an-argument-name": "return tabpy.query('iris', _arg1, _arg2, _arg3, data)['response']",
    "syntax-error": "return tabpy.query('iris', _arg1",
    "null-byte": "return tabpy.query('iris'\x00)['response']",
    "deep-nesting": "return " + "(" * 3000 + ")" * 3000,
    "too-long": "return tabpy.query('iris', _arg1)['response']" + " " * 20_000,
    "empty": "",
}


@pytest.mark.parametrize("name", list(REJECTED_SCRIPTS))
def test_evaluate_rejects_every_other_script(server, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "created-by-script"
    script = REJECTED_SCRIPTS[name].replace("{marker}", str(marker))
    answer = evaluate(server, script, json.loads(TABLEAU_EVALUATE)["data"])
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["message"], body
    assert not marker.exists()  # nothing was run


# --- bad requests: clear errors, never a 500 ------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "status", "expected"),
    [
        ("/query/iris", b"{not json", 400, "not valid JSON"),
        ("/query/iris", b"{}", 422, "data"),
        ("/query/iris", b'{"data": "abc"}', 422, "data"),
        ("/query/iris", b'{"data": [[1.0], [2.0]]}', 422, "takes 4 arguments, got 2"),
        ("/query/iris", b'{"data": [[1.0, 2.0], [2.0], [1.0], [1.0]]}', 422, "differ in length"),
        ("/query/iris", b'{"data": {"petal_colour": [1]}}', 422, "petal_colour"),
        ("/evaluate", b"[1, 2]", 422, "body"),
        ("/evaluate", b'{"data": {}}', 422, "script"),
        ("/evaluate", b'{"script": 42}', 422, "script"),
        ("/evaluate", b'{"script": "return 1", "data": [1]}', 422, "data"),
    ],
)
def test_bad_requests_are_clear_errors(
    server, path: str, body: bytes, status: int, expected: str
) -> None:
    answer = httpx.post(
        f"{server.url}{path}", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == status, answer.text
    assert expected in json.dumps(answer.json())


def test_non_json_content_type_is_415(server) -> None:
    answer = httpx.post(
        f"{server.url}/query/iris", content=b"data=1", headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 415
    assert "application/json" in answer.json()["message"]


# --- with a token: Tableau signs in with Basic credentials, the token as password ----------------
def test_token_server_takes_tabpy_client_credentials(trained_store, tmp_path: Path) -> None:
    token = "tabpy-test-token-0123456789"
    with ServerProcess.start(tmp_path / "serve.log", env={"TABSERVE_API_TOKEN": token}) as server:
        features = httpx.get(f"{server.url}/info", auth=("tableau", token)).json()["versions"]
        assert features["v1"]["features"]["authentication"]["methods"] == {"basic-auth": {}}
        client = Client(f"{server.url}/")
        with pytest.raises(ResponseError) as raised:
            client.query("iris", *columns(IRIS_ROWS, "iris"))
        assert raised.value.status_code == 401
        client.set_credentials("tableau", token)
        assert len(client.query("iris", *columns(IRIS_ROWS, "iris"))["response"]) == 3
