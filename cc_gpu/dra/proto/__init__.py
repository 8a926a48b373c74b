"""The kubelet's gRPC wire contracts, as `.proto` files and the Python code generated from them.

The generated `*_pb2.py`/`*_pb2_grpc.py` modules are committed so that installing the package needs no protoc; a test
regenerates them with grpcio-tools and fails when they are stale. Regenerate with
`python -m cc_gpu.dra.proto.generate` from the repository root.
"""
