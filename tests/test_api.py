"""The V1 REST API of a real `bentoml serve` process: every route, answers equal the models'."""

from __future__ import annotations

import httpx


def test_livez_and_readyz(server) -> None:
    assert httpx.get(f"{server.url}/livez").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
