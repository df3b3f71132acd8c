"""Command-line tools built from the Go module proxy by scripts/cluster/build.sh, cached by version.

Not every tool is part of the cluster: kustomize (tests/test_kustomize.py) and helm-docs
(helm/generate_docs.py) are built the same way so one versions.env pins them all.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CLUSTER_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "cluster"


def go_tool(component: str, binary: str) -> Path:
    """The binary of one build.sh component at its versions.env version, built once (cached)."""
    subprocess.run(["bash", CLUSTER_SCRIPTS / "build.sh", component], check=True, timeout=900)
    version_var = component.upper().replace("-", "_") + "_VERSION"
    where = (
        f'. "{CLUSTER_SCRIPTS}/common.sh"; echo "$CACHE/bin/{component}-${version_var}/{binary}"'
    )
    found = subprocess.run(["bash", "-c", where], check=True, capture_output=True, text=True)
    return Path(found.stdout.strip())
