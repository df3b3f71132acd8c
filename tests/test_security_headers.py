"""Secure defaults of the HTTP port, against a real server: browser hardening headers on every
kind of response, `/` leads to our page instead of BentoML's, and the docs need no CDN.
(The pages running under their Content-Security-Policy in a real browser: tests/test_web.py.)"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tabserve.catalog import MODELS
from tests.server import ServerProcess


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as session:
        yield session


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 307),
        ("GET", "/ui/", 200),
        ("GET", "/ui/app.js", 200),
        ("GET", "/v1/docs", 200),
        ("GET", "/v1/docs/assets/swagger-ui-bundle.js", 200),
        ("GET", "/v1/openapi.json", 200),
        ("GET", "/v1/models", 200),
        ("POST", "/v1/models/iris:predict", 422),  # an error echoing the caller's input
        ("GET", "/no/such/path", 404),
        ("GET", "/endpoints", 200),  # TabPy
        ("GET", "/v2/health/ready", 200),
        # BentoML's own routes, outside our FastAPI app.
        ("GET", "/livez", 200),
        ("GET", "/readyz", 200),
        ("GET", "/metrics", 404),  # served on the metrics port (tabserve/metrics_server.py)
        ("GET", "/schema.json", 200),
    ],
)
def test_every_response_carries_the_security_headers(
    client: httpx.Client, method: str, path: str, status: int
) -> None:
    response = client.request(method, path, json={"instances": [{"sepal_length_cm": "<b>"}]})
    assert response.status_code == status, response.text
    _assert_security_headers(response.headers)


def _assert_security_headers(headers: httpx.Headers) -> None:
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    directives = headers["content-security-policy"].split(";")
    policy = dict(directive.strip().split(" ", 1) for directive in directives)
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["script-src"] == "'self'"  # no inline, no eval, no other origin
    assert policy["style-src"] == "'self'"


def test_root_redirects_to_the_prediction_page(client: httpx.Client) -> None:
    response = client.get("/", follow_redirects=True)
    assert response.status_code == 200
    assert str(response.url).endswith("/ui/")
    assert "<title>tabserve" in response.text
    assert "googletagmanager" not in response.text


@pytest.mark.parametrize("path", ["/docs.json", "/static_content/swagger-initializer.js"])
def test_bentoml_docs_are_off(client: httpx.Client, path: str) -> None:
    """BentoML's document lacked our request schemas, and its page loaded Google Tag Manager."""
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "Not Found; the API is documented at /v1/docs"


def test_docs_page_loads_nothing_from_another_origin(client: httpx.Client) -> None:
    page = client.get("/v1/docs").text
    # Every src/href is relative: served by this server, so the page works offline.
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert references, page
    assert all(not re.match(r"^(\w+:)?//", reference) for reference in references), references
    for reference in references:  # each one is there
        assert client.get(f"/v1/{reference}").status_code == 200, reference


# --- answers written by the layers around the app: BentoML's, and the admission ----------------
PREDICT = "/v1/models/churn:predict"
PREDICT_BODY = {"instances": [MODELS["churn"].example_instance()]}
# BentoML's request deadline (its traffic.timeout, 504) and, in the second case, its own
# concurrency limit (traffic.max_concurrency, 429), set through BentoML's config.
DEADLINE = "services.tabserve.traffic.timeout=2"
OUTER_LAYERS = {
    "admission sheds 503, BentoML's deadline 504": (
        {
            "BENTOML_CONFIG_OPTIONS": DEADLINE,
            "TABSERVE_MAX_IN_FLIGHT": "1",
            "TABSERVE_MAX_QUEUED": "0",
        },
        503,
    ),
    "BentoML's concurrency limit 429, its deadline 504": (
        {"BENTOML_CONFIG_OPTIONS": f"{DEADLINE} services.tabserve.traffic.max_concurrency=1"},
        429,
    ),
}


async def _held_then_refused(url: str) -> tuple[httpx.Response, httpx.Response]:
    """The first request holds the only slot (the runner is stopped) until the deadline's 504;
    the second, sent meanwhile, is refused at once."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        held = asyncio.create_task(client.post(PREDICT, json=PREDICT_BODY))
        await asyncio.sleep(0.5)
        refused = await client.post(PREDICT, json=PREDICT_BODY)
        return await held, refused


@pytest.mark.parametrize(("env", "refused_status"), OUTER_LAYERS.values(), ids=OUTER_LAYERS)
def test_refusals_and_timeouts_from_outside_the_app_carry_the_headers(
    env: dict[str, str], refused_status: int, trained_store: Path, tmp_path: Path
) -> None:
    """BentoML writes these answers in its own middleware, which wraps the service's; the
    admission's 503 is written before the app is reached. The browser headers are on them too."""
    env = {**env, "TABSERVE_RUNNER_TIMEOUT_S": "30"}  # the stopped runner holds the call
    with ServerProcess.start(tmp_path / "serve.log", env) as server:
        runner = server.worker("model_runner")
        os.kill(runner.pid, signal.SIGSTOP)
        try:
            timed_out, refused = asyncio.run(_held_then_refused(server.url))
        finally:
            os.kill(runner.pid, signal.SIGCONT)

    assert (timed_out.status_code, refused.status_code) == (504, refused_status)
    for response in (timed_out, refused):
        _assert_security_headers(response.headers)
