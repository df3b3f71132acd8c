"""The errors a caller can cause, each with its HTTP status, in one table.

Validation and the data plane raise these; every protocol (V1 and V2 REST, TabPy, gRPC) renders
them in its own error shape, from one mapping per wire format. Anything else that escapes is a
bug: logged, and answered 500 without details.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, Self, get_args

from pydantic import ValidationError
from pydantic_core import core_schema

from tabserve.schemas import ErrorDetail, ErrorResponse
from tabserve.settings import get_settings

# Error texts may quote what the caller sent (an unknown key, a header): clipped, so the answer
# stays small whatever was sent.
MESSAGE_CHARS = 500
FIELD_CHARS = 100
REASON_CHARS = 300

_PYDANTIC_ERROR_TYPES = frozenset(get_args(core_schema.ErrorType))
# Renames a pydantic problem's location (see InvalidInput.from_issues).
Locate = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class ServingError(Exception):
    """Every error answer is built here: at most `max_error_details` details, each clipped, and
    the count of the ones left out, so its size is bounded whatever the request held."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    headers: ClassVar[Mapping[str, str]] = {}  # extra HTTP response headers
    # The `reason` label of a refused prediction request (tabserve_rejected_inputs_total):
    # this, else the class name; InvalidInput.from_issues sets pydantic's error type.
    counted_as: ClassVar[str | None] = None

    def __init__(self, message: str, details: Sequence[ErrorDetail] = (), omitted: int = 0) -> None:
        super().__init__(message)
        self.reason_label = self.counted_as or type(self).__name__
        shown = get_settings().max_error_details
        self.message = clip(message, MESSAGE_CHARS)
        self.details = [
            ErrorDetail(
                field=clip(detail.field, FIELD_CHARS), reason=clip(detail.reason, REASON_CHARS)
            )
            for detail in details[:shown]
        ]
        self.omitted = omitted + max(0, len(details) - shown)

    @classmethod
    def listing(cls, details: Sequence[ErrorDetail], total: int | None = None) -> Self:
        """`<field>: <reason> (and N more)` with the details; `total` counts the problems when
        only the first ones were made into details."""
        total = len(details) if total is None else total
        first = details[0]
        more = f" (and {total - 1} more)" if total > 1 else ""
        return cls(f"{first.field}: {first.reason}{more}", details, total - len(details))

    @classmethod
    def at(cls, field: str, reason: str) -> Self:
        """One problem, as `<field>: <reason>`."""
        return cls.listing([ErrorDetail(field=field, reason=reason)])

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(
            error=self.message, details=self.details, details_omitted=self.omitted or None
        )

    def one_line(self) -> str:
        """The message naming every problem listed, for bodies without a details list (Open
        Inference REST, gRPC status messages)."""
        if not self.details:
            return self.message
        text = "; ".join(f"{detail.field}: {detail.reason}" for detail in self.details)
        return f"{text}; and {self.omitted} more" if self.omitted else text


class MalformedRequest(ServingError):
    """The body is not JSON at all."""

    status = HTTPStatus.BAD_REQUEST
    counted_as = "json_invalid"  # pydantic's name for it, the reason dashboards already show


class ModelNotFound(ServingError):
    status = HTTPStatus.NOT_FOUND


class PayloadTooLarge(ServingError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UriTooLong(ServingError):
    status = HTTPStatus.REQUEST_URI_TOO_LONG


class UnsupportedMediaType(ServingError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class InvalidInput(ServingError):
    """Well-formed JSON that does not fit the model's schema."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY

    @classmethod
    def from_issues(
        cls, issues: Sequence[Mapping[str, Any]], locate: Locate | None = None
    ) -> InvalidInput:
        """From pydantic's error list (`ValidationError.errors()`, FastAPI's `.errors()`); only
        the details shown are built. `locate` renames a problem's location for protocols that
        do not speak in instances."""
        shown = issues[: get_settings().max_error_details]
        details = [
            ErrorDetail(field=field_path(located["loc"]), reason=_reason(located))
            for located in (map(locate, shown) if locate else shown)
        ]
        error = cls.listing(details, len(issues))
        error.reason_label = _pydantic_type(issues)
        return error

    @classmethod
    def from_validation(cls, error: ValidationError, locate: Locate | None = None) -> InvalidInput:
        return cls.from_issues(error.errors(include_url=False), locate)


class ModelUnavailable(ServingError):
    """The runner cannot take the request now (overloaded, loading, not answering): retry."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": "1"}


class RepositoryConflict(ServingError):
    """A repository call that the models' present state forbids (unloading an aliased version,
    removing `champion`, a pod running several model processes)."""

    status = HTTPStatus.CONFLICT


class RepositoryLocked(ServingError):
    """A repository call on a service without an API token: changing what a service serves
    needs to know who asks."""

    status = HTTPStatus.FORBIDDEN


def repository_refusal(status: int, message: str) -> ServingError:
    """The error for a refusal the process holding the models answered (loaded_models.py)."""
    kinds: dict[int, type[ServingError]] = {
        HTTPStatus.NOT_FOUND: ModelNotFound,
        HTTPStatus.CONFLICT: RepositoryConflict,
        HTTPStatus.UNPROCESSABLE_ENTITY: InvalidInput,
    }
    return kinds.get(status, RepositoryConflict)(message)


def field_path(location: Sequence[Any]) -> str:
    """('instances', 0, 'age') -> 'instances[0].age'; an empty location is the whole body."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


def _pydantic_type(issues: Sequence[Mapping[str, Any]]) -> str:
    """The pydantic error type of the first problem, e.g. 'missing' or 'less_than_equal': a
    label value from pydantic's fixed list."""
    kind = issues[0]["type"] if issues else "other"
    return kind if kind in _PYDANTIC_ERROR_TYPES else "other"


def _reason(issue: Mapping[str, Any]) -> str:
    if issue["type"] == "missing":
        return "required field is missing"
    if issue["type"] == "extra_forbidden":
        inside_instance = len(issue["loc"]) == 3 and issue["loc"][0] == "instances"
        return "not a feature of this model" if inside_instance else "unknown field"
    return issue["msg"]
