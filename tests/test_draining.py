"""Once the drain file exists (the chart's preStop hook creates it), every HTTP response tells its
keep-alive client to close the connection, so the client's next request opens a connection to a
live pod instead of racing this pod's shutdown (tabserve/draining.py). Against a real server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tabserve.catalog import MODELS
from tests.server import ServerProcess


def test_responses_close_their_connections_once_the_drain_file_exists(
    trained_store: Path, tmp_path: Path
) -> None:
    drain_file = tmp_path / "draining"
    env = {"TABSERVE_DRAIN_FILE": str(drain_file)}
    body = {"instances": [MODELS["iris"].example_instance()]}
    with (
        ServerProcess.start(tmp_path / "serve.log", env) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        before = client.post("/v1/models/iris:predict", json=body)
        assert before.status_code == 200
        assert before.headers.get("connection") != "close"

        drain_file.touch()
        time.sleep(0.5)  # the middleware looks at the file at most every 0.2 s
        for path in ("/v1/models/iris:predict", "/readyz", "/v1/models/nope:predict"):
            answer = client.post(path, json=body) if "predict" in path else client.get(path)
            assert answer.headers["connection"] == "close", (path, answer.headers)
        # Still serving: draining only moves clients, it refuses nothing.
        assert client.post("/v1/models/iris:predict", json=body).status_code == 200
