"""Run one server, load it with locust, and measure it from the outside.

CPU seconds, resident memory and open file descriptors are summed over the server's whole
process tree (BentoML's API and runner workers, gunicorn's workers, MLServer's inference pool),
sampled by psutil.
"""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from devtools.local_process import free_port, stop_process_group, wait_until_ready
from loadtests.bench.peers import PROJECT, Peer, Ports

LOCUST = Path(sys.executable).with_name("locust")
BENCH_LOCUSTFILE = Path(__file__).with_name("locustfile.py")
READY_TIMEOUT_S = 120
MEMORY_SAMPLE_S = 0.2


def process_tree(root: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [root, *root.children(recursive=True)]
    return []


def cpu_seconds(root: psutil.Process) -> float:
    """User + system CPU time of the process and all its live descendants."""
    total = 0.0
    for process in process_tree(root):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def memory_bytes(root: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) summed over the tree. RSS counts a shared library page once per process that
    maps it; PSS splits it between them, so its sum counts every page once (closer to what a
    pod's memory limit is charged)."""
    rss = pss = 0
    for process in process_tree(root):
        with contextlib.suppress(psutil.NoSuchProcess):
            memory = process.memory_full_info()
            rss += memory.rss
            pss += memory.pss
    return rss, pss


def open_fds(root: psutil.Process) -> int:
    """Open file descriptors (files, sockets, pipes) summed over the tree."""
    total = 0
    for process in process_tree(root):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.num_fds()
    return total


class PeakMemory:
    """Samples the tree's summed RSS and PSS in a thread, keeping the highest of each."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.rss, self.pss = memory_bytes(root)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_S):
            rss, pss = memory_bytes(self.root)
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class RunningServer:
    peer: Peer
    url: str
    ports: Ports
    process: subprocess.Popen[bytes]
    ready_s: float
    memory: PeakMemory

    @property
    def root(self) -> psutil.Process:
        return self.memory.root


@contextlib.contextmanager
def serve(peer: Peer, work: Path) -> Iterator[RunningServer]:
    """Start the peer, wait until its ready URL answers 200, stop its process group after."""
    http, *extra = (free_port() for _ in range(3))
    ports = Ports(http, tuple(extra[:2]))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **peer.env}
    if peer.ours:
        env |= {
            "TABSERVE_GRPC_PORT": str(extra[0]),
            "TABSERVE_GRPC_HOST": "127.0.0.1",
            # Its own metrics port: never 8002 shared with a `make serve` through SO_REUSEPORT.
            "TABSERVE_METRICS_PORT": str(free_port()),
            "TABSERVE_METRICS_HOST": "127.0.0.1",
        }
    log = (work / "server.log").open("wb")
    started = time.monotonic()
    process = subprocess.Popen(
        peer.command(ports, work),
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as one, workers included
    )
    url = f"http://127.0.0.1:{http}"
    try:
        wait_until_ready(process, url + peer.ready_path, work / "server.log", READY_TIMEOUT_S, 0.1)
        ready_s = time.monotonic() - started
        memory = PeakMemory(psutil.Process(process.pid))
        yield RunningServer(peer, url, ports, process, ready_s, memory)
    finally:
        stop_process_group(process, timeout_s=20)
        log.close()


@dataclass(frozen=True)
class LoadResult:
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_s_per_1k: float


def _percentile_ms(value: str) -> float:
    """locust writes N/A for a run with no requests. Seen on this machine under heavy load: its
    run-time limit ended a 5 s run 0.3 s after the users started, and the CSV held no request.
    The report then shows nan rather than the bench stopping."""
    return float("nan") if value == "N/A" else float(value)


def load(server: RunningServer, users: int, seconds: int, bodies: Path, out: Path) -> LoadResult:
    """`users` closed-loop locust users for `seconds` (after all have started)."""
    prefix = out / f"{server.peer.name}-{users}u"
    command = [
        str(LOCUST), "-f", str(BENCH_LOCUSTFILE), "--headless", "--only-summary",
        "--host", server.url, "--users", str(users), "--spawn-rate", str(users),
        "--run-time", f"{seconds}s", "--stop-timeout", "5",
        "--csv", str(prefix), "--exit-code-on-error", "0",
    ]  # fmt: skip
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_PATH": server.peer.predict_path}
    cpu_before = cpu_seconds(server.root)
    subprocess.run(
        command,
        cwd=PROJECT,
        env=env,
        check=True,
        timeout=seconds + 60,
        stdout=subprocess.DEVNULL,
        stderr=(out / f"{server.peer.name}-{users}u.log").open("wb"),
    )
    cpu = cpu_seconds(server.root) - cpu_before
    with Path(f"{prefix}_stats.csv").open(newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    requests = int(total["Request Count"])
    return LoadResult(
        requests=requests,
        failures=int(total["Failure Count"]),
        rps=float(total["Requests/s"]),
        p50_ms=_percentile_ms(total["50%"]),
        p95_ms=_percentile_ms(total["95%"]),
        p99_ms=_percentile_ms(total["99%"]),
        cpu_s_per_1k=cpu / requests * 1000 if requests else float("nan"),
    )
