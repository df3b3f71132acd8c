"""The one scenario every benchmarked server gets: single-row churn requests, no think time.

The bodies (the same rows, each in the server's own protocol) come from the JSON list in
BENCH_BODIES, the route from BENCH_PATH; any answer but 200 is a failure.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, constant, task

BODIES = [body.encode() for body in json.loads(Path(os.environ["BENCH_BODIES"]).read_text())]
PATH = os.environ["BENCH_PATH"]


class BenchUser(FastHttpUser):
    wait_time = constant(0)
    network_timeout = 30.0

    @task
    def predict(self) -> None:
        self.client.post(
            PATH,
            data=random.choice(BODIES),
            headers={"Content-Type": "application/json"},
            name="churn [1 row]",
        )
