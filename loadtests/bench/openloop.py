"""Open-loop (constant arrival rate) load and the lone 1-user closed loop, for `make bench`.

Open loop: request i is due at start + i / rate (uniform arrivals: every server meets the same
schedule, so what differs between runs is the server, not the draw of a random generator), and
is sent then whether or not the earlier ones were answered. Its latency is counted from that due
time, not from when the client got round to sending it, so a server (or client) that falls
behind shows it in the percentiles instead of hiding it (no coordinated omission).

Bounded: round(rate x seconds) requests at most, each with a timeout, at most `max_in_flight` at
once (a request due while that many are in flight is not sent and counts as an error).

The client is one asyncio loop with a pool of keep-alive connections (http_client.py: prepared
requests, only the status read back), in the calling thread; its own
CPU (`time.thread_time()` of that thread) and how late it sent each request are measured. A run
where the client was busy most of the time or sent late is marked client-limited: its latencies
are then the client's as much as the server's. Counted from the due times, they can only make
the server look slower, so such a run that still holds, holds; one that fails only by its
latencies, and still holds them counted from the actual sends, is undecided, and the report
says so instead of blaming the server. Errors and requests refused for too many in flight are
the server's, however late the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from loadtests.bench.http_client import HttpError, Pool

REQUEST_TIMEOUT_S = 5.0
MAX_IN_FLIGHT = 256
MAX_REQUESTS = 100_000
WARM_UP_REQUESTS = 5  # sequential, before the clock starts: connection set-up is not measured
NOT_SENT = "not sent: too many in flight"
# The client could not keep the schedule: it used most of a core, or sent requests late.
CLIENT_BUSY_SHARE = 0.8
CLIENT_LAG_P99_MS = 5.0
# A rate "holds" when the server answered it all, at the rate offered, with this p99.
SLO_P99_MS = 50.0
MIN_ACHIEVED_SHARE = 0.95


def _percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q)) * 1000 if seconds else float("nan")


@dataclass(frozen=True)
class OpenLoopResult:
    offered_rps: float
    requests: int  # scheduled
    ok: int  # answered 200
    errors: dict[str, int]  # answer (status, "timeout", "transport: ...", NOT_SENT) -> count
    achieved_rps: float  # 200 answers / (last answer - start)
    p50_ms: float  # of the 200 answers, from their due time
    p99_ms: float
    max_ms: float
    p99_from_send_ms: float  # the same, from when the client actually sent them
    lag_p99_ms: float  # how late the client sent, p99
    client_cpu_share: float  # the client thread's CPU / wall time of the run
    client_cpu_ms_per_request: float
    server_cpu_ms_per_request: float  # over every process of the server's tree

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def client_limited(self) -> bool:
        """The client was busy most of the run or sent late (its own CPU, or the machine's other
        work): the latencies, counted from the due times, include its delay."""
        return self.client_cpu_share > CLIENT_BUSY_SHARE or self.lag_p99_ms > CLIENT_LAG_P99_MS

    @property
    def holds(self) -> bool:
        """Every request answered 200 at the offered rate with p99 <= SLO_P99_MS. Counted from
        the due times, a late client only makes it harder: a run that holds, holds."""
        return (
            self.error_count == 0
            and self.p99_ms <= SLO_P99_MS
            and self.achieved_rps >= MIN_ACHIEVED_SHARE * self.offered_rps
        )

    @property
    def undecided(self) -> bool:
        """Failed, but the client may be why: it was late or busy, and the server alone did
        not fail (no errors, none refused for too many in flight; p99 from the actual sends
        within the target)."""
        server_failed = self.error_count > 0 or self.p99_from_send_ms > SLO_P99_MS
        return not self.holds and self.client_limited and not server_failed


async def _post(pool: Pool, request: bytes) -> str:
    """The HTTP status, or what went wrong on the way."""
    try:
        return str(await pool.send(request))
    except TimeoutError:
        return "timeout"
    except (HttpError, OSError) as error:
        return f"transport: {type(error).__name__}"


@contextlib.asynccontextmanager
async def _requests(
    url: str, path: str, bodies: list[bytes]
) -> AsyncIterator[tuple[Pool, list[bytes]]]:
    """A connection pool to `url`, the requests of `bodies` (built once, before the clock
    starts), warmed up with a few of them sent in turn; the pool is closed after."""
    address = urlsplit(url)
    pool = Pool(address.hostname or "127.0.0.1", address.port or 80, REQUEST_TIMEOUT_S)
    requests = [pool.request(path, body) for body in bodies]
    try:
        for request in requests[:WARM_UP_REQUESTS]:
            await _post(pool, request)
        yield pool, requests
    finally:
        pool.close()


@dataclass
class _Answers:
    """What came back, as it comes: (due, sent, answered) times and the answer per request."""

    times: list[tuple[float, float, float]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    in_flight: int = 0


async def _timed(pool: Pool, request: bytes, due: float, out: _Answers) -> None:
    sent = time.perf_counter()
    out.in_flight += 1
    try:
        answer = await _post(pool, request)
    finally:
        out.in_flight -= 1
    out.times.append((due, sent, time.perf_counter()))
    out.answers.append(answer)


async def _open_loop(
    url: str, path: str, bodies: list[bytes], rate: float, count: int, max_in_flight: int
) -> tuple[_Answers, int, float, float, float]:
    """(answers, not sent, start, wall seconds, client CPU seconds) of one scheduled run."""
    out, not_sent, tasks = _Answers(), 0, []
    async with _requests(url, path, bodies) as (pool, requests):
        cpu_before = time.thread_time()
        start = time.perf_counter()
        for i in range(count):
            due = start + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            if out.in_flight >= max_in_flight:
                not_sent += 1
                continue
            request = requests[i % len(requests)]
            tasks.append(asyncio.create_task(_timed(pool, request, due, out)))
        await asyncio.gather(*tasks)  # each request has its own timeout
        wall = time.perf_counter() - start
        return out, not_sent, start, wall, time.thread_time() - cpu_before


def open_loop(
    url: str,
    path: str,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    server_cpu: Callable[[], float],
    max_in_flight: int = MAX_IN_FLIGHT,
) -> OpenLoopResult:
    """Offer `rate` requests/s of `bodies` (in turn) to url + path for `seconds`.
    `server_cpu()` is the server's CPU seconds so far, read before and after."""
    count = min(MAX_REQUESTS, max(1, round(rate * seconds)))
    cpu_before = server_cpu()
    out, not_sent, start, wall, client_cpu = asyncio.run(
        _open_loop(url, path, bodies, rate, count, max_in_flight)
    )
    server_cpu_s = server_cpu() - cpu_before
    ok = [t for t, answer in zip(out.times, out.answers, strict=True) if answer == "200"]
    latencies = [answered - due for due, _, answered in ok]
    from_send = [answered - sent for _, sent, answered in ok]
    lags = [sent - due for due, sent, _ in out.times]
    errors = Counter(answer for answer in out.answers if answer != "200")
    if not_sent:
        errors[NOT_SENT] = not_sent
    last_answer = max((answered for _, _, answered in ok), default=start)
    sent_count = count - not_sent
    return OpenLoopResult(
        offered_rps=rate,
        requests=count,
        ok=len(ok),
        errors=dict(errors),
        achieved_rps=len(ok) / (last_answer - start) if len(ok) > 1 else 0.0,
        p50_ms=_percentile_ms(latencies, 50),
        p99_ms=_percentile_ms(latencies, 99),
        max_ms=max(latencies, default=float("nan")) * 1000,
        p99_from_send_ms=_percentile_ms(from_send, 99),
        lag_p99_ms=_percentile_ms(lags, 99),
        client_cpu_share=client_cpu / wall,
        client_cpu_ms_per_request=client_cpu / sent_count * 1000 if sent_count else float("nan"),
        server_cpu_ms_per_request=server_cpu_s / sent_count * 1000 if sent_count else float("nan"),
    )


@dataclass(frozen=True)
class ClosedLoopResult:
    """One user sending the next request as soon as the last was answered."""

    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float


async def _closed_loop(
    url: str, path: str, bodies: list[bytes], seconds: float
) -> tuple[list[float], int, float]:
    latencies, errors = [], 0
    async with _requests(url, path, bodies) as (pool, requests):
        start = time.perf_counter()
        end = start + seconds
        while (sent := time.perf_counter()) < end and len(latencies) < MAX_REQUESTS:
            answer = await _post(pool, requests[len(latencies) % len(requests)])
            latencies.append(time.perf_counter() - sent)
            errors += answer != "200"
        return latencies, errors, time.perf_counter() - start


def one_user(url: str, path: str, bodies: list[bytes], seconds: float) -> ClosedLoopResult:
    """One closed-loop user for `seconds`, timed to the microsecond (locust rounds to whole
    milliseconds, too coarse for a 2 ms target)."""
    latencies, errors, wall = asyncio.run(_closed_loop(url, path, bodies, seconds))
    return ClosedLoopResult(
        requests=len(latencies),
        errors=errors,
        rps=len(latencies) / wall,
        p50_ms=_percentile_ms(latencies, 50),
        p99_ms=_percentile_ms(latencies, 99),
        max_ms=max(latencies, default=float("nan")) * 1000,
    )


@dataclass(frozen=True)
class RateSearch:
    """The highest offered rate seen to hold, and the lowest seen to fail (None: none failed
    within the steps). `undecided_at`: the search stopped at this rate, which failed with
    the client late or busy (undecided): the server's limit is at least `highest_holding`."""

    highest_holding: float
    lowest_failing: float | None
    undecided_at: float | None
    runs: list[OpenLoopResult]


def _bounds(runs: list[OpenLoopResult]) -> tuple[float, float | None, float | None]:
    """(highest rate that held below the lowest that failed, or 0; that lowest failing rate;
    the lowest undecided rate between them)."""
    high = min((r.offered_rps for r in runs if not r.holds and not r.undecided), default=None)
    below_high = [r for r in runs if high is None or r.offered_rps < high]
    low = max((r.offered_rps for r in below_high if r.holds), default=0.0)
    limited = [r.offered_rps for r in below_high if r.undecided and r.offered_rps > low]
    return low, high, min(limited, default=None)


def search_highest_rate(
    measure: Callable[[float], OpenLoopResult], sweep: list[OpenLoopResult], steps: int
) -> RateSearch:
    """From the sweep's results, at most `steps` more runs: doubling the rate while every rate
    holds, then bisecting between the highest that held and the lowest that failed, until they
    are within 5%. Stops at an undecided rate: the client cannot say more there."""
    runs = list(sweep)
    for _ in range(steps):
        low, high, limited = _bounds(runs)
        if limited is not None:
            break
        if high is None:
            rate = 2 * low if low else 10.0
        elif high - low <= 0.05 * high:
            break
        else:
            rate = (low + high) / 2
        runs.append(measure(round(rate, 1)))
    return RateSearch(*_bounds(runs), runs=runs[len(sweep) :])
