"""What the soak sends, and the open-loop sender that sends it.

Each request kind has a group (valid, invalid, malformed, oversized, unknown path), a weight in
the mix and the answers it may get (HTTP statuses, gRPC status codes); any other answer, a
transport error or a timeout is an error. Bodies are real rows of payloads.json, built once
before the run, so the client's CPU goes to sending, not to building.

Open loop: request i is due at i / rate seconds, whether or not the earlier ones were answered,
as independent callers arrive. A slow server therefore meets more requests in flight, not fewer
(a closed loop would slow down with it and hide the stall). Both the count (rate x duration) and
the requests in flight are bounded; a request due while the bound is reached is not sent and
counts as an error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc

# tritonclient's generated stubs, not tabserve's: the same `inference` package, and the test
# suite (which runs the soak in-process) imports tritonclient's; one process cannot hold both.
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtests.grpc_requests import infer_request
from loadtests.payloads import (
    MODEL_NAMES,
    PAYLOADS,
    complete_rows,
    invalid_requests,
    oip_inputs,
    oip_json_body,
    single_row_bodies,
)

GROUPS = ("valid", "invalid", "malformed", "oversized", "unknown_path")
# A healthy answer takes milliseconds; the server's own worst case is twice the runner deadline
# (2 x 3 s). Past this the request is a timeout, an error.
REQUEST_TIMEOUT_S = 10.0
NOT_SENT = "not sent: too many in flight"
# A request the client could not send within this long after its time is not sent: the client
# (or the whole machine: a VM paused for minutes was seen) stalled, and the backlog sent at once
# would be a burst no set of callers sends. Under heavy contention from other work the client
# ran up to ~0.3 s late; these requests fail the run as the client's, not the server's.
MAX_LAG_S = 2.0
LATE = "not sent: the client was late"
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class HttpCall:
    method: str
    path: str
    body: bytes | None = None


Call = HttpCall | pb.ModelInferRequest


@dataclass(frozen=True)
class Kind:
    name: str
    group: str
    weight: float
    expected: frozenset[str]  # "200", "404" ... for HTTP; "OK", "INVALID_ARGUMENT" ... for gRPC
    make: Callable[[random.Random], Call]


def _one_of(calls: list[Call]) -> Callable[[random.Random], Call]:
    return lambda rng: rng.choice(calls)


def _unknown_path(method: str) -> Callable[[random.Random], Call]:
    """A new path each time, 1-4 random segments, as a scanner sends them: every one is a 404
    and none may add a metric series (they are all counted as `<unmatched>`)."""

    def make(rng: random.Random) -> Call:
        segments = (f"{rng.getrandbits(64):016x}" for _ in range(rng.randint(1, 4)))
        return HttpCall(method, "/" + "/".join(segments), b"{}" if method == "POST" else None)

    return make


def _tabpy_body(model: str, rows: list[dict[str, Any]]) -> bytes:
    """What Tableau posts to /evaluate: the one accepted script form, a column per argument."""
    features = PAYLOADS[model]["features"]
    arguments = ", ".join(f"_arg{i}" for i in range(1, len(features) + 1))
    script = f"return tabpy.query('{model}', {arguments})['response']"
    data = {f"_arg{i}": [row[name] for row in rows] for i, name in enumerate(features, 1)}
    return json.dumps({"script": script, "data": data}).encode()


def _valid_kinds() -> list[Kind]:
    rows = {model: complete_rows(model) for model in MODEL_NAMES}
    v1 = [
        HttpCall("POST", f"/v1/models/{model}:predict", body)
        for model in MODEL_NAMES
        for body in single_row_bodies(model)
    ]
    v2 = [
        HttpCall("POST", f"/v2/models/{model}/infer", oip_json_body(model, row))
        for model in MODEL_NAMES
        for row in rows[model]
    ]
    grpc_calls: list[Call] = [
        infer_request(pb, model, oip_inputs(model, [row]))
        for model in MODEL_NAMES
        for row in rows[model]
    ]
    tabpy = [
        HttpCall("POST", "/evaluate", _tabpy_body(model, rows[model][start : start + 3]))
        for model in MODEL_NAMES
        for start in range(0, 30, 3)
    ]
    ok, grpc_ok = frozenset({"200"}), frozenset({"OK"})
    return [
        Kind("v1 predict", "valid", 40, ok, _one_of(v1)),
        Kind("v2 infer", "valid", 15, ok, _one_of(v2)),
        Kind("grpc ModelInfer", "valid", 15, grpc_ok, _one_of(grpc_calls)),
        Kind("tabpy evaluate", "valid", 5, ok, _one_of(tabpy)),
    ]


def _refused_kinds(max_body_bytes: int) -> list[Kind]:
    """Requests the server must refuse, each with its 4xx (or gRPC code), never a 5xx."""
    row = complete_rows("churn")[0]
    bad_row = {**row, "age": -5}  # out of range: a 422 naming the field
    kinds = [
        Kind(
            f"v1 {bad.name}",
            "malformed" if bad.name == "malformed JSON" else "invalid",
            1.2,
            frozenset({str(bad.expected_status)}),
            _one_of([HttpCall("POST", bad.path, bad.body)]),
        )
        for bad in invalid_requests()
    ]
    v2_path = "/v2/models/churn/infer"
    over = max_body_bytes + 1
    # Over the limit by one byte: the HTTP body is read (and dropped) before the 413, the gRPC
    # message is refused by grpc-core against max_receive_message_length.
    huge = pb.ModelInferRequest(model_name="churn")
    huge.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"x" * over
    )
    return [
        *kinds,
        Kind(
            "v2 value out of range",
            "invalid",
            2,
            frozenset({"422"}),
            _one_of([HttpCall("POST", v2_path, oip_json_body("churn", bad_row))]),
        ),
        Kind(
            "grpc value out of range",
            "invalid",
            2,
            frozenset({"INVALID_ARGUMENT"}),
            _one_of([infer_request(pb, "churn", oip_inputs("churn", [bad_row]))]),
        ),
        Kind(
            "tabpy script rejected",
            "invalid",
            1,
            frozenset({"400"}),
            _one_of([HttpCall("POST", "/evaluate", b'{"script": "import os", "data": {}}')]),
        ),
        Kind(
            "v2 malformed JSON",
            "malformed",
            1.5,
            frozenset({"400"}),
            _one_of([HttpCall("POST", v2_path, b'{"inputs": [{"name": ')]),
        ),
        Kind(
            "tabpy malformed JSON",
            "malformed",
            1,
            frozenset({"400"}),
            _one_of([HttpCall("POST", "/evaluate", b'{"script": ')]),
        ),
        Kind("GET unknown path", "unknown_path", 5, frozenset({"404"}), _unknown_path("GET")),
        Kind("POST unknown path", "unknown_path", 2, frozenset({"404"}), _unknown_path("POST")),
        Kind(
            "v1 body over the limit",
            "oversized",
            0.5,
            frozenset({"413"}),
            _one_of([HttpCall("POST", "/v1/models/churn:predict", b" " * over)]),
        ),
        Kind(
            "grpc message over the limit",
            "oversized",
            0.5,
            frozenset({"RESOURCE_EXHAUSTED"}),
            _one_of([huge]),
        ),
    ]


def request_kinds(max_body_bytes: int) -> list[Kind]:
    """The mix: ~77% valid (every model, V1, V2 REST, gRPC, TabPy), the rest refused."""
    return [*_valid_kinds(), *_refused_kinds(max_body_bytes)]


@dataclass(frozen=True)
class Outcome:
    kind: str
    group: str
    due_s: float  # when it was due, from the start of the traffic
    lag_s: float  # how much later the client sent it (its own delay, not the server's)
    latency_s: float
    answer: str
    ok: bool

    @property
    def sent(self) -> bool:
        return self.answer not in (NOT_SENT, LATE)

    @property
    def server_error(self) -> bool:
        """Not the expected answer, and not because the client fell behind."""
        return not self.ok and self.answer != LATE


class Client:
    """An HTTP connection pool and a gRPC channel (one HTTP/2 connection), both to 127.0.0.1."""

    def __init__(self, url: str, grpc_target: str, max_connections: int) -> None:
        self.url = url
        self.grpc_target = grpc_target
        self.max_connections = max_connections

    async def __aenter__(self) -> Client:
        self.session = aiohttp.ClientSession(
            self.url,
            connector=aiohttp.TCPConnector(limit=self.max_connections),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )
        self.channel = grpc.aio.insecure_channel(self.grpc_target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.session.close()
        await self.channel.close()

    async def answer(self, call: Call) -> str:
        """The HTTP status or gRPC code, or what went wrong on the way."""
        try:
            if isinstance(call, HttpCall):
                return await self._http(call)
            await self.stub.ModelInfer(call, timeout=REQUEST_TIMEOUT_S)
            return "OK"
        except grpc.aio.AioRpcError as error:
            return error.code().name
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as error:
            return f"transport: {type(error).__name__}"
        except Exception as error:  # anything else fails the soak too, named, not a crash
            return f"client: {type(error).__name__}"

    async def _http(self, call: HttpCall) -> str:
        headers = JSON if call.body is not None else None
        async with self.session.request(
            call.method, call.path, data=call.body, headers=headers
        ) as response:
            body = await response.read()
        if response.status == 200 and b'"error"' in body:
            return "200 with an error body"
        return str(response.status)


async def _timed(client: Client, kind: Kind, call: Call, due_s: float, lag_s: float) -> Outcome:
    started = time.perf_counter()
    answer = await client.answer(call)
    latency = time.perf_counter() - started
    return Outcome(kind.name, kind.group, due_s, lag_s, latency, answer, answer in kind.expected)


async def open_loop(
    client: Client,
    kinds: list[Kind],
    schedule: tuple[float, float, float],
    max_in_flight: int,
    rng: random.Random,
    outcomes: list[Outcome],
) -> None:
    """Send round(rate x duration) requests, request i due at start + i / rate (`schedule` is
    (start on time.monotonic(), rate, duration)); append each Outcome to `outcomes` as it comes.
    Returns when every request was answered or timed out."""
    start, rate, duration_s = schedule
    cum_weights = list(itertools.accumulate(kind.weight for kind in kinds))
    # Each task in flight with its Outcome as it would be if it never finished.
    in_flight: dict[asyncio.Task[Outcome], Outcome] = {}

    def done(task: asyncio.Task[Outcome]) -> None:
        unanswered = in_flight.pop(task)
        outcomes.append(unanswered if task.cancelled() else task.result())

    # The first requests are one of each kind, in random order: every route, status and
    # rejection reason has its metric series from the first seconds of the warm-up on, and no
    # kind is left out of a short run.
    first = rng.sample(kinds, len(kinds))
    for i in range(round(rate * duration_s)):
        due_s = i / rate
        await asyncio.sleep(max(0.0, start + due_s - time.monotonic()))
        kind = first[i] if i < len(first) else rng.choices(kinds, cum_weights=cum_weights)[0]
        call = kind.make(rng)
        lag_s = time.monotonic() - start - due_s
        unsent = LATE if lag_s > MAX_LAG_S else NOT_SENT if len(in_flight) >= max_in_flight else ""
        if unsent:
            outcomes.append(Outcome(kind.name, kind.group, due_s, lag_s, 0.0, unsent, False))
            continue
        task = asyncio.create_task(_timed(client, kind, call, due_s, lag_s))
        in_flight[task] = Outcome(kind.name, kind.group, due_s, lag_s, 0.0, "no answer", False)
        task.add_done_callback(done)
    if in_flight:
        # Every request has its own timeout; this only bounds the wait if one ignores it.
        _, late = await asyncio.wait(set(in_flight), timeout=REQUEST_TIMEOUT_S + 5)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
