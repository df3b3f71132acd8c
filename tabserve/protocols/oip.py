"""The Open Inference Protocol (KServe V2) translation layer, shared by REST and gRPC.

Both transports turn their wire format into the neutral objects here (`Tensor`,
`InferenceRequest`) and call `OpenInference`; it maps tensors to the model's rows, validates the
feature values with the model's own pydantic schema, calls the data plane and maps the answer
back to tensors. No transport touches a model, a schema or the data plane by itself.

How a model's features map to tensors (docs/protocols.md has the full table):
* one input tensor per feature, named after it, shape [N] or [N, 1] (one value per row);
* datatype by the feature's kind: number FP64, integer INT64, boolean BOOL, category and text
  BYTES (UTF-8). Numbers also accept any other integer or float type; integers also accept float
  types holding whole numbers;
* an optional feature may be left out (missing in every row), or, in a float tensor, be NaN in
  the rows where it is missing; the model's pipeline imputes it;
* outputs: `label` BYTES [N] (the most probable class) and `probabilities` FP64 [N, classes],
  columns in the order of the `class_names` model property.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np

from tabserve import __version__, metrics
from tabserve.catalog import ModelSpec
from tabserve.dataplane import DataPlane, Scores
from tabserve.errors import ModelNotFound, ServingError
from tabserve.features import Feature, Kind
from tabserve.instances import validated_rows
from tabserve.schemas import Row
from tabserve.settings import get_settings

SERVER_NAME = "tabserve"
# The HTTP binary tensor data extension (Triton's name for it): tritonclient's default encoding.
EXTENSIONS = ("binary_tensor_data",)

# Little-endian, as the protocol's raw contents are.
NUMPY_TYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
INTEGER_TYPES = frozenset(name for name in NUMPY_TYPES if name.startswith(("INT", "UINT")))
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})

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
OUTPUT_NAMES = (LABEL_OUTPUT, PROBABILITIES_OUTPUT)
_BYTES_LENGTH = struct.Struct("<I")


class InvalidTensor(ServingError):
    """A tensor that breaks the protocol or the model's tensor layout (name, shape, datatype,
    element count); feature values themselves are judged by the model's schema (InvalidInput)."""

    status = HTTPStatus.BAD_REQUEST


def error_text(error: ServingError) -> str:
    """The one-line message of the protocol's error body, naming every problem listed."""
    if not error.details:
        return error.message
    text = "; ".join(f"{detail.field}: {detail.reason}" for detail in error.details)
    return f"{text}; and {error.omitted} more" if error.omitted else text


# --- tensors ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tensor:
    """A named tensor: `data` holds its elements flattened in row-major order (BYTES elements as
    `bytes` in an object array)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray

    @classmethod
    def from_values(
        cls, name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]
    ) -> Tensor:
        """From typed values (JSON `data`, gRPC `contents`): each must be of the datatype's kind
        (no float silently truncated into an INT64, no string read as a number)."""
        dtype = numpy_type(name, datatype)
        expected = _element_count(name, shape)
        if len(values) != expected:
            raise InvalidTensor(
                f"input {name!r}: shape {list(shape)} needs {expected} elements, got {len(values)}"
            )
        values = list(values)  # read only now that their number is known to be bounded
        if datatype == "BYTES":
            elements = [_as_bytes(name, value) for value in values]
            return cls(name, datatype, tuple(shape), np.array(elements, dtype=object))
        allowed = _PYTHON_TYPES[datatype[:2]]
        for value in values:
            if type(value) not in allowed:
                raise InvalidTensor(f"input {name!r}: {value!r} is not a {datatype} value")
        try:
            data = np.array(values, dtype=dtype)
        except OverflowError:
            raise InvalidTensor(f"input {name!r}: a value is out of range for {datatype}") from None
        return cls(name, datatype, tuple(shape), data)

    @classmethod
    def from_raw(cls, name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Tensor:
        """From raw little-endian bytes (gRPC raw_input_contents, HTTP binary tensor data)."""
        dtype = numpy_type(name, datatype)
        expected = _element_count(name, shape)
        if datatype == "BYTES":
            data = np.array(_split_bytes(name, raw, expected), dtype=object)
        elif len(raw) % dtype.itemsize:
            raise InvalidTensor(
                f"input {name!r}: {len(raw)} raw bytes are not a whole number of "
                f"{datatype} elements ({dtype.itemsize} bytes each)"
            )
        else:
            data = np.frombuffer(raw, dtype=dtype)
        if len(data) != expected:
            got = "more" if len(data) > expected else len(data)  # BYTES: split no further
            raise InvalidTensor(
                f"input {name!r}: shape {list(shape)} needs {expected} elements, got {got}"
            )
        return cls(name, datatype, tuple(shape), data)

    def to_raw(self) -> bytes:
        if self.datatype == "BYTES":
            return b"".join(_BYTES_LENGTH.pack(len(value)) + value for value in self.data)
        return np.ascontiguousarray(self.data, dtype=NUMPY_TYPES[self.datatype]).tobytes()

    def to_json_values(self) -> list[Any]:
        """Flat JSON-ready elements; BYTES as text (our outputs are always UTF-8)."""
        if self.datatype == "BYTES":
            return [value.decode() for value in self.data]
        return self.data.tolist()


# Python types a typed value may have, per datatype family ("BO"OL, "IN"T, "UI"NT, "FP").
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "BO": (bool,),
    "IN": (int,),
    "UI": (int,),
    "FP": (float, int),
}


def numpy_type(name: str, datatype: str) -> np.dtype:
    try:
        return NUMPY_TYPES[datatype]
    except KeyError:
        raise InvalidTensor(
            f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(NUMPY_TYPES)}"
        ) from None


def _element_count(name: str, shape: Sequence[int]) -> int:
    """Elements the shape declares, refused before any element is read when a valid request
    could not have them (one value per row, at most max_instances rows): a gRPC message or a
    raw BYTES tensor of millions of tiny elements would otherwise cost seconds and hundreds of
    MB to unpack before the batch size check."""
    if any(dimension < 0 for dimension in shape):
        raise InvalidTensor(f"input {name!r}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    limit = get_settings().max_instances
    if count > limit:
        if shape[0] > limit:
            raise InvalidTensor(f"input {name!r}: batch size {shape[0]} is outside 1..{limit} rows")
        raise InvalidTensor(
            f"input {name!r} has shape {list(shape)}; expected [N] or [N, 1] (one value per row)"
        )
    return count


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    raise InvalidTensor(f"input {name!r}: {value!r} is not a BYTES value (a string)")


def _split_bytes(name: str, raw: bytes, expected: int) -> list[bytes]:
    """Raw BYTES: each element is a 4-byte little-endian length, then that many bytes. Stops
    one element past `expected` (the caller refuses the count): the data is never split further."""
    elements = []
    offset = 0
    while offset < len(raw) and len(elements) <= expected:
        if offset + _BYTES_LENGTH.size > len(raw):
            raise InvalidTensor(f"input {name!r}: raw BYTES data ends inside a length prefix")
        (length,) = _BYTES_LENGTH.unpack_from(raw, offset)
        offset += _BYTES_LENGTH.size
        if offset + length > len(raw):
            raise InvalidTensor(f"input {name!r}: raw BYTES element runs past the end of the data")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


# --- requests, responses, metadata --------------------------------------------------------------
@dataclass(frozen=True)
class InferenceRequest:
    model_name: str
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
    """The protocol's operations over the data plane; REST and gRPC are thin transports."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @staticmethod
    def server_metadata() -> ServerMetadata:
        return ServerMetadata()

    async def server_ready(self) -> bool:
        return await self.plane.ready()

    async def model_ready(self, model_name: str, version: str = "") -> bool:
        """Raises ModelNotFound for an unknown model or version; False while still loading."""
        self.plane.spec(model_name)
        if not await self.plane.ready():
            return False
        await self._loaded_version(model_name, version)
        return True

    async def model_metadata(self, model_name: str, version: str = "") -> ModelMetadata:
        spec = self.plane.spec(model_name)
        loaded = await self._loaded_version(model_name, version)
        info = await self.plane.model_info(model_name)
        properties: dict[str, Any] = {
            "tag": info.tag,
            "title": spec.title,
            "class_names": list(spec.class_names),
        }
        if spec.positive_class:
            properties["positive_class"] = spec.positive_class
        return ModelMetadata(
            name=spec.name,
            versions=[loaded],
            platform=spec.framework,
            inputs=[TensorMetadata(f.name, DECLARED_TYPES[f.kind], (-1,)) for f in spec.features],
            outputs=[
                TensorMetadata(LABEL_OUTPUT, "BYTES", (-1,)),
                TensorMetadata(PROBABILITIES_OUTPUT, "FP64", (-1, len(spec.class_names))),
            ],
            properties=properties,
        )

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        spec = self.plane.spec(request.model_name)
        version = await self._loaded_version(spec.name, request.model_version)
        try:
            _check_outputs(spec, request.outputs)
            rows = _rows(spec, request.inputs)
        except InvalidTensor:
            metrics.record_rejection(spec.name, InvalidTensor.__name__)
            raise
        answer = await self.plane.predict_rows(spec.name, rows)
        outputs = _output_tensors(answer)
        wanted = request.outputs or list(OUTPUT_NAMES)
        return InferenceResponse(
            model_name=spec.name,
            model_version=version,
            id=request.id,
            outputs=[outputs[name] for name in wanted],
        )

    async def _loaded_version(self, model_name: str, version: str) -> str:
        """The loaded model's version; ModelNotFound when another version is asked for."""
        loaded = metrics.version_of((await self.plane.model_info(model_name)).tag)
        if version and version != loaded:
            raise ModelNotFound(
                f"model {model_name!r} has no version {version!r}; the loaded version is {loaded}"
            )
        return loaded


def _check_outputs(spec: ModelSpec, requested: list[str]) -> None:
    for name in requested:
        if name not in OUTPUT_NAMES:
            raise InvalidTensor(
                f"unknown output {name!r}; {spec.name} has outputs {', '.join(OUTPUT_NAMES)}"
            )


def _rows(spec: ModelSpec, tensors: list[Tensor]) -> list[Row]:
    """Input tensors -> rows in the spec's feature order, validated by the model's schema."""
    by_name = _tensors_by_feature(spec, tensors)
    batch = _batch_size(by_name)
    columns = {
        feature.name: _column(feature, by_name[feature.name])
        for feature in spec.features
        if feature.name in by_name
    }
    instances = [{name: column[row] for name, column in columns.items()} for row in range(batch)]
    return validated_rows(spec.name, {"instances": instances}, locate=_tensor_issue)


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


def _batch_size(by_name: dict[str, Tensor]) -> int:
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
    limit = get_settings().max_instances
    if not 1 <= batch <= limit:
        raise InvalidTensor(f"batch size {batch} is outside 1..{limit} rows")
    return batch


def _column(feature: Feature, tensor: Tensor) -> list[Any]:
    """A tensor's elements as the JSON-like values the model's schema validates."""
    accepted = _ACCEPTED_TYPES[feature.kind]
    if tensor.datatype not in accepted:
        raise InvalidTensor(
            f"input {feature.name!r} has datatype {tensor.datatype}; a {feature.kind} feature "
            f"takes {DECLARED_TYPES[feature.kind]} (or {', '.join(sorted(accepted))})"
        )
    if tensor.datatype == "BYTES":
        return [_text(feature.name, row, value) for row, value in enumerate(tensor.data)]
    values = tensor.data.tolist()
    if tensor.datatype in FLOAT_TYPES:
        return [_from_float(feature, value) for value in values]
    return values


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


def _tensor_issue(issue: dict[str, Any]) -> dict[str, Any]:
    """Name a schema problem by tensor and row: ('instances', 3, 'age') -> ('age', 3)."""
    location = issue["loc"]
    if len(location) >= 3 and location[0] == "instances":
        return {**issue, "loc": (location[2], location[1], *location[3:])}
    return issue


def _output_tensors(answer: Scores) -> dict[str, Tensor]:
    labels = np.array([label.encode() for label in answer.labels], dtype=object)
    rows = len(labels)
    probabilities = np.asarray(answer.probabilities, dtype=NUMPY_TYPES["FP64"])
    return {
        LABEL_OUTPUT: Tensor(LABEL_OUTPUT, "BYTES", (rows,), labels),
        PROBABILITIES_OUTPUT: Tensor(
            PROBABILITIES_OUTPUT, "FP64", probabilities.shape, probabilities.ravel()
        ),
    }
