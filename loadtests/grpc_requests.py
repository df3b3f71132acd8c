"""Open Inference Protocol gRPC request messages, shared by the locust gRPC user
(grpc_user.py, with tabserve's stubs) and the soak test (loadtests/soak, with tritonclient's).

Both stub modules define the protobuf package `inference` with the same messages, and one
process's descriptor pool cannot hold both (docs/protocols.md): the caller passes the generated
module it uses. No locust, no gevent, so asyncio clients can import this too.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

CONTENTS_FIELD = {"INT64": "int64_contents", "BOOL": "bool_contents", "FP64": "fp64_contents"}


def infer_request(pb: ModuleType, model: str, inputs: list[tuple[str, str, list[Any]]]) -> Any:
    """A `pb.ModelInferRequest` of (feature, datatype, one value per row) inputs, e.g. what
    payloads.oip_inputs gives: every input of shape [rows]."""
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, values in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[len(values)])
        if datatype == "BYTES":
            tensor.contents.bytes_contents.extend(value.encode() for value in values)
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(values)
    return request
