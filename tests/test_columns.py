"""Open Inference tensors checked as columns (tabserve/columns.py) against the row path (the
request schema, per instance): the columnar check must refuse every request the schema refuses
(its error then comes from the schema, so its message is the row path's), and a request it
accepts must reach the model as the row path would send it. In this process: no server."""

from __future__ import annotations

import math
import random
from functools import cache
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest

from tabserve.catalog import MODELS
from tabserve.columns import checked_array
from tabserve.errors import InvalidInput, ServingError
from tabserve.features import Kind
from tabserve.inference import LoadedModel
from tabserve.model_input import from_rows, to_rows
from tabserve.protocols import oip
from tabserve.protocols.tensors import NUMPY_TYPES, InvalidTensor, Tensor
from tabserve.settings import get_settings
from tests.data import instances
from tests.oip_tensors import feature_array

MAX_ROWS = get_settings().max_instances
MAX_TEXT = get_settings().max_text_chars
ROWS = 40


def _tensors(model: str, chosen: list[dict[str, Any]]) -> list[Tensor]:
    """The instances as tensors, the way tests/oip_tensors.py builds them for tritonclient."""
    tensors = []
    for feature in MODELS[model].features:
        values = [instance.get(feature.name) for instance in chosen]
        if any(value is not None for value in values):
            datatype, array = feature_array(feature, values)
            tensors.append(Tensor(feature.name, datatype, array.shape, array))
    return tensors


def _with(tensors: list[Tensor], name: str, datatype: str, data: np.ndarray) -> list[Tensor]:
    """The tensors with input `name` replaced."""
    others = [tensor for tensor in tensors if tensor.name != name]
    return [*others, Tensor(name, datatype, data.shape, data)]


def _columns(model: str, tensors: list[Tensor]) -> oip.FeatureColumns:
    return oip._feature_columns(MODELS[model], tensors, MAX_ROWS)


def _row_path(model: str, tensors: list[Tensor]) -> np.ndarray:
    spec = MODELS[model]
    return from_rows(spec, oip._rows(spec, _columns(model, tensors)))


def _served(model: str, tensors: list[Tensor]) -> np.ndarray:
    """What an inference request's predictions get: the columnar path, the row path's error."""
    return oip._features(MODELS[model], _columns(model, tensors), MAX_TEXT)


def _message(error: ServingError) -> tuple[str, list[tuple[str, str]]]:
    return error.message, [(detail.field, detail.reason) for detail in error.details]


@cache  # reading a dataset costs ~40 ms: the random test reuses 5 samples per model
def _row_of(model: str, seed: int) -> list[dict[str, Any]]:
    return instances(model, ROWS, seed=seed)


# One bad value in row 17 of a valid request, for every kind of check.
BAD_COLUMNS = {
    "integer above its bound": ("churn", "age", "INT64", 121),
    "integer below its bound": ("churn", "age", "INT64", -1),
    "number above its bound": ("churn", "customer_value", "FP64", 1e9),
    "number NaN where required": ("churn", "customer_value", "FP64", math.nan),
    "number infinite": ("churn", "customer_value", "FP64", math.inf),
    "integer not whole": ("churn", "age", "FP64", 30.5),
    "integer NaN where required (missing)": ("churn", "age", "FP64", math.nan),
    "optional number out of bounds": ("admission", "sbp", "FP64", 351.0),
    "optional integer not whole": ("admission", "pain_score", "FP64", 2.5),
    "unknown category": ("admission", "sex", "BYTES", b"unknown"),
    "empty category": ("admission", "sex", "BYTES", b""),
    "text too long": ("spam", "text", "BYTES", b"x" * (MAX_TEXT + 1)),
    "empty text": ("spam", "text", "BYTES", b""),
}


def _bad_tensors(model: str, name: str, datatype: str, bad: Any) -> list[Tensor]:
    chosen = _row_of(model, seed=3)
    values = [instance.get(name) for instance in chosen]
    if datatype == "BYTES":
        values = [value.encode() for value in values]
    data = np.array(values, dtype=NUMPY_TYPES[datatype])
    data[17] = bad
    return _with(_tensors(model, chosen), name, datatype, data)


@pytest.mark.parametrize("case", list(BAD_COLUMNS))
def test_a_bad_column_gets_the_row_paths_message(case: str) -> None:
    model, name, datatype, bad = BAD_COLUMNS[case]
    tensors = _bad_tensors(model, name, datatype, bad)
    columns = _columns(model, tensors)
    assert checked_array(MODELS[model], columns.values, columns.rows, MAX_TEXT) is None
    with pytest.raises(InvalidInput) as row_path:
        _row_path(model, tensors)
    with pytest.raises(InvalidInput) as served:
        _served(model, tensors)
    assert _message(served.value) == _message(row_path.value)
    assert [field for field, _ in _message(served.value)[1]] == [f"{name}[17]"]


def test_a_wrong_datatype_is_refused_before_either_path() -> None:
    tensors = _tensors("churn", _row_of("churn", seed=4))
    flags = np.ones(ROWS, dtype=np.int64)
    with pytest.raises(InvalidTensor, match="'complains' has datatype INT64; a boolean feature"):
        _columns("churn", _with(tensors, "complains", "INT64", flags))


@pytest.mark.parametrize("model", list(MODELS))
def test_a_valid_request_reaches_the_model_as_the_row_path_sends_it(
    trained_store: Path, model: str
) -> None:
    spec = MODELS[model]
    tensors = _tensors(model, _row_of(model, seed=5))
    columns = _columns(model, tensors)
    columnar = checked_array(spec, columns.values, columns.rows, MAX_TEXT)
    assert columnar is not None
    rows = _row_path(model, tensors)
    assert columnar.dtype == rows.dtype and columnar.shape == rows.shape
    assert to_rows(spec, columnar) == to_rows(spec, rows)
    loaded = LoadedModel(spec, bentoml.models.get(f"{model}:latest"), threads=1)
    np.testing.assert_array_equal(loaded.predict_proba(columnar), loaded.predict_proba(rows))


# Values of each datatype a feature may be sent, valid and not.
_FLOATS = [
    0.0,
    1.0,
    2.5,
    -3.0,
    119.0,
    120.0,
    120.5,
    121.0,
    1e6,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
]
_INTS = [0, 1, 5, 119, 120, 121, -1, 2**40]
_TEXTS = [b"", b"a", b"F", b"M", b"female", b"male", b"x" * MAX_TEXT, b"x" * (MAX_TEXT + 1)]


def test_the_two_paths_agree_on_random_columns() -> None:
    """Random single-value changes of valid requests: the columnar check accepts exactly what
    the row path accepts (never looser; and not stricter, so valid traffic never pays for the
    row path), and what it accepts is what the row path builds."""
    rng = random.Random(7)
    disagreements = []
    for trial in range(300):
        model = rng.choice(["churn", "admission", "spam", "iris", "drug"])
        spec = MODELS[model]
        chosen = _row_of(model, seed=trial % 5)
        tensors = _tensors(model, chosen)
        feature = rng.choice(spec.features)
        tensor = next((t for t in tensors if t.name == feature.name), None)
        if tensor is None or feature.kind is Kind.BOOLEAN:
            continue
        data = tensor.data.copy()
        if tensor.datatype == "BYTES":
            data[rng.randrange(ROWS)] = rng.choice(_TEXTS)
        elif tensor.datatype == "FP64":
            data[rng.randrange(ROWS)] = rng.choice(_FLOATS)
        else:
            data[rng.randrange(ROWS)] = rng.choice(_INTS)
        changed = _with(tensors, feature.name, tensor.datatype, data)
        columns = _columns(model, changed)
        columnar = checked_array(spec, columns.values, columns.rows, MAX_TEXT)
        try:
            rows = _row_path(model, changed)
        except InvalidInput:
            rows = None
        if (columnar is None) != (rows is None):
            disagreements.append((model, feature.name, data.tolist()))
        elif columnar is not None and rows is not None:
            assert to_rows(spec, columnar) == to_rows(spec, rows)
    assert disagreements == []
