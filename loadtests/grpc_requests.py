"""Open Inference Protocol gRPC request messages, shared by the locust gRPC user
(grpc_user.py) and the soak test (loadtests/soak). Needs the tabserve package for the stubs;
no locust, no gevent, so asyncio clients can import it too.
"""

from __future__ import annotations

from typing import Any

from tabserve.protocols.grpc import inference_pb2 as pb

CONTENTS_FIELD = {"INT64": "int64_contents", "BOOL": "bool_contents", "FP64": "fp64_contents"}


def infer_request(model: str, inputs: list[tuple[str, str, list[Any]]]) -> pb.ModelInferRequest:
    """A ModelInferRequest of (feature, datatype, one value per row) inputs, e.g. what
    payloads.oip_inputs gives: every input of shape [rows]."""
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, values in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[len(values)])
        if datatype == "BYTES":
            tensor.contents.bytes_contents.extend(value.encode() for value in values)
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(values)
    return request
