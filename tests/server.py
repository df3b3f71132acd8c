"""Start and stop real processes for the tests: train.py and `bentoml serve`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from devtools.local_process import free_port, stop_process_group, wait_until_ready

PROJECT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).with_name("bentoml")
READY_TIMEOUT_S = 90


def run_training(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=PROJECT,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    grpc_port: int
    metrics_port: int
    home: Path  # its BentoML home (the multiprocess metrics live in prometheus_multiproc_dir)

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        log: Path,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        store: Path | None = None,
    ) -> Iterator[ServerProcess]:
        """`wait_ready=False`: yield at once, for tests of a server that must not become ready.
        `store`: a model store of the test's own (default: the session's trained one)."""
        port = free_port()
        # Each server gets a BentoML home of its own, with the trained models linked in: BentoML
        # empties $BENTOML_HOME/prometheus_multiproc_dir whenever a server starts, so servers
        # sharing a home would lose each other's metrics.
        home = log.parent / f"bentoml-home-{port}"
        home.mkdir()
        store = store or Path(os.environ["BENTOML_HOME"]) / "models"
        (home / "models").symlink_to(store, target_is_directory=True)
        # Each server gets its own gRPC and metrics ports on loopback: servers started by
        # different tests (or a developer's `make serve`) must not silently share 8001 or 8002
        # through SO_REUSEPORT.
        env = {
            "BENTOML_HOME": str(home),
            "TABSERVE_GRPC_HOST": "127.0.0.1",
            "TABSERVE_GRPC_PORT": str(free_port()),
            "TABSERVE_METRICS_HOST": "127.0.0.1",
            "TABSERVE_METRICS_PORT": str(free_port()),
            **(env or {}),
        }
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    str(BENTOML),
                    "serve",
                    "service:ModelAPI",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=PROJECT,
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one, workers included
            )
        server = cls(
            process,
            f"http://127.0.0.1:{port}",
            log,
            int(env["TABSERVE_GRPC_PORT"]),
            int(env["TABSERVE_METRICS_PORT"]),
            home,
        )
        try:
            if wait_ready:
                server.wait_ready()
            yield server
        finally:
            server.stop()

    def wait_ready(self) -> None:
        wait_until_ready(self.process, f"{self.url}/readyz", self.log, READY_TIMEOUT_S, 0.3)

    @property
    def metrics_url(self) -> str:
        """Where Prometheus scrapes: /metrics on the metrics port, or on the HTTP port when the
        test turned the metrics port off (TABSERVE_METRICS_PORT=0)."""
        if self.metrics_port:
            return f"http://127.0.0.1:{self.metrics_port}/metrics"
        return f"{self.url}/metrics"

    @property
    def metrics_dir(self) -> Path:
        """Where BentoML's processes write their Prometheus samples (one mmap file each)."""
        return self.home / "prometheus_multiproc_dir"

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def worker(self, service_name: str) -> psutil.Process:
        """The (first) worker process of a service: `model_runner` or `tabserve` (the API)."""
        workers = self.workers(service_name)
        if not workers:
            raise LookupError(f"no {service_name} worker under {self.process.pid}")
        return workers[0]

    def workers(self, service_name: str) -> list[psutil.Process]:
        """The live worker processes of a service. BentoML's arbiter starts each with
        `--service-name <name>` and restarts it if it dies."""
        return [
            child
            for child in psutil.Process(self.process.pid).children()
            if f"--service-name {service_name}" in " ".join(_command_line(child))
        ]

    def stop(self) -> None:
        stop_process_group(self.process, timeout_s=30)


def _command_line(process: psutil.Process) -> list[str]:
    """Empty for a process that is gone or dead but not yet reaped (a killed worker)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []
