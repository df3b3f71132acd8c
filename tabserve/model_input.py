"""A request's rows as the models take them: one 2-D numpy array, and the versioned batches the
runner scores.

Every protocol ends its validation in one (rows, features) array, in the spec's feature order:
float64 for a model whose features are all numeric (None -> NaN, booleans -> 1/0; one buffer,
pickled to the runner as raw bytes, and what the models compute on), Python objects otherwise.
From there on nothing converts per row: the runner call, the models, drift and shadow scoring
take the array; only the payload log turns its sampled rows back into typed values.

A `versioned` batch adds the model version that is to score each row, so the calls of several
requests, API workers and versions merge by concatenation, in MergedCalls and in BentoML's
adaptive batching alike: a numpy record array (`version`, `features` sub-array) for a float
array, one buffer pickled as raw bytes; for an object array, the version is one more column
(first): objects pickle one by one anyway, and a record array of them pickles ~10x slower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from tabserve.catalog import ModelSpec
from tabserve.features import Feature, Kind
from tabserve.schemas import Row

_VERSION = "version"
_FEATURES = "features"
_FLOAT = np.dtype(np.float64)
_OBJECT = np.dtype(object)


def input_dtype(spec: ModelSpec) -> np.dtype:
    return _FLOAT if all(feature.is_numeric for feature in spec.features) else _OBJECT


def from_rows(spec: ModelSpec, rows: Sequence[Row]) -> np.ndarray:
    """Validated rows (tabserve.instances) -> the model's input array."""
    shape = (len(rows), len(spec.features))
    dtype = input_dtype(spec)
    if dtype == _FLOAT:
        return np.array(rows, dtype=_FLOAT).reshape(shape)
    array = np.empty(shape, dtype=_OBJECT)
    array[:] = rows  # element by element: np.array would split a text into characters
    return array


def to_rows(spec: ModelSpec, array: np.ndarray) -> list[Row]:
    """The input array -> rows of typed values (integers as int, booleans as bool, missing as
    None), as the row path validated them: for the payload log's records."""
    columns = [
        [_typed(feature, value) for value in array[:, position].tolist()]
        for position, feature in enumerate(spec.features)
    ]
    return list(zip(*columns, strict=True)) if columns else [() for _ in range(len(array))]


def _typed(feature: Feature, value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    match feature.kind:
        case Kind.INTEGER:
            return int(value)
        case Kind.BOOLEAN:
            return bool(value)
        case Kind.NUMBER:
            return float(value)
    return value


def versioned(version: str, features: np.ndarray) -> np.ndarray:
    """Each row of `features` to be scored by `version`."""
    rows, width = features.shape
    if features.dtype == _OBJECT:
        return np.column_stack([np.full(rows, version, dtype=_OBJECT), features])
    batch = np.empty(rows, dtype=_record_type(max(len(version), 1), features.dtype, width))
    batch[_VERSION] = version
    batch[_FEATURES] = features
    return batch


@cache
def _record_type(version_length: int, features: np.dtype, width: int) -> np.dtype:
    # Made once per shape: building a structured dtype costs more than the rest of a one-row call.
    return np.dtype([(_VERSION, f"U{version_length}"), (_FEATURES, features, (width,))])


def unversioned(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A versioned batch -> (the version of each row, the features)."""
    if batch.dtype.names:
        return batch[_VERSION], batch[_FEATURES]
    return batch[:, 0], batch[:, 1:]
