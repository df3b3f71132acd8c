"""A server process on 127.0.0.1: a free port, waiting until it answers, stopping it.

Shared by the test servers (tests/server.py), the benchmark (loadtests/bench/measure.py) and the
local Prometheus (observability/local_prometheus.py). Standard library only, so `make observe`
needs nothing the service does not. The processes are started with `start_new_session=True`,
so a process and everything it spawned (BentoML's workers, gunicorn's) stop as one group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

LOG_TAIL_CHARS = 4000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(
    process: subprocess.Popen, url: str, log: Path, timeout_s: float, poll_s: float = 0.2
) -> None:
    """Poll `url` until it answers 200. Fails with the log's tail if the process exits first or
    the time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited:\n{_tail(log)}")
        # Refused connections, timeouts and non-2xx answers (HTTPError) are all OSErrors.
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(poll_s)
    raise TimeoutError(f"{url} not ready in {timeout_s:.0f} s:\n{_tail(log)}")


def stop_process_group(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM the process's group, SIGKILL it if still running after timeout_s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""
