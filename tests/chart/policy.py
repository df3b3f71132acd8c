"""The checkov policy scan, run from its own venv (`make checkov`: it pins many packages of its
own), offline: no policy download, no vendor API (BC_SKIP_MAPPING)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.chart.manifests import PROJECT

CHECKOV = PROJECT / ".venv" / "checkov" / "bin" / "checkov"


def scan(directory: Path) -> dict[str, Any]:
    """checkov's Kubernetes report for every manifest file in `directory`."""
    result = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
        ],
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.strip(), f"checkov printed no report:\n{result.stderr[-3000:]}"
    (report,) = [r for r in _as_list(json.loads(result.stdout)) if r["check_type"] == "kubernetes"]
    return report


def _as_list(report: Any) -> list[dict[str, Any]]:
    return report if isinstance(report, list) else [report]
