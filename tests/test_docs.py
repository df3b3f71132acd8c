"""docs/protocols.md stays true: each error answer it shows (marked `<!-- answer: <name> -->`)
is what a real `bentoml serve` answers to the request the text describes, and the refusals
count in the metrics as docs/observability.md says."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tabserve.catalog import MODELS
from tests.server import PROJECT, ServerProcess
from tests.test_overload import metric_total

PROTOCOLS = (PROJECT / "docs" / "protocols.md").read_text()
ANSWER = re.compile(r"<!-- answer: (?P<name>[\w-]+) -->\s*```json\n(?P<body>.*?)\n```", re.DOTALL)
PREDICT = "/v1/models/iris:predict"
JSON = {"Content-Type": "application/json"}
NUMBERS = b'{"instances": [' + b"1," * 70000 + b"1]}"

# The requests the text describes, and the status each gets.
Request = Callable[[httpx.Client], httpx.Response]
REQUESTS: dict[str, tuple[Request, int]] = {
    # "With TABSERVE_MAX_ERROR_DETAILS=3, two empty iris instances"
    "details-omitted": (lambda c: c.post(PREDICT, json={"instances": [{}, {}]}), 422),
    "body-too-large": (lambda c: c.post(PREDICT, content=b" " * 8388609, headers=JSON), 413),
    # "A body of 70,001 numbers"
    "too-many-values": (lambda c: c.post(PREDICT, content=NUMBERS, headers=JSON), 413),
    # "sepal_length_cm=" and 17000 digits: a query string of 17016 bytes
    "query-too-long": (lambda c: c.get(f"{PREDICT}?sepal_length_cm={'1' * 17000}"), 414),
}


def _documented() -> dict[str, Any]:
    return {match["name"]: json.loads(match["body"]) for match in ANSWER.finditer(PROTOCOLS)}


@pytest.fixture(scope="module")
def docs_server(trained_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = {
        "TABSERVE_MAX_ERROR_DETAILS": "3",  # as the details_omitted example says
        # One request at a time and none waiting, so that one held request sheds the next.
        "TABSERVE_MAX_IN_FLIGHT": "1",
        "TABSERVE_MAX_QUEUED": "0",
        "TABSERVE_RUNNER_TIMEOUT_S": "30",  # a stopped runner holds the call
    }
    log = tmp_path_factory.mktemp("docs") / "bentoml-serve.log"
    with ServerProcess.start(log, env) as server:
        yield server


def test_every_documented_answer_is_checked() -> None:
    assert _documented().keys() == {*REQUESTS, "shed"}


@pytest.mark.parametrize("name", REQUESTS)
def test_documented_error_answer_is_the_servers(docs_server: ServerProcess, name: str) -> None:
    send, status = REQUESTS[name]
    with httpx.Client(base_url=docs_server.url, timeout=60) as client:
        response = send(client)
    assert response.status_code == status, response.text
    assert response.json() == _documented()[name]


async def _held_then_shed(url: str, runner_pid: int) -> tuple[httpx.Response, httpx.Response]:
    """The one in-flight slot held by a request to the stopped runner, the next one is shed;
    the runner resumed, the held one is answered."""
    body = {"instances": [MODELS["iris"].example_instance()]}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        os.kill(runner_pid, signal.SIGSTOP)
        try:
            held = asyncio.create_task(client.post(PREDICT, json=body))
            await asyncio.sleep(0.5)
            shed = await client.post(PREDICT, json=body)
        finally:
            os.kill(runner_pid, signal.SIGCONT)
        return shed, await held


def test_documented_shed_answer_is_the_servers(docs_server: ServerProcess) -> None:
    url = docs_server.url
    counted_before = metric_total(docs_server, "tabserve_requests_total", code="503")
    shed_before = metric_total(docs_server, "tabserve_shed_requests_total", protocol="rest")
    runner = docs_server.worker("model_runner")
    shed, held = asyncio.run(_held_then_shed(url, runner.pid))

    assert held.status_code == 200
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert shed.json() == _documented()["shed"]
    # docs/observability.md: a shed request has its own counter, not a code in the requests.
    assert (
        metric_total(docs_server, "tabserve_shed_requests_total", protocol="rest") - shed_before
        == 1
    )
    assert metric_total(docs_server, "tabserve_requests_total", code="503") == counted_before


def test_every_test_file_the_docs_name_exists() -> None:
    """`tests/…py` in any page, and the bare `test_….py` names of the README's test list."""
    pages = [PROJECT / "README.md", *PROJECT.glob("*/README.md"), *PROJECT.glob("docs/*.md")]
    named = {
        (page.relative_to(PROJECT).as_posix(), path)
        for page in pages
        for path in re.findall(r"\btests/[\w/]+\.py\b", page.read_text())
    }
    test_list = (PROJECT / "README.md").read_text().split("\n## Tests\n", 1)[1]
    named |= {("README.md", f"tests/{name}") for name in re.findall(r"`(test_\w+\.py)`", test_list)}
    assert len(named) > 20
    missing = sorted((page, path) for page, path in named if not (PROJECT / path).is_file())
    assert not missing, missing
