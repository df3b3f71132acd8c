"""`make bench`: tabserve and its peers, one run, same machine, same model file, taking turns.

    python -m loadtests.bench.run                       # the full run (~13 minutes)
    python -m loadtests.bench.run --repeats 1 --seconds-1 5 --seconds-32 5 --peers tabserve

Each repeat starts every server in turn (A B C A B C ...), loads it at 1 user then 32 users
with the same locust scenario (loadtests/bench/locustfile.py), and stops it. Writes
reports/bench-<timestamp>/: report.md, bench.png, results.json, locust CSVs and server logs.
Not part of `make test`: it needs ~13 minutes of a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import bentoml
import httpx

from loadtests.bench.inprocess import BATCH_ROWS, ceilings
from loadtests.bench.measure import RunningServer, load, serve
from loadtests.bench.peers import PROJECT, all_peers
from loadtests.bench.report import markdown, plot
from loadtests.payloads import instances, v1_body
from tabserve.training import XGBOOST_MODEL_FILE

USER_COUNTS = (32, 1)
# Sequential 1000-row requests timed against our server (the batch target).
BATCH_REQUESTS = 10


def batch_rows_per_s(server: RunningServer) -> float:
    body = v1_body(instances("churn", BATCH_ROWS))
    url = server.url + server.peer.predict_path
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=60) as client:
        client.post(url, content=body, headers=headers).raise_for_status()  # warm-up
        started = time.perf_counter()
        for _ in range(BATCH_REQUESTS):
            client.post(url, content=body, headers=headers).raise_for_status()
        return BATCH_REQUESTS * BATCH_ROWS / (time.perf_counter() - started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds-1", type=int, default=10, help="load time at 1 user")
    parser.add_argument("--seconds-32", type=int, default=15, help="load time at 32 users")
    parser.add_argument("--peers", nargs="*", help="only these servers (default: all)")
    parser.add_argument("--reports", type=Path, default=PROJECT / "reports")
    return parser.parse_args(argv)


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
        "model": str(model.tag),
        "peers": {peer.name: peer.description for peer in peers},
    }
    print(f"bench of {', '.join(p.name for p in peers)} on {model.tag} -> {out}", flush=True)
    extras: dict[str, Any] = {"ceilings": [asdict(c) for c in ceilings(model)]}
    runs: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):
        for peer in peers:
            bodies = out / f"{peer.name}-bodies.json"
            bodies.write_text(json.dumps(peer.bodies()))
            with serve(peer, out / f"{peer.name}-{repeat}") as server:
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
                if peer.ours and repeat == args.repeats:
                    extras["batch_rows_per_s"] = batch_rows_per_s(server)
                server.memory.stop()
    context["load_after"] = os.getloadavg()
    ours = next(peer.name for peer in peers if peer.ours) if any(p.ours for p in peers) else ""
    (out / "results.json").write_text(
        json.dumps({"context": context, "extras": extras, "runs": runs}, indent=2)
    )
    plot(runs, out / "bench.png")
    report = markdown(runs, ours, extras, context)
    (out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
