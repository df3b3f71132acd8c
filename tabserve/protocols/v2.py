"""The Open Inference Protocol (KServe V2) over REST: a thin transport over `oip.OpenInference`.

GET  /v2                                      server metadata
GET  /v2/health/live, /v2/health/ready        server liveness, readiness (200 or 503)
GET  /v2/models/{name}[/versions/{v}]         model metadata
GET  /v2/models/{name}[/versions/{v}]/ready   model readiness (200; 404 unknown; 503 loading)
POST /v2/models/{name}[/versions/{v}]/infer   inference

Errors use the protocol's body, `{"error": "<message>"}`, with the status of tabserve's error
table (400 bad tensor, 404 unknown model or version, 413, 415, 422 bad feature value, 503).
Inference bodies may use the binary tensor data extension (what tritonclient sends by default):
the JSON header is followed by the raw tensors, `Inference-Header-Content-Length` gives the
header's size and each binary input says its size in `parameters.binary_data_size`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tabserve.errors import ModelUnavailable, clip, field_path
from tabserve.instances import parse_json, refusals_counted
from tabserve.protocols.http import (
    BINARY_MEDIA_TYPE,
    decimal,
    error_route,
    open_inference,
    read_json_body,
)
from tabserve.protocols.oip import OUTPUT_NAMES, InferenceRequest, InferenceResponse, OpenInference
from tabserve.protocols.tensors import InvalidTensor, Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"


router = APIRouter(
    prefix="/v2",
    tags=["Open Inference Protocol (V2 REST)"],
    route_class=error_route(lambda error: {"error": error.one_line()}),
)
OpenInferenceDep = Annotated[OpenInference, Depends(open_inference)]


# --- the request body's JSON header (the protocol's $inference_request) ----------------------
class _StrictMessage(BaseModel):
    # Strict types (a shape of ["2"] is an error, not 2); unknown keys are ignored as the
    # protocol allows extensions to add them.
    model_config = ConfigDict(strict=True)


# Only the first problem is reported (_parse_header): lists stop at their first bad item, so
# 30,000 empty inputs cost one error, not 90,000.
FIRST_ERROR = Field(fail_fast=True)


class RequestInput(_StrictMessage):
    name: str
    shape: Annotated[list[int], FIRST_ERROR]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(_StrictMessage):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequestBody(_StrictMessage):
    id: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: Annotated[list[RequestInput], FIRST_ERROR]
    outputs: Annotated[list[RequestOutput], FIRST_ERROR] = Field(default_factory=list)


# --- routes --------------------------------------------------------------------------------------
@router.get("", summary="Server metadata")
async def server_metadata(protocol: OpenInferenceDep) -> dict[str, Any]:
    metadata = protocol.server_metadata()
    return {
        "name": metadata.name,
        "version": metadata.version,
        "extensions": list(metadata.extensions),
    }


@router.get("/health/live", summary="Server liveness")
async def server_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness")
async def server_ready(protocol: OpenInferenceDep) -> dict[str, bool]:
    if not await protocol.server_ready():
        raise ModelUnavailable("the models are not ready: loading, or the runner is not answering")
    return {"ready": True}


@router.get("/models/{model_name}", summary="Model metadata")
@router.get("/models/{model_name}/versions/{version}", summary="Model metadata (one version)")
async def model_metadata(
    protocol: OpenInferenceDep, model_name: str, version: str = ""
) -> dict[str, Any]:
    metadata = await protocol.model_metadata(model_name, version)
    return {
        "name": metadata.name,
        "versions": metadata.versions,
        "platform": metadata.platform,
        "inputs": [vars(tensor) for tensor in metadata.inputs],
        "outputs": [vars(tensor) for tensor in metadata.outputs],
        "parameters": metadata.properties,
    }


@router.get("/models/{model_name}/ready", summary="Model readiness")
@router.get("/models/{model_name}/versions/{version}/ready", summary="Model readiness (version)")
async def model_ready(
    protocol: OpenInferenceDep, model_name: str, version: str = ""
) -> dict[str, Any]:
    if not await protocol.model_ready(model_name, version):
        raise ModelUnavailable(
            f"model {model_name!r} is not ready: loading, or the runner is not answering"
        )
    return {"name": model_name, "ready": True}


@router.post("/models/{model_name}/infer", summary="Inference")
@router.post("/models/{model_name}/versions/{version}/infer", summary="Inference (version)")
async def infer(
    request: Request, protocol: OpenInferenceDep, model_name: str, version: str = ""
) -> Response:
    spec = protocol.plane.spec(model_name)  # an unknown model is a 404 before the body is read
    header_length = request.headers.get(HEADER_LENGTH)
    body = await read_json_body(request, binary_allowed=header_length is not None)
    with refusals_counted(spec.name):
        header, binary = _split_body(body, header_length)
        parsed = _parse_header(header)
        inputs = _input_tensors(parsed.inputs, binary)
    answer = await protocol.infer(
        InferenceRequest(
            spec=spec,
            model_version=version,
            id=parsed.id,
            inputs=inputs,
            outputs=[output.name for output in parsed.outputs],
        )
    )
    return _response(answer, _binary_outputs(parsed))


# --- body encoding -------------------------------------------------------------------------------
def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (empty without the extension)."""
    if header_length is None:
        return body, b""
    size = decimal(header_length)
    if size is None or size > len(body):
        raise InvalidTensor.at(
            HEADER_LENGTH,
            f"must be the size in bytes of the JSON header at the start of the {len(body)}-byte "
            f"body, not {clip(header_length, 40)!r}",
        )
    return body[:size], body[size:]


def _parse_header(header: bytes) -> InferenceRequestBody:
    try:
        return InferenceRequestBody.model_validate(parse_json(header))
    except ValidationError as error:
        issue = error.errors(include_url=False)[0]
        raise InvalidTensor.at(field_path(issue["loc"]), issue["msg"]) from None


def _input_tensors(inputs: list[RequestInput], binary: bytes) -> list[Tensor]:
    tensors = []
    offset = 0
    for item in inputs:
        size = item.parameters.get(BINARY_SIZE)
        if size is None:
            if item.data is None:
                raise InvalidTensor(f"input {item.name!r} has neither data nor {BINARY_SIZE}")
            values = _flatten(item.data)
            tensors.append(Tensor.from_values(item.name, item.datatype, item.shape, values))
            continue
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise InvalidTensor(
                f"input {item.name!r}: {BINARY_SIZE} {size!r} does not fit the "
                f"{len(binary) - offset} bytes of binary data left in the body"
            )
        raw = binary[offset : offset + size]
        offset += size
        tensors.append(Tensor.from_raw(item.name, item.datatype, item.shape, raw))
    if offset != len(binary):
        raise InvalidTensor(f"{len(binary) - offset} bytes of binary data belong to no input")
    return tensors


def _flatten(data: list[Any]) -> list[Any]:
    """The protocol allows `data` flat or nested row-major ([[1, 2], [3, 4]]): flatten it."""
    flat: list[Any] = []
    pending = [iter(data)]
    while pending:
        for value in pending[-1]:
            if isinstance(value, list):
                pending.append(iter(value))
                break
            flat.append(value)
        else:
            pending.pop()
    return flat


def _binary_outputs(body: InferenceRequestBody) -> set[str]:
    """Outputs to send as binary data: per output `binary_data`, else the request-wide
    `binary_data_output` (tritonclient sets one of them unless told otherwise)."""
    default = body.parameters.get("binary_data_output") is True
    if not body.outputs:
        return set(OUTPUT_NAMES) if default else set()
    return {
        output.name
        for output in body.outputs
        if output.parameters.get("binary_data", default) is True
    }


def _response(answer: InferenceResponse, binary_outputs: set[str]) -> Response:
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in answer.outputs:
        described: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if tensor.name in binary_outputs:
            blob = tensor.to_raw()
            described["parameters"] = {BINARY_SIZE: len(blob)}
            blobs.append(blob)
        else:
            described["data"] = tensor.to_json_values()
        outputs.append(described)
    header: dict[str, Any] = {
        "model_name": answer.model_name,
        "model_version": answer.model_version,
        "outputs": outputs,
    }
    if answer.id:
        header["id"] = answer.id
    if not blobs:
        return JSONResponse(header)
    encoded = JSONResponse(header).body
    return Response(
        bytes(encoded) + b"".join(blobs),
        media_type=BINARY_MEDIA_TYPE,
        headers={HEADER_LENGTH: str(len(encoded))},
    )
