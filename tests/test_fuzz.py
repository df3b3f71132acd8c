"""Property-based fuzzing of every operation in the service's own OpenAPI document.

Schemathesis generates valid and invalid requests from /v1/openapi.json (each model's exact
request schema included) and fails on any 5xx answer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCHEMATHESIS = Path(sys.executable).with_name("st")
EXAMPLES_PER_OPERATION = 30


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(server, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{server.url}/v1/openapi.json",
            "--checks",
            "not_a_server_error",
            "--mode",
            "all",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            "1",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )
    summary = result.stdout[-3000:]
    print(summary)
    assert result.returncode == 0, summary
    assert " passed" in summary and "failed" not in summary.split("Test cases:")[-1]
