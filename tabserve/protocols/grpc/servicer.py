"""`inference.GRPCInferenceService`: protobuf messages in and out of `oip.OpenInference`.

Nothing here decides anything about models or tensors; it only moves fields between protobuf
messages and the shared translation layer, and maps tabserve's errors to gRPC status codes.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

import grpc

from tabserve import request_context
from tabserve.errors import ServingError, clip
from tabserve.instances import refusals_counted
from tabserve.protocols.grpc import inference_pb2 as pb
from tabserve.protocols.grpc import inference_pb2_grpc
from tabserve.protocols.oip import InferenceRequest, ModelMetadata, OpenInference
from tabserve.protocols.tensors import InvalidTensor, Tensor, numpy_type

logger = logging.getLogger(__name__)

# '%' is the one printable character sent as three bytes (%25): 2000 characters stay < 6 KiB.
GRPC_MESSAGE_CHARS = 2000

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

STATUS_CODES = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNPROCESSABLE_ENTITY: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}

# The InferTensorContents field that carries each datatype (FP16 travels only as raw bytes).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def _answering_errors(method: Method) -> Method:
    """A ServingError becomes its gRPC status with the message; anything else is a bug: logged,
    and answered INTERNAL without details, as the HTTP app does."""

    @functools.wraps(method)
    async def answer(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except ServingError as error:
            code = STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)
            message = _status_message(error)
        except Exception:
            logger.exception("unhandled error in gRPC %s", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        return refuse(context, code, message)

    return answer


def refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """End the call with an error status. Not `context.abort`: its AbortError holds every frame
    of the call in a reference cycle, the request message with them, until the next full garbage
    collection: 16 refused 8 MiB messages kept a worker at +1.5 GB."""
    context.set_code(code)
    context.set_details(message)


def _status_message(error: ServingError) -> str:
    """The error's text as `grpc-message`: a header, percent-encoded outside printable ASCII,
    that gRPC refuses past 8 KiB of metadata (the client then sees RESOURCE_EXHAUSTED, not the
    error). ASCII escapes and the cap keep it under 6 KiB whatever the caller sent."""
    text = error.one_line().encode("ascii", "backslashreplace").decode()
    return clip(text, GRPC_MESSAGE_CHARS)


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, protocol: OpenInference, max_inputs: int) -> None:
        self.protocol = protocol
        self._max_inputs = max_inputs  # Settings.max_keys_per_instance

    @_answering_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    @_answering_errors
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=await self.protocol.server_ready())

    @_answering_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        ready = await self.protocol.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @_answering_errors
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        metadata = self.protocol.server_metadata()
        return pb.ServerMetadataResponse(
            name=metadata.name, version=metadata.version, extensions=metadata.extensions
        )

    @_answering_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        return _metadata_message(await self.protocol.model_metadata(request.name, request.version))

    @_answering_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        request_context.begin("grpc", _metadata(context, request_context.REQUEST_ID_HEADER))
        spec = self.protocol.plane.spec(request.model_name)
        with refusals_counted(spec.name):
            inputs = _input_tensors(request, self._max_inputs)
        answer = await self.protocol.infer(
            InferenceRequest(
                spec=spec,
                model_version=request.model_version,
                id=request.id,
                inputs=inputs,
                outputs=[output.name for output in request.outputs],
            )
        )
        # Always raw contents: tritonclient reads outputs only from raw_output_contents.
        response = pb.ModelInferResponse(
            model_name=answer.model_name, model_version=answer.model_version, id=answer.id
        )
        for tensor in answer.outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(tensor.to_raw())
        return response


def _metadata(context: Any, key: str) -> str | None:
    """A call's metadata value (gRPC lower-cases the keys)."""
    return next((value for name, value in context.invocation_metadata() or () if name == key), None)


def _metadata_message(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(items: list) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=item.name, datatype=item.datatype, shape=item.shape
            )
            for item in items
        ]

    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=metadata.versions,
        platform=metadata.platform,
        inputs=tensors(metadata.inputs),
        outputs=tensors(metadata.outputs),
        # The protocol's properties are strings: lists go as JSON.
        properties={
            key: value if isinstance(value, str) else json.dumps(value)
            for key, value in metadata.properties.items()
        },
    )


def _input_tensors(request: pb.ModelInferRequest, limit: int) -> list[Tensor]:
    raw = request.raw_input_contents
    if len(request.inputs) > limit:  # counted before one input is looked at
        raise InvalidTensor(
            f"{len(request.inputs)} inputs; a request takes at most {limit} (one per feature)"
        )
    if raw and len(raw) != len(request.inputs):
        raise InvalidTensor(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in the order of `inputs`"
        )
    tensors = []
    for index, item in enumerate(request.inputs):
        if raw:
            if item.HasField("contents"):
                raise InvalidTensor(
                    f"input {item.name!r} has contents while raw_input_contents is used"
                )
            tensors.append(Tensor.from_raw(item.name, item.datatype, item.shape, raw[index]))
        else:
            tensors.append(
                Tensor.from_values(item.name, item.datatype, item.shape, _contents(item))
            )
    return tensors


def _contents(item: pb.ModelInferRequest.InferInputTensor) -> Sequence[Any]:
    numpy_type(item.name, item.datatype)  # an unknown datatype is named as such
    field = CONTENTS_FIELDS.get(item.datatype)
    if field is None:
        raise InvalidTensor(f"input {item.name!r}: {item.datatype} must be sent as raw contents")
    # The repeated field as protobuf holds it: Tensor.from_values checks its length (O(1))
    # against the shape before a single element becomes a Python object.
    return getattr(item.contents, field)
