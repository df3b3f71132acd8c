"""MergedCalls: concurrent predictions for one model share runner calls, each caller gets its
own rows' answer, and a failure reaches exactly the callers of the failed call.

The runner here is an async function standing in for BentoML's client, so the merging can be
watched call by call; tests/test_batching.py checks the same path against a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
import pytest

from tabserve.runner_calls import CONNECTION_RETRIES, CallerHungUp, MergedCalls, caller_hung_up


class RecordingRunner:
    """Answers each row [x] with [[x, -x]] after a short delay, and records every call."""

    def __init__(self, delay_s: float = 0.01, failures: list[BaseException] | None = None) -> None:
        self.calls: list[list[Any]] = []
        self.delay_s = delay_s
        self.failures = list(failures or [])

    async def __call__(self, rows: list[Any]) -> list[list[float]]:
        self.calls.append(rows)
        await asyncio.sleep(self.delay_s)
        if self.failures:
            raise self.failures.pop(0)
        return [[row[0], -row[0]] for row in rows]


def _requests(count: int, rows_each: int = 1) -> list[list[list[float]]]:
    return [[[float(i * 100 + j)] for j in range(rows_each)] for i in range(count)]


async def _predict_all(calls: MergedCalls, requests: list[list[list[float]]]) -> list[Any]:
    return await asyncio.gather(*(calls.predict(r) for r in requests), return_exceptions=True)


async def _first_then_the_rest(calls: MergedCalls, requests: list[list[list[float]]]) -> list[Any]:
    """The first request, given time to be sent, then the rest while it is in flight."""
    first = asyncio.ensure_future(calls.predict(requests[0]))
    await asyncio.sleep(0.001)
    rest = await _predict_all(calls, requests[1:])
    return [*(await asyncio.gather(first, return_exceptions=True)), *rest]


def _expected(rows: list[list[float]]) -> np.ndarray:
    return np.array([[row[0], -row[0]] for row in rows])


def test_a_lone_request_is_sent_at_once_and_alone() -> None:
    runner = RecordingRunner()
    calls = MergedCalls(runner, max_rows=1000, max_in_flight=1, timeout_s=5)

    answer = asyncio.run(calls.predict([[3.0], [4.0]]))

    assert runner.calls == [[[3.0], [4.0]]]
    np.testing.assert_array_equal(answer, [[3.0, -3.0], [4.0, -4.0]])


def test_requests_waiting_behind_a_call_share_the_next_one() -> None:
    runner = RecordingRunner()
    calls = MergedCalls(runner, max_rows=1000, max_in_flight=1, timeout_s=5)
    requests = _requests(20, rows_each=2)

    answers = asyncio.run(_first_then_the_rest(calls, requests))

    # The first request finds the runner idle and goes alone; the other 19 queue behind it.
    assert [len(call) for call in runner.calls] == [2, 38]
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, _expected(request))


def test_merged_calls_stay_within_max_rows() -> None:
    runner = RecordingRunner()
    calls = MergedCalls(runner, max_rows=10, max_in_flight=1, timeout_s=5)
    requests = _requests(12, rows_each=3)

    answers = asyncio.run(_first_then_the_rest(calls, requests))

    assert [len(call) for call in runner.calls] == [3, 9, 9, 9, 6]
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, _expected(request))


def test_max_in_flight_calls_run_side_by_side() -> None:
    runner = RecordingRunner(delay_s=0.05)
    calls = MergedCalls(runner, max_rows=1000, max_in_flight=3, timeout_s=5)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = []
        for request in _requests(3):
            waiting.append(asyncio.ensure_future(calls.predict(request)))
            await asyncio.sleep(0.001)  # each is sent before the next arrives
        await asyncio.gather(*waiting)
        return loop.time() - started

    elapsed = asyncio.run(scenario())

    assert [len(call) for call in runner.calls] == [1, 1, 1]
    assert elapsed < 0.1  # three 50 ms calls at once, not one after the other


def test_a_runner_error_fails_the_callers_of_that_call_only() -> None:
    runner = RecordingRunner(failures=[RuntimeError("runner overloaded")])
    calls = MergedCalls(runner, max_rows=1000, max_in_flight=1, timeout_s=5)
    requests = _requests(5)

    answers = asyncio.run(_first_then_the_rest(calls, requests))

    # The first call (request 0 alone) failed; requests 1-4 went in the next call and succeeded.
    assert isinstance(answers[0], RuntimeError)
    for request, answer in zip(requests[1:], answers[1:], strict=True):
        np.testing.assert_array_equal(answer, _expected(request))


def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    runner = RecordingRunner()
    calls = MergedCalls(runner, max_rows=1000, max_in_flight=1, timeout_s=5)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(calls.predict([[1.0]]))
        await asyncio.sleep(0.001)
        quitter = asyncio.ensure_future(calls.predict([[2.0]]))
        stayer = asyncio.ensure_future(calls.predict([[3.0]]))
        await asyncio.sleep(0)
        quitter.cancel()  # e.g. its client hung up while waiting
        return await asyncio.gather(first, quitter, stayer, return_exceptions=True)

    first, quitter, stayer = asyncio.run(scenario())

    assert isinstance(quitter, asyncio.CancelledError)
    np.testing.assert_array_equal(first, [[1.0, -1.0]])
    np.testing.assert_array_equal(stayer, [[3.0, -3.0]])


def test_a_broken_pooled_connection_is_retried() -> None:
    broken = [aiohttp.ServerDisconnectedError()] * CONNECTION_RETRIES
    runner = RecordingRunner(failures=broken)
    calls = MergedCalls(runner, max_rows=1000, max_in_flight=1, timeout_s=5)

    answer = asyncio.run(calls.predict([[5.0]]))

    assert len(runner.calls) == CONNECTION_RETRIES + 1
    np.testing.assert_array_equal(answer, [[5.0, -5.0]])


def test_connection_errors_beyond_the_retries_reach_the_caller() -> None:
    broken = [aiohttp.ServerDisconnectedError()] * (CONNECTION_RETRIES + 1)
    calls = MergedCalls(
        RecordingRunner(failures=broken), max_rows=1000, max_in_flight=1, timeout_s=5
    )

    with pytest.raises(aiohttp.ServerDisconnectedError):
        asyncio.run(calls.predict([[5.0]]))


def test_a_runner_that_does_not_answer_in_time_fails_the_call_with_timeout() -> None:
    calls = MergedCalls(RecordingRunner(delay_s=5), max_rows=1000, max_in_flight=1, timeout_s=0.05)

    with pytest.raises(TimeoutError):
        asyncio.run(calls.predict([[1.0]]))


def test_a_call_that_swallows_its_cancellation_still_times_out_and_frees_the_model() -> None:
    """A wedged client that ignores cancellation must not hold the model's sender: with
    `asyncio.timeout` around the call, these callers waited as long as the call (here 2 s; in
    the soak test, for good) instead of timeout_s."""

    async def wedged(rows: list[list[float]]) -> Any:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + 2
        while loop.time() < give_up_at:
            try:
                await asyncio.sleep(give_up_at - loop.time())
            except asyncio.CancelledError:
                continue  # swallowed
        return _expected(rows)

    calls = MergedCalls(wedged, max_rows=1000, max_in_flight=1, timeout_s=0.05)

    async def scenario() -> tuple[list[Any], list[Any], float]:
        started = asyncio.get_running_loop().time()
        first = await _predict_all(calls, _requests(3))
        second = await _predict_all(calls, _requests(2))  # a new sender: the model is free
        return first, second, asyncio.get_running_loop().time() - started

    first, second, took_s = asyncio.run(scenario())
    assert all(isinstance(answer, TimeoutError) for answer in [*first, *second])
    assert took_s < 1.0, f"the callers waited {took_s:.2f} s"


def test_rows_of_callers_that_hung_up_are_never_sent() -> None:
    runner = RecordingRunner(delay_s=0.05)
    calls = MergedCalls(runner, max_rows=1000, max_in_flight=1, timeout_s=5)

    async def caller(rows: list[list[float]], hung_up: bool) -> Any:
        caller_hung_up.set(lambda: hung_up)  # as the admission middleware does per request
        return await calls.predict(rows)

    async def scenario() -> list[Any]:
        first = asyncio.create_task(caller([[1.0]], hung_up=False))
        await asyncio.sleep(0)  # in flight; the next three wait for it
        rest = [caller([[2.0]], hung_up=True), caller([[3.0]], False), caller([[4.0]], True)]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    answers = asyncio.run(scenario())

    assert runner.calls == [[[1.0]], [[3.0]]]
    assert [type(answer) for answer in answers[1::2]] == [CallerHungUp] * 2
