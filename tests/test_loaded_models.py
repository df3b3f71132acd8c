"""The process that holds the models: its thread pools follow TABSERVE_MODEL_THREADS."""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from tabserve.catalog import MODELS
from tabserve.loaded_models import LoadedModels
from tabserve.model_input import from_rows, versioned
from tests.data import expected_probabilities, instances


def test_every_thread_pool_of_the_model_process_follows_model_threads(
    trained_store: Path,
) -> None:
    # limits=None changes nothing, and on leaving restores this test process's own limits.
    with threadpool_limits(limits=None):
        models = LoadedModels(
            MODELS, lambda name: [f"{name}:latest"], {}, threads=1, unload_grace_s=0
        )
        pools = threadpool_info()
        assert {pool["user_api"] for pool in pools} >= {"openmp"}, pools
        assert [pool["num_threads"] for pool in pools] == [1] * len(pools), pools
        # and the models answer as they do with the test process's own pools
        spec = MODELS["admission"]
        version = bentoml.models.get("admission:latest").tag.version
        rows = [
            tuple(row.get(name) for name in spec.feature_names) for row in instances("admission", 5)
        ]
        np.testing.assert_allclose(
            models.predict_proba("admission", versioned(version, from_rows(spec, rows))),
            expected_probabilities("admission:latest", instances("admission", 5)),
            rtol=0,
            atol=1e-12,
        )
