"""The bento takes in exactly the service's source: bentofile.yaml's patterns as BentoML reads them
(its build walks the project and yields top-level files as "./name")."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bentoml._internal.bento.build_config import BentoPathSpec

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def spec() -> BentoPathSpec:
    config = yaml.safe_load((PROJECT / "bentofile.yaml").read_text())
    return BentoPathSpec(config["include"], config["exclude"], str(PROJECT))


@pytest.mark.parametrize(
    "path",
    ["./service.py", "tabserve/app.py", "tabserve/protocols/grpc/server.py", "pyproject.toml"],
)
def test_the_service_source_is_in_the_bento(spec: BentoPathSpec, path: str) -> None:
    assert spec.includes(path)


@pytest.mark.parametrize(
    "path",
    [
        # Same names deeper down: the chart, and a copy of the source in the local cluster's
        # image store, which once made every image carry the previous images' sources.
        "helm/tabserve/values.yaml",
        ".cluster/data/containerd/root/snapshots/4/fs/home/bentoml/bento/src/service.py",
        ".cluster/data/containerd/root/snapshots/4/fs/home/bentoml/bento/src/tabserve/app.py",
        "tests/service.py",
        "tabserve/__pycache__/app.cpython-311.pyc",
        "train.py",
        "data/churn.csv",
    ],
)
def test_nothing_else_is(spec: BentoPathSpec, path: str) -> None:
    assert not spec.includes(path)
