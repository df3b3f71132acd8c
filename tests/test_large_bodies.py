"""Large V1 requests are validated and answered in slices (tabserve/large_bodies.py): a single
row is validated and answered while 1000 rows are, and every large body gets exactly the rows,
or the refusal, that validating it whole gives."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.responses import Response

from tabserve.catalog import MODELS
from tabserve.dataplane import Predictions
from tabserve.errors import ServingError
from tabserve.instances import rows_from_body
from tabserve.large_bodies import rows_from_json
from tabserve.protocols import v1
from tabserve.settings import Settings
from tests.data import instances


def _body(payload: Any, **dumps: Any) -> bytes:
    return json.dumps(payload, **dumps).encode()


SETTINGS = Settings()
CHURN = instances("churn", SETTINGS.max_instances)
CHURN_ROW = _body({"instances": CHURN[:1]})


async def _validate(name: str, body: bytes, finished: list[str]) -> None:
    await rows_from_json("churn", body)
    finished.append(name)


def test_a_single_row_is_validated_while_a_large_body_is_being_validated() -> None:
    large, single = _body({"instances": CHURN}), CHURN_ROW
    assert len(large) > SETTINGS.large_body_bytes >= len(single)
    finished: list[str] = []
    turns_during_large = 0

    async def other_requests() -> None:  # stands for whatever else the event loop serves
        nonlocal turns_during_large
        while "large" not in finished:
            turns_during_large += 1
            await asyncio.sleep(0)

    async def main() -> None:
        # The large body starts first; validated whole, it would finish before anything else ran.
        await asyncio.gather(
            _validate("large", large, finished),
            _validate("single", single, finished),
            other_requests(),
        )

    asyncio.run(main())
    assert finished == ["single", "large"]
    slices = -(-SETTINGS.max_instances // SETTINGS.slice_rows)
    assert turns_during_large >= slices - 1


def test_large_bodies_are_validated_one_at_a_time_without_holding_the_loop() -> None:
    assert SETTINGS.large_bodies_at_once == 1
    first, second = _body({"instances": CHURN}), _body({"instances": CHURN[:300]})
    assert len(second) > SETTINGS.large_body_bytes
    finished: list[str] = []

    async def main() -> None:
        # Side by side, the second (fewer slices) would finish first; it waits its turn instead,
        # while a single row goes ahead of both.
        await asyncio.gather(
            _validate("first", first, finished),
            _validate("second", second, finished),
            _validate("single", CHURN_ROW, finished),
        )

    asyncio.run(main())
    assert finished == ["single", "first", "second"]


def _scores(rows: int) -> Predictions:
    probabilities = np.random.default_rng(rows).dirichlet([1, 1], size=rows)
    return Predictions(MODELS["churn"], "churn:test", probabilities, probabilities.argmax(axis=1))


def test_a_large_answer_is_built_while_a_single_row_is_answered() -> None:
    large, single = _scores(SETTINGS.max_instances), _scores(1)
    finished: list[str] = []

    async def answer(name: str, scores: Predictions) -> Response:
        response = await v1._answer(scores)
        finished.append(name)
        return response

    async def main() -> list[Response]:
        return await asyncio.gather(answer("large", large), answer("single", single))

    large_answer, _ = asyncio.run(main())
    assert finished == ["single", "large"]
    predictions = json.loads(large_answer.body)["predictions"]
    assert [p["label"] for p in predictions] == large.labels
    assert [list(p["probabilities"].values()) for p in predictions] == large.probabilities.tolist()


def _spam(text: str) -> dict[str, str]:
    return {"text": text}


def _with(rows: list[dict], index: int, **changes: Any) -> list[dict]:
    return [*rows[:index], {**rows[index], **changes}, *rows[index + 1 :]]


# Large bodies (each over large_body_bytes), valid and not; texts that put the byte search's
# cut `}, {` inside a string, escapes, nesting, whitespace, shapes that are not a V1 body.
TEXTS = ['a "quoted" }, {"text": "b', "}, {", '\\"}, {\\"', "]}", "back\\slash }, {", "ünï }  ,{"]
SPAM_ROWS = [
    _spam(f"{TEXTS[i % len(TEXTS)]} {i} " + "word " * 20) for i in range(SETTINGS.max_instances)
]
CASES = {
    "valid": ("churn", _body({"instances": CHURN})),
    "valid, indented": ("churn", _body({"instances": CHURN}, indent=2)),
    "valid, no spaces": ("churn", _body({"instances": CHURN}, separators=(",", ":"))),
    "valid, texts with cuts inside": ("spam", _body({"instances": SPAM_ROWS})),
    "valid, every model": ("admission", _body({"instances": instances("admission", 1000)})),
    "a bad value deep inside": ("churn", _body({"instances": _with(CHURN, 750, age=500)})),
    "a bad value in the last slice": ("churn", _body({"instances": _with(CHURN, 999, age="x")})),
    "an unknown key": ("churn", _body({"instances": _with(CHURN, 10, colour="red")})),
    "a nested value": ("churn", _body({"instances": _with(CHURN, 500, age={"a": [1]})})),
    "a nested text": ("spam", _body({"instances": _with(SPAM_ROWS, 5, text=["}, {"])})),
    "one too many": ("churn", _body({"instances": [*CHURN, CHURN[0]]})),
    "far too many": ("iris", _body({"instances": instances("iris", 1000) * 3})),
    "an extra top-level key": ("churn", _body({"instances": CHURN, "id": 1})),
    "instances twice": ("churn", _body({"instances": CHURN})[:-1] + b', "instances": []}'),
    "a list, not an object": ("churn", _body(CHURN)),
    "trailing bytes": ("churn", _body({"instances": CHURN}) + b" x"),
    "cut short": ("churn", _body({"instances": CHURN})[:-2]),
    "a form feed between instances": (
        "churn",
        _body({"instances": CHURN}).replace(b"}, {", b"},\f{"),
    ),
    "not UTF-8 in a text": ("spam", _body({"instances": SPAM_ROWS}).replace(b"\\u00fc", b"\xff")),
    "empty instances, padded": ("churn", b'{"instances": []}' + b" " * 70000),
    "empty objects": ("churn", b'{"instances": [' + b",".join([b"{}"] * 30000) + b"]}"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_large_body_gets_what_validating_it_whole_gives(case: str) -> None:
    model, body = CASES[case]
    assert len(body) > SETTINGS.large_body_bytes
    try:
        expected: Any = rows_from_body(model, body)
    except ServingError as error:
        expected = (type(error), error.status, error.to_response())
    try:
        got: Any = asyncio.run(rows_from_json(model, body))
    except ServingError as error:
        got = (type(error), error.status, error.to_response())
    assert got == expected
    if case.startswith("valid"):
        assert len(got) == len(json.loads(body)["instances"])


def test_large_bodies_over_http_are_answered_and_refused_as_small_ones(server) -> None:
    url = f"{server.url}/v1/models/churn:predict"
    answered = httpx.post(url, content=_body({"instances": CHURN}), timeout=30)
    assert answered.status_code == 200
    assert len(answered.json()["predictions"]) == len(CHURN)
    refused = httpx.post(url, content=_body({"instances": _with(CHURN, 750, age=500)}), timeout=30)
    assert refused.status_code == 422
    assert refused.json()["details"] == [
        {"field": "instances[750].age", "reason": "Input should be less than or equal to 120"}
    ]
