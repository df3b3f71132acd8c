"""Optional bearer-token authentication, against a real `bentoml serve` started with a token."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tabserve.auth import token_is_valid
from tabserve.catalog import MODELS
from tabserve.settings import Settings, get_settings
from tests.server import ServerProcess

TOKEN = "test-token-0123456789abcdef"


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


PREDICT = "/v1/models/iris:predict"
BODY = {"instances": [MODELS["iris"].example_instance()]}


@pytest.fixture(scope="module")
def server(
    trained_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("auth") / "bentoml-serve.log"
    with ServerProcess.start(log, env={"TABSERVE_API_TOKEN": TOKEN}) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as session:
        yield session


def _assert_refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["error"] == "authentication required"
    assert body["details"] == [{"field": "Authorization", "reason": reason}]


def test_predict_without_a_token_is_refused(client: httpx.Client) -> None:
    _assert_refused(
        client.post(PREDICT, json=BODY),
        "missing Authorization header; send 'Authorization: Bearer <token>'",
    )


@pytest.mark.parametrize(
    "header",
    [
        "Bearer wrong-token-0123456789abcdef",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        f"Basic {_basic('tableau', 'wrong-token-0123456789abcdef')}",
        f"Basic {_basic('tableau', TOKEN + 'x')}",
        "Basic bm90LWJhc2U2NA==",  # base64 of "not-base64": no colon, no password
        "Basic %%%",
        TOKEN,
        "Bearer",
    ],
)
def test_predict_with_a_wrong_token_is_refused(client: httpx.Client, header: str) -> None:
    response = client.post(PREDICT, json=BODY, headers={"Authorization": header})
    _assert_refused(response, "the bearer token is not valid")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/churn"),
        ("POST", "/v1/models/nosuchmodel:predict"),
        ("POST", "/v2/models/iris/infer"),  # Open Inference Protocol REST
        ("GET", "/v2/models/iris"),
        ("POST", "/evaluate"),  # TabPy
        ("POST", "/query/iris"),
        ("GET", "/info"),
    ],
)
def test_every_model_route_needs_the_token(client: httpx.Client, method: str, path: str) -> None:
    """Deny by default: routes are refused before routing, so even ones added later are covered."""
    assert client.request(method, path, json=BODY).status_code == 401


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_predict_with_the_token_answers(client: httpx.Client, scheme: str) -> None:
    response = client.post(PREDICT, json=BODY, headers={"Authorization": f"{scheme} {TOKEN}"})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


def test_predict_with_the_token_as_basic_password_answers(client: httpx.Client) -> None:
    """What Tableau's TabPy connection sends: a user name and the token as password."""
    response = client.post(PREDICT, json=BODY, auth=("tableau", TOKEN))
    assert response.status_code == 200, response.text


def test_a_bad_request_with_the_token_still_gets_its_own_error(client: httpx.Client) -> None:
    response = client.post(
        PREDICT, json={"instances": [{}]}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 422


OPEN = ["/livez", "/readyz", "/v1/docs", "/v1/docs/assets/swagger-ui.css"]


@pytest.mark.parametrize("path", [*OPEN, "/v1/openapi.json"])
def test_probes_and_docs_are_open(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 200


def test_root_redirect_is_open_and_opens_nothing_else(client: httpx.Client) -> None:
    assert client.get("/").status_code == 307
    assert client.get("/v1/models").status_code == 401


def test_metrics_need_no_token_and_show_the_refused_requests(
    client: httpx.Client, server: ServerProcess
) -> None:
    client.post(PREDICT, json=BODY)
    metrics = httpx.get(server.metrics_url, timeout=30)
    assert metrics.status_code == 200
    assert 'http_response_code="401"' in metrics.text


@pytest.mark.parametrize("token", ["", "short", "x" * 15])
def test_a_short_or_empty_token_is_refused_at_start_up(token: str) -> None:
    with pytest.raises(ValidationError, match="api_token"):
        Settings(api_token=token)


def test_token_check_is_open_when_no_token_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TABSERVE_API_TOKEN", raising=False)
    get_settings.cache_clear()
    try:
        assert token_is_valid(None)
        assert token_is_valid("Bearer anything")
    finally:
        get_settings.cache_clear()


def test_token_check_compares_the_whole_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABSERVE_API_TOKEN", TOKEN)
    get_settings.cache_clear()
    try:
        assert token_is_valid(f"Bearer {TOKEN}")
        assert token_is_valid(f"  bearer   {TOKEN}  ")
        assert not token_is_valid(None)
        assert not token_is_valid("")
        assert not token_is_valid(f"Bearer {TOKEN[:8]}")
    finally:
        get_settings.cache_clear()
