"""Two versions of one model in a model store of their own, for the tests of versions, aliases
and shadow scoring (tests/test_versions.py, and the dashboards' shadow panels in
tests/test_prometheus.py): the session's fast-trained models copied, then churn trained again in
full (300 trees instead of a handful), so the two versions disagree on some rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml._internal.models.model import ModelStore

from tabserve.catalog import MODELS
from tabserve.inference import LoadedModel
from tests.server import PROJECT


@dataclass(frozen=True)
class VersionStore:
    path: Path  # a BentoML model store
    first: str  # churn's session version (fast-trained)
    second: str  # churn trained again, in full

    def settings(self) -> dict[str, str]:
        """Serve the first as champion, the second beside it as challenger, and shadow every
        churn request with the challenger."""
        return {
            "TABSERVE_MODEL_TAGS": json.dumps({"churn": f"churn:{self.first}"}),
            "TABSERVE_MODEL_VERSIONS": json.dumps({"churn": [f"churn:{self.second}"]}),
            "TABSERVE_MODEL_ALIASES": json.dumps({"churn": {"challenger": self.second}}),
            "TABSERVE_SHADOW": json.dumps({"churn": {"target": "challenger", "fraction": 1.0}}),
        }

    def expected(self, version: str, rows: list[dict[str, Any]]) -> np.ndarray:
        spec = MODELS["churn"]
        stored = ModelStore(self.path).get(f"churn:{version}")
        model = LoadedModel(spec, stored, threads=1)
        return model.predict_proba([tuple(row.get(f) for f in spec.feature_names) for row in rows])


def make_version_store(session_store: Path, home: Path) -> VersionStore:
    shutil.copytree(session_store / "models", home / "models")
    first = bentoml.models.get("churn:latest").tag.version
    subprocess.run(
        [sys.executable, "train.py", "--only", "churn"],
        cwd=PROJECT,
        env={**os.environ, "BENTOML_HOME": str(home)},
        check=True,
        capture_output=True,
        timeout=300,
    )
    second = ModelStore(home / "models").get("churn:latest").tag.version
    assert second != first
    return VersionStore(home / "models", first, second)
