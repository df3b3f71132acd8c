"""Shared fixtures: a private BentoML home with freshly trained models, and a real server.

The BentoML home is set before anything imports bentoml, so no test ever reads or writes the
user's ~/bentoml. The server is a real `bentoml serve` process on a free 127.0.0.1 port.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

BENTOML_HOME = Path(tempfile.mkdtemp(prefix="tabserve-test-bentoml-"))
os.environ["BENTOML_HOME"] = str(BENTOML_HOME)
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

import pytest  # noqa: E402

from tests.model_versions import VersionStore, make_version_store  # noqa: E402
from tests.server import ServerProcess, run_training  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
# The end-to-end suite needs the local Kubernetes cluster: `make e2e` runs it (TABSERVE_E2E=1).
collect_ignore = [] if os.environ.get("TABSERVE_E2E") else ["e2e"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(BENTOML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_store() -> Path:
    """Every model of the catalog trained (fast mode) into the test BentoML home, by train.py."""
    run_training("--fast")
    return BENTOML_HOME


@pytest.fixture(scope="session")
def server(
    trained_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real `bentoml serve service:ModelAPI`, ready (all models loaded) before any test runs."""
    log = tmp_path_factory.mktemp("server") / "bentoml-serve.log"
    with ServerProcess.start(log) as process:
        yield process


@pytest.fixture(scope="session")
def version_store(trained_store: Path, tmp_path_factory: pytest.TempPathFactory) -> VersionStore:
    """A store of its own with two versions of churn (tests/model_versions.py)."""
    return make_version_store(trained_store, tmp_path_factory.mktemp("versions-home"))
