"""The errors a caller can cause, each with its HTTP status, in one table.

The data plane raises these; every protocol (REST now, others later) maps them to its own error
shape in one place. Anything else that escapes is a bug: logged, and answered 500 without details.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from tabserve.schemas import ErrorDetail, ErrorResponse


class ServingError(Exception):
    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    headers: ClassVar[Mapping[str, str]] = {}  # extra HTTP response headers

    def __init__(self, message: str, details: Sequence[ErrorDetail] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(error=self.message, details=self.details)


class MalformedRequest(ServingError):
    """The body is not JSON at all."""

    status = HTTPStatus.BAD_REQUEST


class ModelNotFound(ServingError):
    status = HTTPStatus.NOT_FOUND


class PayloadTooLarge(ServingError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(ServingError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class InvalidInput(ServingError):
    """Well-formed JSON that does not fit the model's schema."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY

    @classmethod
    def from_issues(cls, issues: Sequence[Mapping[str, Any]]) -> InvalidInput:
        """From pydantic's error list (`ValidationError.errors()`, FastAPI's `.errors()`)."""
        details = [
            ErrorDetail(field=field_path(issue["loc"]), reason=_reason(issue)) for issue in issues
        ]
        first = details[0]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        return cls(f"{first.field}: {first.reason}{more}", details)


class ModelUnavailable(ServingError):
    """The runner cannot take the request now (overloaded, loading, not answering): retry."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": "1"}


def field_path(location: Sequence[Any]) -> str:
    """('instances', 0, 'age') -> 'instances[0].age'; an empty location is the whole body."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


def _reason(issue: Mapping[str, Any]) -> str:
    if issue["type"] == "missing":
        return "required field is missing"
    if issue["type"] == "extra_forbidden":
        inside_instance = len(issue["loc"]) == 3 and issue["loc"][0] == "instances"
        return "not a feature of this model" if inside_instance else "unknown field"
    return issue["msg"]
