"""The CPU a served tabserve burns with no traffic at all, per process of its tree.

Starts `bentoml serve` with the benchmark's production settings (split, or inline with
`--inline`), waits until it is ready and settled, then reads each process's CPU time over a quiet
window and prints milliseconds of CPU per second of wall time.

    PYTHONPATH=$PWD .venv/bin/python -m loadtests.bench.idle_cpu [--inline] [--seconds S]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path

import psutil

from loadtests.bench.measure import process_tree, serve
from loadtests.bench.peers import all_peers

SETTLE_S = 5.0


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inline", action="store_true")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()
    peer = next(p for p in all_peers(Path("/dev/null")) if p.name == "tabserve")
    extra = dict(item.split("=", 1) for item in args.env)
    if args.inline:
        extra["TABSERVE_INLINE_MODELS"] = "true"
    peer = dataclasses.replace(peer, env={**peer.env, **extra})
    mode = "inline" if args.inline else "split"
    with serve(peer, Path(f"/tmp/idle-cpu/{mode}")) as server:
        time.sleep(SETTLE_S)
        processes = process_tree(server.root)
        before = {p.pid: _cpu(p) for p in processes}
        time.sleep(args.seconds)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                per_s = (_cpu(process) - before[process.pid]) / args.seconds * 1000
                command = " ".join(process.cmdline())[-90:]
                print(f"{mode} pid={process.pid} {per_s:6.2f} ms/s  {command}", flush=True)
        server.memory.stop()


if __name__ == "__main__":
    main()
