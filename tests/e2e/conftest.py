"""The end-to-end suite runs against the local cluster `make cluster` started (`make e2e`);
without one it fails, naming the command to run: a skipped e2e suite would prove nothing."""

from __future__ import annotations

import os

import pytest

from tests.e2e.cluster import KUBECONFIG, PROJECT, run


@pytest.fixture(scope="session")
def cluster() -> None:
    if not KUBECONFIG.exists():
        pytest.fail(f"no local cluster ({KUBECONFIG} is missing): run `make cluster` first")
    nodes = run(["kubectl", "get", "nodes", "--no-headers"]).stdout
    assert " Ready " in nodes, nodes


@pytest.fixture(scope="session")
def image(cluster: None) -> str:
    """The image of this checkout, built if needed and imported into the node (no registry).
    TABSERVE_E2E_IMAGE names one already imported instead (to rerun the suite quickly)."""
    if reuse := os.environ.get("TABSERVE_E2E_IMAGE"):
        return reuse
    script = PROJECT / "scripts" / "cluster" / "import-image.sh"
    return run(["bash", str(script)], timeout=1800).stdout.strip().splitlines()[-1]
