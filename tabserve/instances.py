"""Instances, however they arrive, checked by the model's own schema into rows.

The V1 JSON body is validated as bytes (pydantic-core's JSON parser). Other front ends (query
strings, CSV cells, TabPy's column lists) first turn their wire format into instances
(feature -> value dicts) and then validate them here, with the same pydantic request model,
so every door applies the same rules and names a bad value the same way
(`instances[i].<feature>`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import cache
from operator import attrgetter
from typing import Any

from pydantic import BaseModel, ValidationError

from tabserve import metrics
from tabserve.catalog import MODELS
from tabserve.errors import InvalidInput, MalformedRequest
from tabserve.features import Feature, Kind
from tabserve.schemas import Row, request_model

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def parse_text(feature: Feature, text: str) -> Any:
    """A query-string or CSV value -> the JSON type its feature's kind expects.

    Text that does not parse is returned unchanged, so the schema rejects it with its usual
    reason ("Input should be a valid integer"), instead of a second set of messages here.
    """
    text = text.strip() if feature.kind is not Kind.TEXT else text
    match feature.kind:
        case Kind.NUMBER:
            return _float_or_text(text)
        case Kind.INTEGER:
            try:
                return int(text)
            except ValueError:
                return _whole_number(_float_or_text(text))
        case Kind.BOOLEAN:
            lowered = text.lower()
            return True if lowered in _TRUE else False if lowered in _FALSE else text
    return text


def _float_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _whole_number(value: Any) -> Any:
    """8.0 -> 8: spreadsheets and pandas write whole numbers as floats."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def loosen(feature: Feature, value: Any) -> Any:
    """A JSON value from a tool that does not keep integer and boolean types apart (Tableau
    sends SUM([Calls]) as 8.0 and a 0/1 flag as a number) -> the type the schema expects."""
    if feature.kind is Kind.INTEGER:
        return _whole_number(value)
    if feature.kind is Kind.BOOLEAN and type(value) in (int, float) and value in (0, 1):
        return bool(value)
    return value


def instance_from_text(model_name: str, cells: Mapping[str, str]) -> dict[str, Any]:
    """Named text values (a CSV record, query parameters) -> an instance. An empty value means
    "not given" (imputed when the feature is optional); names that are not features are kept, so
    the schema reports them."""
    features = {feature.name: feature for feature in MODELS[model_name].features}
    instance: dict[str, Any] = {}
    for name, text in cells.items():
        feature = features.get(name)
        if feature is None:
            instance[name] = text
        elif text.strip():
            instance[name] = parse_text(feature, text)
    return instance


def validated_rows(model_name: str, payload: bytes | dict[str, Any]) -> list[Row]:
    """A request body (JSON bytes) or an already-parsed one -> rows in the model's feature
    order. Every front end ends here: a body that is not JSON is a MalformedRequest, one that
    does not fit the schema an InvalidInput naming each bad field
    (`instances[3].age: Input should be less than or equal to 120`); both are counted."""
    model = request_model(model_name)
    try:
        if isinstance(payload, bytes):
            request = model.model_validate_json(payload)
        else:
            request = model.model_validate(payload)
    except ValidationError as error:
        issues = error.errors(include_url=False)
        metrics.record_rejection(model_name, metrics.rejection_reason(issues))
        if any(issue["type"] == "json_invalid" for issue in issues):
            raise MalformedRequest(f"request body is not valid JSON: {issues[0]['msg']}") from None
        raise InvalidInput.from_issues(issues) from None
    return rows_of(model_name, request)


def rows_of(model_name: str, request: BaseModel) -> list[Row]:
    """A validated request model -> rows, each in the model's feature order."""
    values_in_order = _feature_getter(model_name)
    return [values_in_order(instance) for instance in request.instances]  # type: ignore[attr-defined]


@cache
def _feature_getter(model_name: str) -> Callable[[BaseModel], Row]:
    # attrgetter builds the row in C: half the time of a per-feature getattr loop. Given one
    # name it returns the bare value, so a one-feature model gets its 1-tuple made here.
    names = MODELS[model_name].feature_names
    if len(names) == 1:
        return lambda instance: (getattr(instance, names[0]),)
    return attrgetter(*names)


def validate_instances(model_name: str, instances: list[dict[str, Any]]) -> list[Row]:
    """Instances (feature -> value dicts) -> rows, checked exactly as the V1 route checks them."""
    return validated_rows(model_name, {"instances": instances})
