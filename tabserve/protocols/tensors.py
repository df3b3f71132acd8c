"""Open Inference Protocol tensors: decoded from the wire (typed values, raw little-endian bytes)
and encoded back, checked against the protocol's own rules (datatype, shape, element count).

Nothing here knows a model: which tensors a model takes, and what their values mean, is
tabserve.protocols.oip's business.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np

from tabserve.errors import ServingError
from tabserve.settings import get_settings

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

_BYTES_LENGTH = struct.Struct("<I")


class InvalidTensor(ServingError):
    """A tensor that breaks the protocol or the model's tensor layout (name, shape, datatype,
    element count); feature values themselves are judged by the model's schema (InvalidInput)."""

    status = HTTPStatus.BAD_REQUEST


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
