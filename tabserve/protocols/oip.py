"""The Open Inference Protocol (KServe V2) operations, shared by REST and gRPC, and the mapping
of a model's features to tensors.

Both transports resolve the model (`DataPlane.spec`), decode their wire format into the neutral
objects here (`Tensor` from tabserve.protocols.tensors, `InferenceRequest`) inside
`refusals_counted`, and call `OpenInference`; it maps tensors to the model's feature columns,
checks them vectorised with the rules of the model's schema (tabserve/columns.py; a request that
fails goes through the schema itself, for its messages), calls the data plane with the model's
input array and maps the answer back to tensors. No transport touches a schema or calls the data
plane's prediction itself.

How a model's features map to tensors (docs/protocols.md has the full table):
* one input tensor per feature, named after it, shape [N] or [N, 1] (one value per row);
* datatype by the feature's kind: number FP64, integer INT64, boolean BOOL, category and text
  BYTES (UTF-8). Numbers also accept any other integer or float type; integers also accept float
  types holding whole numbers;
* an optional feature may be left out (missing in every row), or, in a float tensor, be NaN in
  the rows where it is missing; the model's pipeline imputes it;
* outputs: `label` BYTES [N] (the most probable class) and `probabilities` FP64 [N, classes],
  columns in the order of the `class_names` model property; on request only, `contributions`
  FP32 [N, outputs x (features + 1)]: per explained class (one for a binary model, every class
  in order for a multi-class one), each feature's contribution to the margin, the base value last
  (Triton FIL's `treeshap_output` layout).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tabserve import __version__, metrics
from tabserve.catalog import ModelSpec
from tabserve.columns import checked_array
from tabserve.dataplane import DataPlane, Explained, Predictions
from tabserve.features import Feature, Kind
from tabserve.instances import refusals_counted, rows_from_body
from tabserve.model_input import from_rows
from tabserve.protocols.tensors import (
    FLOAT_TYPES,
    INTEGER_TYPES,
    NUMPY_TYPES,
    InvalidTensor,
    Tensor,
)
from tabserve.schemas import Row
from tabserve.settings import Settings

SERVER_NAME = "tabserve"
# The HTTP binary tensor data extension (Triton's name for it): tritonclient's default encoding.
EXTENSIONS = ("binary_tensor_data",)

# The datatype model metadata declares per feature kind, and every datatype accepted for it.
DECLARED_TYPES = {
    Kind.NUMBER: "FP64",
    Kind.INTEGER: "INT64",
    Kind.BOOLEAN: "BOOL",
    Kind.CATEGORY: "BYTES",
    Kind.TEXT: "BYTES",
}
_ACCEPTED_TYPES = {
    Kind.NUMBER: FLOAT_TYPES | INTEGER_TYPES,
    Kind.INTEGER: INTEGER_TYPES | FLOAT_TYPES,
    Kind.BOOLEAN: frozenset({"BOOL"}),
    Kind.CATEGORY: frozenset({"BYTES"}),
    Kind.TEXT: frozenset({"BYTES"}),
}

LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
OUTPUT_NAMES = (LABEL_OUTPUT, PROBABILITIES_OUTPUT)  # what a request naming no output gets
# Computed only when a request names it: an explanation costs many times a prediction.
CONTRIBUTIONS_OUTPUT = "contributions"
REQUESTABLE_OUTPUTS = (*OUTPUT_NAMES, CONTRIBUTIONS_OUTPUT)


# --- requests, responses, metadata --------------------------------------------------------------
@dataclass(frozen=True)
class InferenceRequest:
    spec: ModelSpec  # the model, resolved by the transport before it decoded the tensors
    inputs: list[Tensor]
    model_version: str = ""  # "" = the loaded version
    id: str = ""
    outputs: list[str] = field(default_factory=list)  # requested output names; none = all


@dataclass(frozen=True)
class InferenceResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size (the batch)


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    properties: dict[str, Any]


@dataclass(frozen=True)
class ServerMetadata:
    name: str = SERVER_NAME
    version: str = __version__
    extensions: tuple[str, ...] = EXTENSIONS


# --- the protocol ------------------------------------------------------------------------------
class OpenInference:
    """The protocol's operations over the data plane; REST and gRPC are thin transports. Made
    once per API worker (service.py)."""

    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self._max_rows = settings.max_instances
        self._max_text_chars = settings.max_text_chars

    @staticmethod
    def server_metadata() -> ServerMetadata:
        return ServerMetadata()

    async def server_ready(self) -> bool:
        return await self.plane.ready()

    async def model_ready(self, model_name: str, version: str = "") -> bool:
        """Raises ModelNotFound for an unknown model or version; False while still loading.
        A version is ready while it is loaded (an unloaded one is unknown at once)."""
        spec = self.plane.spec(model_name)
        if not await self.plane.ready():
            return False
        await self.plane.model_info(spec, version)
        return True

    async def model_metadata(self, model_name: str, version: str = "") -> ModelMetadata:
        spec = self.plane.spec(model_name)
        loaded = await self.plane.model_versions(spec)
        info = loaded.resolve(version)
        properties: dict[str, Any] = {
            "tag": info.tag,
            "title": spec.title,
            "class_names": list(spec.class_names),
            "aliases": dict(sorted(loaded.aliases.items())),
        }
        if spec.positive_class:
            properties["positive_class"] = spec.positive_class
        return ModelMetadata(
            name=spec.name,
            versions=list(loaded.versions),
            platform=spec.framework,
            inputs=[TensorMetadata(f.name, DECLARED_TYPES[f.kind], (-1,)) for f in spec.features],
            outputs=[
                TensorMetadata(LABEL_OUTPUT, "BYTES", (-1,)),
                TensorMetadata(PROBABILITIES_OUTPUT, "FP64", (-1, len(spec.class_names))),
                TensorMetadata(CONTRIBUTIONS_OUTPUT, "FP32", (-1, _contribution_columns(spec))),
            ],
            properties=properties,
        )

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        spec = request.spec
        version = request.model_version
        await self.plane.model_info(spec, version)  # an unknown version: 404 before decoding
        wanted = request.outputs or list(OUTPUT_NAMES)
        with refusals_counted(spec.name):
            _check_outputs(spec, request.outputs)
            columns = _feature_columns(spec, request.inputs, self._max_rows)
            # Explanations take rows (few, capped); predictions the model's array, built from
            # the columns directly.
            if CONTRIBUTIONS_OUTPUT in wanted:
                rows = _rows(spec, columns)
            else:
                features = _features(spec, columns, self._max_text_chars)
        answer: Predictions
        if CONTRIBUTIONS_OUTPUT in wanted:
            answer = explained = await self.plane.explain(spec, rows, version)
            outputs = {**_output_tensors(explained), **_contributions(explained)}
        else:
            answer = await self.plane.predict(spec, features, version)
            outputs = _output_tensors(answer)
        return InferenceResponse(
            model_name=spec.name,
            model_version=metrics.version_of(answer.tag),  # the version that answered
            id=request.id,
            outputs=[outputs[name] for name in wanted],
        )


def _check_outputs(spec: ModelSpec, requested: list[str]) -> None:
    for name in requested:
        if name not in REQUESTABLE_OUTPUTS:
            raise InvalidTensor(
                f"unknown output {name!r}; {spec.name} has outputs {', '.join(REQUESTABLE_OUTPUTS)}"
            )


@dataclass(frozen=True)
class FeatureColumns:
    """A request's input tensors as feature values: the batch size, and per feature sent its
    values (numeric tensors as they came, BYTES decoded into an object array of str)."""

    rows: int
    values: dict[str, np.ndarray]


def _feature_columns(spec: ModelSpec, tensors: list[Tensor], max_rows: int) -> FeatureColumns:
    """Input tensors -> feature columns; the tensors' names, shapes and datatypes checked."""
    by_name = _tensors_by_feature(spec, tensors)
    batch = _batch_size(by_name, max_rows)
    values = {
        feature.name: _column_values(feature, by_name[feature.name])
        for feature in spec.features
        if feature.name in by_name
    }
    return FeatureColumns(batch, values)


def _features(spec: ModelSpec, columns: FeatureColumns, max_text_chars: int) -> np.ndarray:
    """The columns checked vectorised (tabserve/columns.py) into the model's input array; a
    request failing a check goes the row path, whose schema names each bad value."""
    features = checked_array(spec, columns.values, columns.rows, max_text_chars)
    return from_rows(spec, _rows(spec, columns)) if features is None else features


def _rows(spec: ModelSpec, columns: FeatureColumns) -> list[Row]:
    """Feature columns -> rows in the spec's feature order, validated by the model's schema."""
    json_columns = {
        feature.name: _json_values(feature, columns.values[feature.name])
        for feature in spec.features
        if feature.name in columns.values
    }
    instances = [
        {name: column[row] for name, column in json_columns.items()} for row in range(columns.rows)
    ]
    return rows_from_body(spec.name, {"instances": instances}, locate=_tensor_issue)


def _tensors_by_feature(spec: ModelSpec, tensors: list[Tensor]) -> dict[str, Tensor]:
    by_name: dict[str, Tensor] = {}
    for tensor in tensors:
        if tensor.name in by_name:
            raise InvalidTensor(f"input {tensor.name!r} is given more than once")
        by_name[tensor.name] = tensor
    features = spec.feature_names
    unknown = [name for name in by_name if name not in features]
    if unknown:
        raise InvalidTensor(
            f"unknown input {unknown[0]!r}; the inputs of {spec.name} are {', '.join(features)}"
        )
    missing = [f.name for f in spec.features if f.required and f.name not in by_name]
    if missing:
        raise InvalidTensor(f"missing required input(s): {', '.join(missing)}")
    return by_name


def _batch_size(by_name: dict[str, Tensor], limit: int) -> int:
    """Every input is one value per row, shape [N] or [N, 1], with the same N."""
    sizes = {}
    for name, tensor in by_name.items():
        if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ((), (1,)):
            raise InvalidTensor(
                f"input {name!r} has shape {list(tensor.shape)}; expected [N] or [N, 1] "
                "(one value per row)"
            )
        sizes[name] = tensor.shape[0]
    if len(set(sizes.values())) > 1:
        described = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise InvalidTensor(f"inputs must have the same number of rows; got {described}")
    batch = next(iter(sizes.values()))
    if not 1 <= batch <= limit:
        raise InvalidTensor(f"batch size {batch} is outside 1..{limit} rows")
    return batch


def _column_values(feature: Feature, tensor: Tensor) -> np.ndarray:
    """A tensor's elements, its datatype checked against the feature's kind."""
    accepted = _ACCEPTED_TYPES[feature.kind]
    if tensor.datatype not in accepted:
        raise InvalidTensor(
            f"input {feature.name!r} has datatype {tensor.datatype}; a {feature.kind} feature "
            f"takes {DECLARED_TYPES[feature.kind]} (or {', '.join(sorted(accepted))})"
        )
    if tensor.datatype == "BYTES":
        texts = [_text(feature.name, row, value) for row, value in enumerate(tensor.data)]
        return np.array(texts, dtype=object)
    return tensor.data


def _json_values(feature: Feature, values: np.ndarray) -> list[Any]:
    """A column's elements as the JSON-like values the model's schema validates."""
    elements = values.tolist()
    if values.dtype.kind == "f":
        return [_from_float(feature, value) for value in elements]
    return elements


def _text(name: str, row: int, value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidTensor(f"input {name!r}[{row}] is not valid UTF-8") from None


def _from_float(feature: Feature, value: float) -> Any:
    """NaN marks a missing value of an optional feature; whole floats fill integer features.
    Anything else is left for the schema to judge (a NaN where a value is required, 2.5 years)."""
    if math.isnan(value) and not feature.required:
        return None
    if feature.kind is Kind.INTEGER and value.is_integer():
        return int(value)
    return value


def _tensor_issue(issue: Mapping[str, Any]) -> Mapping[str, Any]:
    """Name a schema problem by tensor and row: ('instances', 3, 'age') -> ('age', 3)."""
    location = issue["loc"]
    if len(location) >= 3 and location[0] == "instances":
        return {**issue, "loc": (location[2], location[1], *location[3:])}
    return issue


def _output_tensors(answer: Predictions) -> dict[str, Tensor]:
    labels = np.array([label.encode() for label in answer.labels], dtype=object)
    rows = len(labels)
    probabilities = np.asarray(answer.probabilities, dtype=NUMPY_TYPES["FP64"])
    return {
        LABEL_OUTPUT: Tensor(LABEL_OUTPUT, "BYTES", (rows,), labels),
        PROBABILITIES_OUTPUT: Tensor(
            PROBABILITIES_OUTPUT, "FP64", probabilities.shape, probabilities.ravel()
        ),
    }


def _contribution_columns(spec: ModelSpec) -> int:
    """Columns of the `contributions` output: a binary model explains one class (the second,
    whose margin its booster or decision function gives), a multi-class model every class."""
    explained = 1 if len(spec.class_names) == 2 else len(spec.class_names)
    return explained * (len(spec.features) + 1)


def _contributions(answer: Explained) -> dict[str, Tensor]:
    # (rows, outputs, features + 1) -> (rows, outputs x (features + 1)): class by class.
    values = answer.contributions.reshape(len(answer.contributions), -1)
    return {
        CONTRIBUTIONS_OUTPUT: Tensor(CONTRIBUTIONS_OUTPUT, "FP32", values.shape, values.ravel())
    }
