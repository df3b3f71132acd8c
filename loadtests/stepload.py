"""A step-load shape that finds the knee: the throughput at which p99 crosses the SLO.

Pass it to locust next to the scenarios (`-f loadtests/locustfile.py,loadtests/stepload.py`,
or `make loadtest SHAPE=1`). Users go up in steps (LOADTEST_STEP_USERS, default
1,2,4,8,16,32,64), each held LOADTEST_STEP_S seconds (default 15). At the end of each step the
step's requests per second and p99 are logged; the first step whose p99 is over
LOADTEST_SLO_P99_MS (default 50) ends the test, and the last step within the SLO is the knee.
The steps are also written as JSON to LOADTEST_KNEE_FILE when it is set.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from locust import LoadTestShape

logger = logging.getLogger("stepload")


class StepLoadShape(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()
        self.steps = [
            int(n) for n in os.environ.get("LOADTEST_STEP_USERS", "1,2,4,8,16,32,64").split(",")
        ]
        self.step_s = float(os.environ.get("LOADTEST_STEP_S", "15"))
        self.slo_ms = float(os.environ.get("LOADTEST_SLO_P99_MS", "50"))
        self.results: list[dict[str, float]] = []
        self.step = -1
        self.step_started = 0.0

    def tick(self) -> tuple[int, float] | None:
        step = int(self.get_run_time() // self.step_s)
        if step != self.step:
            if self.step >= 0 and not self._close_step():
                return None
            if step >= len(self.steps):
                return None
            self.step, self.step_started = step, time.monotonic()
            self.runner.stats.reset_all()
        users = self.steps[self.step]
        return users, users  # spawn the whole step at once

    def _close_step(self) -> bool:
        """Record the finished step; False when its p99 broke the SLO (the test ends)."""
        total = self.runner.stats.total
        elapsed = time.monotonic() - self.step_started
        result = {
            "users": self.steps[self.step],
            "rps": round(total.num_requests / elapsed, 1) if elapsed else 0.0,
            "p99_ms": total.get_response_time_percentile(0.99) or 0.0,
            "failure_ratio": round(total.fail_ratio, 4),
        }
        self.results.append(result)
        within = [r for r in self.results if r["p99_ms"] <= self.slo_ms]
        knee = max(within, key=lambda r: r["rps"]) if within else None
        logger.info("step %s; knee so far: %s", result, knee)
        knee_file = os.environ.get("LOADTEST_KNEE_FILE")
        if knee_file:
            summary = {"slo_p99_ms": self.slo_ms, "knee": knee, "steps": self.results}
            Path(knee_file).write_text(json.dumps(summary, indent=2) + "\n")
        return result["p99_ms"] <= self.slo_ms
