"""The request-timeout middleware that replaces BentoML's (tabserve/bentoml_runtime.py): the
same 504 behaviour, and no timer left on the event loop once a request is answered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware as BentoTimeoutMiddleware

from tabserve.bentoml_runtime import _RequestDeadlineMiddleware

HTTP_SCOPE = {"type": "http", "method": "POST", "path": "/v1/models/churn:predict"}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _call(middleware: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware(dict(HTTP_SCOPE), _receive, send)
    return sent


def _app(pause_before_s: float = 0.0, pause_between_s: float = 0.0) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(pause_before_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(pause_between_s)
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _live_timers() -> int:
    loop = asyncio.get_running_loop()
    return sum(not timer.cancelled() for timer in loop._scheduled)  # type: ignore[attr-defined]


async def _timers_left_after(middleware_class: type, requests: int) -> int:
    middleware = middleware_class(_app(), timeout=60)
    for _ in range(requests):
        await _call(middleware)
    return _live_timers()


def test_no_timer_outlives_its_request() -> None:
    assert asyncio.run(_timers_left_after(_RequestDeadlineMiddleware, 500)) == 0


def test_bentoml_own_middleware_still_leaks_a_timer_per_request() -> None:
    """Why the replacement exists. If this fails, BentoML fixed it: drop the replacement."""
    assert asyncio.run(_timers_left_after(BentoTimeoutMiddleware, 500)) == 500


def test_a_request_that_does_not_start_answering_in_time_gets_504() -> None:
    sent = asyncio.run(_call(_RequestDeadlineMiddleware(_app(pause_before_s=5), timeout=0.05)))

    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.05 seconds" in sent[1]["body"]


def test_a_started_response_is_never_cut_by_the_deadline() -> None:
    app = _app(pause_before_s=0.01, pause_between_s=0.1)
    sent = asyncio.run(_call(_RequestDeadlineMiddleware(app, timeout=0.05)))

    assert [m.get("status") for m in sent] == [200, None]
    assert sent[1]["body"] == b"ok"


def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(_RequestDeadlineMiddleware(app, timeout=0.05)({"type": "lifespan"}, None, None))

    assert seen == ["lifespan"]


def test_a_timeout_of_the_app_itself_is_not_reported_as_the_deadline() -> None:
    """A TimeoutError raised by the app (e.g. a call with its own deadline) is its error, not
    this middleware's 504 "Not able to process the request in 60 seconds"."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        asyncio.run(_call(_RequestDeadlineMiddleware(app, timeout=60)))
