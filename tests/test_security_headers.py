"""Secure defaults of the HTTP port, against a real server: browser hardening headers on every
kind of response, `/` leads to our page instead of BentoML's, and the docs need no CDN.
(The pages running under their Content-Security-Policy in a real browser: tests/test_web.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest


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
    headers = response.headers
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
