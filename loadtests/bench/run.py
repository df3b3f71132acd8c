"""`make bench`: tabserve and its peers, one run, same machine, same model file, taking turns.

    python -m loadtests.bench.run                       # the full run (~13 minutes)
    python -m loadtests.bench.run --repeats 1 --seconds-1 5 --seconds-32 5 --peers tabserve
    python -m loadtests.bench.run --quick                # every step, short: a smoke test

Each repeat starts every server in turn (A B C A B C ...), loads it at 32 users then 1 user
with the same locust scenario (loadtests/bench/locustfile.py), and stops it. In the last repeat
each server also gets the lone-request and open-loop runs (loadtests/bench/openloop.py): one
closed-loop user when fresh and right after the 32 users, then constant arrival rates and a
search for the highest rate with p99 <= 50 ms. Writes reports/bench-<timestamp>/: report.md,
bench.png, openloop.png, results.json, locust CSVs and server logs.
Not part of `make test`: it needs ~20 minutes of a quiet machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import bentoml
import grpc
import httpx
import numpy as np
import tritonclient.http as triton_http

# tritonclient's generated stubs, as the soak uses: the same `inference` messages as tabserve's.
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtests.bench.inprocess import BATCH_ROWS, ceilings
from loadtests.bench.measure import RunningServer, cpu_seconds, load, serve
from loadtests.bench.openloop import OpenLoopResult, one_user, open_loop, search_highest_rate
from loadtests.bench.peers import PROJECT, all_peers
from loadtests.bench.report import markdown, plot, plot_open_loop
from loadtests.grpc_requests import infer_request
from loadtests.payloads import complete_rows, instances, oip_inputs, v1_body
from tabserve.training import XGBOOST_MODEL_FILE

USER_COUNTS = (32, 1)
# Sequential large requests timed against our server (the batch targets): 1000 rows over V1 and
# gRPC, 10,000 rows over OIP REST binary tensors.
BATCH_REQUESTS = 10
BIG_BATCH_ROWS = 10_000
BIG_BATCH_REQUESTS = 5
JSON = {"Content-Type": "application/json"}
NUMPY_TYPES = {"INT64": np.int64, "FP64": np.float64, "BOOL": np.bool_, "FP32": np.float32}
# --quick: every step of the bench, short, for a smoke test of the whole pipeline.
QUICK = {
    "repeats": 1,
    "seconds_1": 5,
    "seconds_32": 5,
    "open_seconds": 2.0,
    "search_steps": 1,
    "lone_seconds": 2.0,
}


def _rows_per_s(send: Callable[[], object], rows: int, requests: int) -> float:
    """Rows per second of `requests` requests of `rows` rows sent in turn, after one for
    warm-up."""
    send()
    started = time.perf_counter()
    for _ in range(requests):
        send()
    return requests * rows / (time.perf_counter() - started)


def _churn_rows(count: int) -> list[dict[str, Any]]:
    return list(itertools.islice(itertools.cycle(complete_rows("churn")), count))


def _binary_tensors_body(rows: list[dict[str, Any]]) -> tuple[bytes, int]:
    """An OIP REST body with every input as a binary tensor (the binary data extension, as
    tritonclient sends it): (body, length of its JSON header)."""
    inputs = []
    for name, datatype, values in oip_inputs("churn", rows):
        tensor = triton_http.InferInput(name, [len(values)], datatype)
        tensor.set_data_from_numpy(np.array(values, dtype=NUMPY_TYPES[datatype]), binary_data=True)
        inputs.append(tensor)
    body, json_size = triton_http.InferenceServerClient.generate_request_body(inputs)
    return body, json_size


def batch_rows_per_s(server: RunningServer) -> dict[str, float]:
    """Sequential large churn requests to our server: 1000 rows over V1 JSON and over OIP gRPC,
    10,000 rows over OIP REST with binary tensors."""
    v1 = v1_body(instances("churn", BATCH_ROWS))
    message = infer_request(pb, "churn", oip_inputs("churn", _churn_rows(BATCH_ROWS)))
    binary, json_size = _binary_tensors_body(_churn_rows(BIG_BATCH_ROWS))
    # No Content-Type, as tritonclient sends it (tabserve answers 415 to application/octet-stream).
    binary_headers = {"Inference-Header-Content-Length": str(json_size)}
    grpc_target = f"127.0.0.1:{server.ports.extra[0]}"  # TABSERVE_GRPC_PORT, see measure.serve
    with httpx.Client(timeout=60) as client, grpc.insecure_channel(grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def post(path: str, body: bytes, headers: dict[str, str]) -> None:
            response = client.post(server.url + path, content=body, headers=headers)
            if response.is_error:  # say why: a bench that stops must name the refusal
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")

        return {
            "batch_rows_per_s": _rows_per_s(
                lambda: post(server.peer.predict_path, v1, JSON), BATCH_ROWS, BATCH_REQUESTS
            ),
            "batch_rows_per_s_grpc": _rows_per_s(
                lambda: stub.ModelInfer(message, timeout=60), BATCH_ROWS, BATCH_REQUESTS
            ),
            "big_batch_rows_per_s_oip": _rows_per_s(
                lambda: post("/v2/models/churn/infer", binary, binary_headers),
                BIG_BATCH_ROWS,
                BIG_BATCH_REQUESTS,
            ),
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds-1", type=int, default=10, help="load time at 1 user")
    parser.add_argument("--seconds-32", type=int, default=15, help="load time at 32 users")
    parser.add_argument("--peers", nargs="*", help="only these servers (default: all)")
    parser.add_argument("--reports", type=Path, default=PROJECT / "reports")
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[10, 50, 100, 500, 1000],
        help="open-loop rates, requests/s (10 and 50 decide the lone-request CPU target)",
    )  # fmt: skip
    parser.add_argument("--open-seconds", type=float, default=8, help="time at each rate")
    parser.add_argument(
        "--search-steps", type=int, default=4,
        help="runs, after the rates, searching for the highest rate with p99 <= 50 ms",
    )  # fmt: skip
    parser.add_argument(
        "--lone-seconds", type=float, default=5,
        help="time of one closed-loop user, fresh and right after the 32 users",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"a smoke test, overriding {QUICK}")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


def lone(server: RunningServer, bodies: list[bytes], when: str, seconds: float) -> dict[str, Any]:
    result = one_user(server.url, server.peer.predict_path, bodies, seconds)
    record = {"peer": server.peer.name, "when": when, **asdict(result)}
    print(json.dumps(record), flush=True)
    return record


def open_loop_runs(
    server: RunningServer, bodies: list[bytes], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The open-loop sweep over `args.rates`, then the search: (every run, the search's result)."""
    records = []

    def measure(rate: float, phase: str = "search") -> OpenLoopResult:
        result = open_loop(
            server.url, server.peer.predict_path, bodies, rate, args.open_seconds,
            lambda: cpu_seconds(server.root),
        )  # fmt: skip
        record = {"peer": server.peer.name, "phase": phase, **asdict(result)}
        record |= {"holds": result.holds, "client_limited": result.client_limited}
        record |= {"undecided": result.undecided}
        print(json.dumps(record), flush=True)
        records.append(record)
        return result

    sweep = [measure(rate, "sweep") for rate in sorted(args.rates)]
    search = search_highest_rate(measure, sweep, args.search_steps)
    return records, {"peer": server.peer.name, **asdict(search) | {"runs": len(search.runs)}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.reports / time.strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    model = bentoml.models.get("churn:latest")
    model_file = Path(model.path_of(XGBOOST_MODEL_FILE))
    peers = [p for p in all_peers(model_file) if not args.peers or p.name in args.peers]
    seconds = {1: args.seconds_1, 32: args.seconds_32}
    context: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_before": os.getloadavg(),
        "cores": os.cpu_count(),
        "seconds": seconds,
        "repeats": args.repeats,
        "open_seconds": args.open_seconds,
        "lone_seconds": args.lone_seconds,
        "model": str(model.tag),
        "peers": {peer.name: peer.description for peer in peers},
    }
    print(f"bench of {', '.join(p.name for p in peers)} on {model.tag} -> {out}", flush=True)
    extras: dict[str, Any] = {
        "ceilings": [asdict(c) for c in ceilings(model)],
        "lone": [],  # one closed-loop user: fresh, and right after the 32 users
        "open_loop": [],  # every open-loop run, sweep and search
        "searches": [],  # the highest rate with p99 <= 50 ms, per server
        "batches": {},  # each of our variants: rows/s of large requests (batch_rows_per_s)
    }
    runs: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):
        last = repeat == args.repeats
        for peer in peers:
            texts = peer.bodies()
            bodies = out / f"{peer.name}-bodies.json"
            bodies.write_text(json.dumps(texts))
            raw_bodies = [body.encode() for body in texts]
            with serve(peer, out / f"{peer.name}-{repeat}") as server:
                if last:
                    extras["lone"].append(lone(server, raw_bodies, "fresh", args.lone_seconds))
                for users in USER_COUNTS:
                    result = load(server, users, seconds[users], bodies, out)
                    run = {"repeat": repeat, "peer": peer.name, "users": users, **asdict(result)}
                    run |= {
                        "ready_s": server.ready_s,
                        "peak_rss_mb": server.memory.rss / 2**20,
                        "peak_pss_mb": server.memory.pss / 2**20,
                    }
                    runs.append(run)
                    print(json.dumps(run), flush=True)
                    if last and users == max(USER_COUNTS):
                        after = lone(server, raw_bodies, "after 32 users", args.lone_seconds)
                        extras["lone"].append(after)
                if last:
                    records, search = open_loop_runs(server, raw_bodies, args)
                    extras["open_loop"] += records
                    extras["searches"].append(search)
                if peer.ours and last:
                    extras["batches"][peer.name] = batch_rows_per_s(server)
                server.memory.stop()
    context["load_after"] = os.getloadavg()
    ours = [peer.name for peer in peers if peer.ours]
    (out / "results.json").write_text(
        json.dumps({"context": context, "extras": extras, "runs": runs}, indent=2)
    )
    plot(runs, out / "bench.png")
    plot_open_loop(extras["open_loop"], out / "openloop.png")
    report = markdown(runs, ours, extras, context)
    (out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
