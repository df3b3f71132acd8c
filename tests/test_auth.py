"""Optional bearer-token authentication, against a real `bentoml serve` started with a token.

The server here reads its token from a file, as a Kubernetes Secret mounted as a volume provides
it, with the trailing newline such files often have; tests/test_grpc.py and tests/test_tabpy.py
start theirs with the token in TABSERVE_API_TOKEN.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as tc
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from tabserve.auth import token_is_valid
from tabserve.catalog import MODELS
from tabserve.settings import Settings, get_settings
from tests.data import instances
from tests.oip_tensors import infer_inputs
from tests.server import ServerProcess

TOKEN = "test-token-0123456789abcdef"


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


PREDICT = "/v1/models/iris:predict"
BODY = {"instances": [MODELS["iris"].example_instance()]}


@pytest.fixture(scope="module")
def token_file_server(
    trained_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("auth")
    token_file = directory / "api-token"
    token_file.write_text(f"{TOKEN}\n")  # `echo $TOKEN > file`, `kubectl create secret --from-file`
    env = {"TABSERVE_API_TOKEN_FILE": str(token_file)}
    with ServerProcess.start(directory / "bentoml-serve.log", env=env) as server:
        yield server


@pytest.fixture(scope="module")
def client(token_file_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=token_file_server.url, timeout=30) as session:
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
    client: httpx.Client, token_file_server: ServerProcess
) -> None:
    client.post(PREDICT, json=BODY)
    metrics = httpx.get(token_file_server.metrics_url, timeout=30)
    assert metrics.status_code == 200
    assert 'http_response_code="401"' in metrics.text


def test_grpc_inference_takes_the_token_from_the_file(token_file_server: ServerProcess) -> None:
    client = tc.InferenceServerClient(f"127.0.0.1:{token_file_server.grpc_port}")
    inputs = infer_inputs(tc, "iris", instances("iris", 2), binary=True)
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.infer("iris", inputs)
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
        answer = client.infer("iris", inputs, headers={"authorization": f"Bearer {TOKEN}"})
        assert len(answer.as_numpy("label")) == 2
    finally:
        client.close()


@pytest.mark.parametrize("token", ["", "  ", "short", "x" * 15, " \n" + "x" * 15 + "\n"])
def test_a_short_or_empty_token_is_refused_at_start_up(token: str) -> None:
    with pytest.raises(ValidationError, match=r"TABSERVE_API_TOKEN: the token (is empty|has)"):
        Settings(api_token=token)


@pytest.mark.parametrize("token", [f"{TOKEN}\n", f"  {TOKEN}\r\n", f"\t{TOKEN} "])
def test_surrounding_whitespace_is_not_part_of_the_token(token: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    assert Settings(api_token=token).api_token.get_secret_value() == TOKEN
    assert Settings(api_token_file=token_file).api_token.get_secret_value() == TOKEN


@pytest.mark.parametrize("token", [f"{TOKEN}\nsecond-line", f"{TOKEN} {TOKEN}", f"{TOKEN}é"])
def test_a_token_no_client_can_send_is_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="only visible ASCII characters"):
        Settings(api_token=token)


# --- a token file that cannot serve: the server does not start ------------------------------------
DIRECTORY, MISSING = object(), object()
# The token file's content, and what `bentoml serve` stops with.
BAD_TOKEN_FILES = {
    "empty file": (b"\n", "the token is empty"),
    "short token": (b"x" * 15 + b"\n", "the token has 15 characters, at least 16 are needed"),
    "two lines": (f"{TOKEN}\n{TOKEN}\n".encode(), "the token may hold only visible ASCII"),
    "not text": (b"\xff" * 20, "the token must be ASCII text"),
    "missing file": (MISSING, "cannot read the token file: No such file or directory"),
    "a directory": (DIRECTORY, "cannot read the token file: Is a directory"),
}


@pytest.mark.parametrize(("content", "message"), BAD_TOKEN_FILES.values(), ids=BAD_TOKEN_FILES)
def test_a_bad_token_file_stops_the_server_with_a_message(
    content: bytes | object, message: str, trained_store: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    if content is DIRECTORY:
        token_file.mkdir()
    elif content is not MISSING:
        token_file.write_bytes(content)
    env = {"TABSERVE_API_TOKEN_FILE": str(token_file)}
    _assert_start_up_refused(tmp_path, env, f"TABSERVE_API_TOKEN_FILE={token_file}: {message}")


def test_an_empty_token_file_path_stops_the_server(trained_store: Path, tmp_path: Path) -> None:
    """Path("") would be the working directory; an empty value is a mistake, not "unset"."""
    env = {"TABSERVE_API_TOKEN_FILE": ""}
    _assert_start_up_refused(tmp_path, env, "TABSERVE_API_TOKEN_FILE is set but empty")


def test_a_token_in_both_the_env_and_a_file_stops_the_server(
    trained_store: Path, tmp_path: Path
) -> None:
    """Which one the clients hold is not guessed: one source of the token, or no start."""
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}-other")
    env = {"TABSERVE_API_TOKEN_FILE": str(token_file), "TABSERVE_API_TOKEN": TOKEN}
    _assert_start_up_refused(tmp_path, env, "TABSERVE_API_TOKEN and TABSERVE_API_TOKEN_FILE are")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_token_file_stops_the_server(trained_store: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0)
    env = {"TABSERVE_API_TOKEN_FILE": str(token_file)}
    _assert_start_up_refused(tmp_path, env, "cannot read the token file: Permission denied")


def _assert_start_up_refused(directory: Path, env: dict[str, str], message: str) -> None:
    log = directory / "bentoml-serve.log"
    with ServerProcess.start(log, env=env, wait_ready=False) as server:
        try:
            status = server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not stop: {log.read_text()[-2000:]}")
    output = log.read_text()
    assert status == 1
    assert output.startswith("tabserve cannot start, invalid settings:\n  TABSERVE_API_TOKEN")
    assert message in output
    assert "Traceback" not in output
    assert TOKEN not in output  # a rejected or conflicting token is never echoed
    assert len(output.splitlines()) == 2, output


def test_token_check_is_open_when_no_token_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TABSERVE_API_TOKEN", raising=False)
    monkeypatch.delenv("TABSERVE_API_TOKEN_FILE", raising=False)
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
