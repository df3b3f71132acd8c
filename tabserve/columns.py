"""A model's feature values checked column by column, vectorised, into the model's input array.

The Open Inference Protocol's tensors arrive as numpy columns already; checking them with the
request schema (tabserve/schemas.py) would first turn them into a dict per row and a pydantic
model per instance, most of a large request's cost. These are the schema's rules, per column:

    number   finite, within the bounds (NaN: missing, allowed for an optional feature)
    integer  the same, and whole
    boolean  any (the tensor's datatype is BOOL)
    category one of the categories
    text     1..max_text_chars characters

A column either passes all of them, or `checked_array` answers None and the caller runs the row
path, whose schema names each bad value (`instances[17].age: ...`): only bad requests pay for it,
and their messages are the schema's by construction. So these checks may be stricter than the
schema, never looser (tests/test_columns.py compares the two on every kind of bad column).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tabserve.catalog import ModelSpec
from tabserve.features import Feature, Kind
from tabserve.model_input import input_dtype


def checked_array(
    spec: ModelSpec, columns: Mapping[str, np.ndarray], rows: int, max_text_chars: int
) -> np.ndarray | None:
    """`columns`: per feature sent, its `rows` values: a numeric array (number, integer,
    boolean features) or an object array of str (category, text); a feature not sent is an
    optional one left out (the caller refuses a missing required one). The model's input
    array (tabserve/model_input.py), or None when any value breaks its feature's rules."""
    array = np.empty((rows, len(spec.features)), dtype=input_dtype(spec))
    for position, feature in enumerate(spec.features):
        values = columns.get(feature.name)
        if values is None:
            array[:, position] = np.nan if feature.is_numeric else None
        elif not _valid(feature, values, max_text_chars):
            return None
        else:
            array[:, position] = values.astype(np.float64) if feature.is_numeric else values
    return array


def _valid(feature: Feature, values: np.ndarray, max_text_chars: int) -> bool:
    match feature.kind:
        case Kind.NUMBER | Kind.INTEGER:
            return _valid_numbers(feature, values.astype(np.float64))
        case Kind.BOOLEAN:
            return values.dtype == np.bool_
        case Kind.CATEGORY:
            return bool(np.isin(values, feature.categories).all())
        case Kind.TEXT:
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
            return bool(((lengths >= 1) & (lengths <= max_text_chars)).all())
    raise AssertionError(feature.kind)


def _valid_numbers(feature: Feature, numbers: np.ndarray) -> bool:
    missing = np.isnan(numbers)
    if missing.any():
        if feature.required:
            return False
        numbers = numbers[~missing]
    assert feature.minimum is not None and feature.maximum is not None  # Feature checks it
    # Infinities fail the bounds.
    valid = (numbers >= feature.minimum) & (numbers <= feature.maximum)
    if feature.kind is Kind.INTEGER:
        valid &= np.floor(numbers) == numbers
    return bool(valid.all())
