"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, with the standard
health and reflection services, served by each API worker next to the HTTP app.

inference.proto      the service definition, written from the protocol's specification
inference_pb2*.py*   stubs generated from it by `make grpc-stubs` (never edited by hand)
servicer.py          protobuf messages <-> the shared translation layer (protocols/oip.py)
server.py            the grpc.aio server: start/stop, health, reflection, auth, metrics
"""
