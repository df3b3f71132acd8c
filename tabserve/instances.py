"""Instances, however they arrive, bounded and checked by the model's own schema into rows.

Every front end ends in `rows_from_body`: V1 bodies and TabPy columns, query strings and CSV
cells (turned into instances, feature -> value dicts, first), Open Inference tensors that fail
the columnar check (tabserve/columns.py: valid ones skip the rows, with the same rules). So every
door applies the same limits and the same rules, and names a bad value the same way
(`instances[i].<feature>`); and every door decodes and validates inside `refusals_counted`, so
each refused request is counted once, whatever refused it. The limits come first, before any
per-value work: a body is refused on its bytes when it holds more JSON values than a valid
request can (`parse_json`), then on its instance count and keys per instance (`check_bounds`),
so a hostile request costs work in proportion to what a valid one may send, not to what it did
send.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from functools import cache
from operator import attrgetter
from typing import Any

import pydantic_core
from pydantic import BaseModel, ValidationError

from tabserve import metrics
from tabserve.catalog import MODELS
from tabserve.errors import InvalidInput, Locate, MalformedRequest, PayloadTooLarge, ServingError
from tabserve.features import Feature, Kind
from tabserve.schemas import ErrorDetail, Row, request_model
from tabserve.settings import get_settings

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


def as_feature_type(feature: Feature, value: Any) -> Any:
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


# --- JSON bodies, bounded before they are parsed ------------------------------------------------
# Each JSON value or key but the first follows one of these outside a string.
_BEFORE_VALUE = (b",", b":", b"[", b"{")
# A JSON string (escapes included), written so the regex engine never backtracks.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _count_before_values(body: bytes, start: int = 0, end: int | None = None) -> int:
    end = len(body) if end is None else end
    return sum(body.count(mark, start, end) for mark in _BEFORE_VALUE)


def _more_json_values_than(body: bytes, limit: int) -> bool:
    """Whether the JSON text holds more than `limit` values and keys, without parsing it.

    The marks that precede values, counted over the whole body, bound the count from above
    (a few ms for 8 MB): almost every body is decided there. Only when strings hold many marks
    (texts full of commas) are the marks counted again outside the strings, and that scan stops
    after `limit` strings, as each string is itself a value or a key.
    """
    if _count_before_values(body) < limit:
        return False
    found, position = 1, 0
    for strings, string in enumerate(_STRING.finditer(body), 1):
        found += _count_before_values(body, position, string.start())
        position = string.end()
        if found > limit or strings > limit:
            return True
    return found + _count_before_values(body, position) > limit


def check_json_size(body: bytes) -> None:
    """Refuse (413) a JSON body holding more values than a valid request needs, on its bytes:
    parsed, 8 MB of `{},` would cost 170 MB. A body shorter than the limit cannot hold more."""
    limit = get_settings().max_json_values
    if len(body) > limit and _more_json_values_than(body, limit):
        raise PayloadTooLarge.at(
            "body", f"holds more than {limit} JSON values; no valid request needs that many"
        )


def parse_json(body: bytes) -> Any:
    """A JSON body -> Python values, its size checked first. Nesting is bounded by the parser
    (a 400 past 200 levels)."""
    check_json_size(body)
    try:
        return pydantic_core.from_json(body)
    except ValueError as error:
        raise MalformedRequest.at("body", f"not valid JSON: {error}") from None


# --- instances -> rows ----------------------------------------------------------------------------
def check_instance_count(count: int) -> None:
    """Refuse too many instances before any is built or validated (pydantic would validate
    them all before it counts them)."""
    limit = get_settings().max_instances
    if count > limit:
        raise InvalidInput.at(
            "instances", f"holds {count} items; at most {limit} items are accepted"
        )


def check_bounds(payload: Any) -> None:
    """The instance count and the keys of each instance, before validation: pydantic reports
    every unknown key, so 90 keys in each of 1000 instances would be 90,000 errors (2.6 s)."""
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list):
        return  # the schema says what is wrong
    check_instance_count(len(instances))
    limit = get_settings().max_keys_per_instance
    crowded = [
        ErrorDetail(
            field=f"instances[{index}]",
            reason=f"has {len(instance)} keys; an instance has at most {limit}",
        )
        for index, instance in enumerate(instances)
        if isinstance(instance, dict) and len(instance) > limit
    ]
    if crowded:
        raise InvalidInput.listing(crowded)


class _RefusalsCounted:
    """See `refusals_counted`; made once per model and reused, so a request allocates nothing."""

    def __init__(self, model_name: str) -> None:
        self._model_name = model_name

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        if isinstance(error, ServingError):
            metrics.record_rejection(self._model_name, error.reason_label)


@cache
def refusals_counted(model_name: str) -> _RefusalsCounted:
    """The one place a prediction request's refusal is counted: every protocol decodes and
    validates a request for a known model inside `with refusals_counted(model):`, and whatever
    ServingError leaves it (not JSON, over a limit, a bad tensor, a value the schema refuses) is
    counted once in tabserve_rejected_inputs_total{model, reason} and passes on, for the
    protocol to render."""
    return _RefusalsCounted(model_name)


def rows_from_body(
    model_name: str, payload: bytes | dict[str, Any], locate: Locate | None = None
) -> list[Row]:
    """A request body (JSON bytes) or an already-parsed one -> rows in the model's feature
    order. A body that is not JSON is a MalformedRequest, one over a limit a PayloadTooLarge or
    InvalidInput, one that does not fit the schema an InvalidInput naming each bad field
    (`instances[3].age: Input should be less than or equal to 120`). `locate` renames a
    problem's location for protocols that do not speak in instances."""
    model = request_model(model_name)
    try:
        if isinstance(payload, bytes):
            request = _validated_json(model, payload)
        else:
            check_bounds(payload)
            request = model.model_validate(payload)
    except ValidationError as error:
        raise InvalidInput.from_validation(error, locate) from None
    return rows_from_request(model_name, request)


def _validated_json(model: type[BaseModel], body: bytes) -> BaseModel:
    """A V1 body, validated from its bytes by pydantic-core's parser: twice as fast as parsing
    it to Python objects first. A valid body is within `check_bounds` by its schema, so the
    bounds are checked only when validation fails, before its errors are listed: a body that
    breaks them gets one error per crowded instance, not one per unknown key."""
    check_json_size(body)
    try:
        return model.model_validate_json(body)
    except ValidationError:
        check_bounds(parse_json(body))  # also names a body that is not JSON at all
        raise


def rows_from_request(model_name: str, request: BaseModel) -> list[Row]:
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


def rows_from_instances(model_name: str, instances: list[dict[str, Any]]) -> list[Row]:
    """Instances (feature -> value dicts) -> rows, checked exactly as the V1 route checks them."""
    return rows_from_body(model_name, {"instances": instances})
