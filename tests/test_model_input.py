"""The model's input array and the versioned batches the runner scores (tabserve/model_input.py).
In this process: no server, no model."""

from __future__ import annotations

import numpy as np
import pytest

from tabserve.catalog import MODELS
from tabserve.instances import rows_from_instances
from tabserve.model_input import from_rows, to_rows, unversioned, versioned
from tests.data import instances


@pytest.mark.parametrize("model", list(MODELS))
def test_rows_survive_the_array(model: str) -> None:
    """Typed values (int, bool, None for missing) come back as the schema made them: the
    payload log writes them."""
    spec = MODELS[model]
    rows = rows_from_instances(model, instances(model, 50, seed=2))
    array = from_rows(spec, rows)
    assert array.shape == (50, len(spec.features))
    assert to_rows(spec, array) == rows


@pytest.mark.parametrize("model", ["churn", "admission"])  # a float array, an object array
def test_batches_of_several_versions_merge_by_concatenation(model: str) -> None:
    spec = MODELS[model]
    array = from_rows(spec, rows_from_instances(model, instances(model, 6, seed=3)))
    merged = np.concatenate(
        [
            versioned("a", array[:2]),
            versioned("longer-version", array[2:5]),
            versioned("a", array[5:]),
        ]
    )
    versions, features = unversioned(merged)
    assert versions.tolist() == ["a", "a"] + ["longer-version"] * 3 + ["a"]
    assert to_rows(spec, features) == to_rows(spec, array)
