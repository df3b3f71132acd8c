"""`make bench`'s open-loop generator and 1-user closed loop against the session's real server,
at low rates (the numbers must be sane, not fast), and the highest-rate search's bisection on
made-up results."""

from __future__ import annotations

import os
import subprocess

import psutil
import pytest

from loadtests.bench.measure import cpu_seconds
from loadtests.bench.openloop import (
    NOT_SENT,
    OpenLoopResult,
    one_user,
    open_loop,
    search_highest_rate,
)
from loadtests.payloads import single_row_bodies

PATH = "/v1/models/churn:predict"
BODIES = single_row_bodies("churn")


def _server_cpu(server) -> float:
    return cpu_seconds(psutil.Process(server.process.pid))


@pytest.mark.slow
def test_open_loop_at_a_low_rate_answers_every_request_on_schedule(server) -> None:
    result = open_loop(server.url, PATH, BODIES, 20, 3, lambda: _server_cpu(server))
    assert result.requests == 60
    assert (result.ok, result.errors) == (60, {})
    # 60 answers spread over the 3 s schedule (+ the last answer's latency).
    assert 12 <= result.achieved_rps <= 21
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms < 5000
    assert result.server_cpu_ms_per_request > 0.05  # the whole tree worked for every request
    assert result.client_cpu_ms_per_request > 0


@pytest.mark.slow
def test_open_loop_latency_counts_from_the_due_time_when_the_client_stalls(server) -> None:
    """No coordinated omission: the whole client process is stopped for a second (SIGSTOP, as
    a paused VM or a long garbage collection would), the requests due meanwhile go out late,
    and their latency includes the wait."""
    stall = f"sleep 1; kill -STOP {os.getpid()}; sleep 1; kill -CONT {os.getpid()}"
    stopper = subprocess.Popen(["sh", "-c", stall])
    try:
        result = open_loop(server.url, PATH, BODIES, 20, 4, lambda: _server_cpu(server))
    finally:
        stopper.wait(timeout=10)
    assert (result.ok, result.errors) == (80, {})
    assert result.lag_p99_ms >= 800  # ~20 requests were due while the client was stopped
    assert result.p99_ms >= result.lag_p99_ms  # each one's latency includes its lag
    assert result.client_limited


@pytest.mark.slow
def test_open_loop_requests_over_the_in_flight_bound_are_not_sent_and_fail_the_rate(
    server,
) -> None:
    result = open_loop(server.url, PATH, BODIES, 2000, 0.5, lambda: 0.0, max_in_flight=1)
    assert result.requests == 1000
    assert result.errors.get(NOT_SENT, 0) > 0
    assert result.ok + result.error_count == result.requests
    assert not result.holds


@pytest.mark.slow
def test_one_user_closed_loop(server) -> None:
    result = one_user(server.url, PATH, BODIES, 2)
    assert result.requests > 10 and result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
    assert result.rps == pytest.approx(result.requests / 2, rel=0.5)


def _made_up(
    rate: float, p99_ms: float, client_cpu_share: float = 0.1, p99_from_send_ms: float = 0
) -> OpenLoopResult:
    return OpenLoopResult(
        offered_rps=rate, requests=100, ok=100, errors={}, achieved_rps=rate, p50_ms=1.0,
        p99_ms=p99_ms, max_ms=p99_ms, p99_from_send_ms=p99_from_send_ms or p99_ms, lag_p99_ms=0.5,
        client_cpu_share=client_cpu_share, client_cpu_ms_per_request=0.1,
        server_cpu_ms_per_request=1.0,
    )  # fmt: skip


def _server_with_knee(knee: float, client_limit: float = float("inf")):
    """A made-up server whose p99 jumps past 50 ms above `knee` req/s, measured by a client
    that is busy above `client_limit` req/s (and so sends late: 200 ms p99 from the due times,
    10 ms from the actual sends)."""

    def measure(rate: float) -> OpenLoopResult:
        if rate > client_limit:
            return _made_up(rate, 200, client_cpu_share=0.9, p99_from_send_ms=10)
        return _made_up(rate, 10 if rate <= knee else 200)

    return measure


def test_search_bisects_between_the_highest_rate_that_held_and_the_lowest_that_failed() -> None:
    measure = _server_with_knee(730)
    sweep = [measure(rate) for rate in (10, 100, 500, 1000)]
    search = search_highest_rate(measure, sweep, steps=5)
    # 1000 failed, 500 held: 750 fails, 625 and 687.5 and 718.8 hold; 718.8 is within 5% of 750.
    assert [r.offered_rps for r in search.runs] == [750, 625, 687.5, 718.8]
    assert (search.highest_holding, search.lowest_failing) == (718.8, 750)
    assert search.undecided_at is None


def test_a_busy_client_decides_nothing_only_when_the_server_alone_did_not_fail() -> None:
    assert _made_up(100, 10, client_cpu_share=0.9).holds  # late, and still in time
    failed_by_the_client = _made_up(100, 200, client_cpu_share=0.9, p99_from_send_ms=10)
    assert failed_by_the_client.undecided and not failed_by_the_client.holds
    assert not _made_up(100, 200, client_cpu_share=0.9, p99_from_send_ms=120).undecided
    assert not _made_up(100, 200).undecided  # the client was on time: the server failed


def test_search_doubles_while_every_rate_holds_and_stops_where_the_client_is_busy() -> None:
    measure = _server_with_knee(10_000, client_limit=3000)
    sweep = [measure(rate) for rate in (10, 100, 500, 1000)]
    search = search_highest_rate(measure, sweep, steps=5)
    assert [r.offered_rps for r in search.runs] == [2000, 4000]
    assert (search.highest_holding, search.lowest_failing) == (2000, None)
    assert search.undecided_at == 4000
