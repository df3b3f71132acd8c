"""Real rows from the vendored data sets, in the shapes the API and the runner take."""

from __future__ import annotations

import math
from typing import Any

import bentoml
import numpy as np
import pandas as pd

from tabserve import datasets
from tabserve.catalog import MODELS, ModelSpec
from tabserve.features import Kind
from tabserve.inference import LoadedModel


def dataset_features(spec: ModelSpec) -> pd.DataFrame:
    path = datasets.DATA_DIR / spec.dataset_file if spec.dataset_file else None
    features, _ = spec.load_dataset(path)
    return features


def _json_value(kind: Kind, value: Any) -> Any:
    match kind:
        case Kind.BOOLEAN:
            return bool(value)
        case Kind.INTEGER:
            return int(value)
        case Kind.NUMBER:
            return float(value)
        case _:
            return str(value)


def instances(model_name: str, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` real rows as API instances; a missing optional value is left out, as callers do."""
    spec = MODELS[model_name]
    frame = dataset_features(spec).sample(n=count, random_state=seed, replace=count > 200)
    return [
        {
            feature.name: _json_value(feature.kind, row[feature.name])
            for feature in spec.features
            if not (isinstance(row[feature.name], float) and math.isnan(row[feature.name]))
        }
        for _, row in frame.iterrows()
    ]


def expected_probabilities(tag: str, rows: list[dict[str, Any]]) -> np.ndarray:
    """What the stored model itself says for these instances, computed in this process."""
    name = tag.split(":")[0]
    spec = MODELS[name]
    model = LoadedModel(spec, bentoml.models.get(tag), threads=1)
    return model.predict_proba([[row.get(f) for f in spec.feature_names] for row in rows])
